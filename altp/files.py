"""Run-directory file I/O: atomic JSON writes, fsync'd JSONL appends and flock-based locks.

A run killed at any moment leaves either the old or the new version of a file (temp file +
``os.replace``), at most one torn last line in a JSONL record (readers skip it, see
``altp.summary.read_jsonl``), and no stale lock (``flock`` dies with its process).
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def lock_directory(run_dir: Path):
    """An exclusive lock on ``<run_dir>/.lock`` while this process works on the run, or None when
    another process holds it (two jobs of a parallel sweep that resolve to one run directory)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = (run_dir / ".lock").open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    except OSError:  # a file system without flock: go on unlocked
        pass
    return handle


def wait_for_lock(handle) -> None:
    """Block until ``handle`` (an open file) is exclusively locked; no-op without flock support."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
    except OSError:
        pass
