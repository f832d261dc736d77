"""How a run fails: exit codes, per-image failure records, and a held or clashing run directory.

Exit codes of ``python run.py`` (README, "Failures and exit codes"):

* 0: the run finished (or was already done); in a sweep: every job completed or was skipped;
* 1: an unexpected error (a traceback), or a sweep in which at least one job failed;
* 2: a config or data mistake, reported in one line before any prediction (``EXIT_CONFIG``);
* 3: another process holds the run directory (``EXIT_BUSY``): nothing was produced by this
  process. Inside a sweep this is no failure (jobs that map to one directory, e.g.
  ``pruner=none`` at every keep, run once by design): the job is recorded as ``skipped``.
"""

from __future__ import annotations

import json
import pickle
import shutil
import traceback
from pathlib import Path

from safetensors import SafetensorError

from altp.data.grandf import GranDfError
from altp.errors import ConfigError
from altp.files import append_jsonl
from eval.gcg import GCGPredictionError

EXIT_CONFIG = 2
EXIT_BUSY = 3
# mistakes in what the user gave (config, ground truth, a prediction folder): one line, exit 2
USER_ERRORS = (ConfigError, GranDfError, GCGPredictionError)
# what loading a corrupt or mismatched checkpoint raises (torch.load, safetensors, load_state_dict)
CHECKPOINT_ERRORS = (OSError, ValueError, RuntimeError, SafetensorError, pickle.UnpicklingError)
# what a run directory holds before its first image is done: nothing worth keeping
_UNUSED = {"run_config.json", ".lock", "predictions"}


def error_line(err: BaseException) -> str:
    kind = "config" if isinstance(err, ConfigError) else "data"
    return f"{kind} error: {str(err).splitlines()[0] if str(err) else type(err).__name__}"


def checkpoint_problem(err: BaseException, loader) -> str:
    """One line for a loader's exception, naming the files the loader was given."""
    message = " ".join(str(err).split()) or "unreadable"
    if isinstance(err, (OSError, ValueError)):
        return message  # the loaders' own one-liners (altp.models.errors) name the file and the fix
    if len(message) > 300:  # load_state_dict lists every key
        message = message[:300] + " ..."
    kind = "" if isinstance(err, RuntimeError) else f"{type(err).__name__}: "
    files = ", ".join(f"{key}={value}" for key, value in loader.items() if key != "_target_" and isinstance(value, str))
    return (f"{kind}{message} (loading {files or 'the checkpoint'}); a file there is corrupt or not this "
            "model's, replace it")


def record_failure(errors_path: Path, image_id: str, err: BaseException) -> None:
    """One image failed: append its id, the reason (one line) and a short traceback (call it in
    the ``except`` block that caught ``err``: the traceback is the one being handled).

    Append-only: ``errors.jsonl`` is the history of every attempt. What counts as failed now
    is an image with a record here and no prediction file (altp.summary), so a rerun that
    predicts it (the runner retries every image without a verified prediction) repairs it.
    """
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    append_jsonl(errors_path, {"image_id": image_id, "error": reason,
                               "traceback": traceback.format_exc(limit=3)})


def check_clash(run_dir: Path, identity: dict) -> None:
    """Another process holds ``run_dir``: a ConfigError if it works on a different config.

    Only the same config is a harmless duplicate (skipped, exit 3); a different one means two
    configs map to one directory, which the user must hear about (exit 2), not a "skipped".
    The holder writes run_config.json right after taking the lock; before that there is
    nothing to compare and the directory is reported as busy.
    """
    path = run_dir / "run_config.json"
    try:
        previous = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    if previous != identity:
        changed = sorted(k for k in identity if previous.get(k) != identity[k])
        raise ConfigError(f"{run_dir} is being produced by another process with a different config "
                          f"(changed: {', '.join(changed)}); wait for it to finish, or change the config")


def discard_unused(run_dir: Path) -> None:
    """Remove a run directory this process created when it failed before any image was done,
    so a failed start (a model that cannot load) leaves no folder holding only run_config.json;
    empty parent folders up to ``runs/`` go too."""
    predictions = run_dir / "predictions"
    if not run_dir.is_dir() or (predictions.is_dir() and any(predictions.iterdir())):
        return
    if any(entry.name not in _UNUSED for entry in run_dir.iterdir()):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in run_dir.parents:
        if parent.name == "runs" or not parent.is_dir() or any(parent.iterdir()):
            break
        parent.rmdir()
