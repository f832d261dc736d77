"""What a run wrote: the sha256 of every prediction file, so a rerun trusts only its own files.

``manifest.jsonl`` (``manifest.rank<r>.jsonl`` under torchrun: one writer per file) gets one
record ``{"image_id", "sha256"}`` per prediction, appended just before the file itself is
written atomically: a kill in between leaves a record without its file (the image is simply
predicted again), never a file the manifest does not know.

On every start (also when ``metrics.json`` exists) :func:`images_to_predict` lists the images
without a trusted prediction: no file, or a file whose hash is not one the run recorded
(edited by hand, truncated, written by another program). Such a file is moved aside to
``<id>.json.rejected`` with a one-line warning and predicted again; it is never scored. Images
that failed have no file, so they are retried too. A run directory written before manifests
existed has none: its predictions are checked (parse, every mask decodes at the GT size) and
adopted once, with one warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from altp import distributed
from altp.data.grandf import GCGSplit, GTImage
from altp.files import append_jsonl
from altp.summary import read_jsonl, record_file, record_files
from eval.gcg import GCGPredictionError, parse_prediction

STEM = "manifest"
REJECTED = ".rejected"  # suffix after .json: out of every "*.json" reader's sight
_WARN_AT_MOST = 5  # one line per file up to this many, then a count


def write_prediction(pred_dir: Path, record: dict, image: GTImage) -> None:
    """Check ``record`` as the scorer will (raises GCGPredictionError), record its hash, write it.

    The check comes first so that a prediction that could not be scored (a mask at another
    size) becomes that image's recorded failure instead of a crash at scoring.
    """
    path = pred_dir / f"{image.image_id}.json"
    text = json.dumps(record, indent=1) + "\n"
    parse_prediction(text, path, image)
    info = distributed.from_env()
    append_jsonl(record_file(pred_dir.parent, STEM, info.rank, info.world),
                 {"image_id": image.image_id, "sha256": _sha256(text.encode())})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def images_to_predict(run_dir: Path, split: GCGSplit) -> list[str]:
    """Ids of ``split`` (in order) with no trusted prediction; untrusted files are moved aside."""
    pred_dir = run_dir / "predictions"
    known: dict[str, set[str]] = {}
    for path in record_files(run_dir, STEM):
        for entry in read_jsonl(path):
            known.setdefault(entry["image_id"], set()).add(entry["sha256"])
    legacy = not known and any(pred_dir.glob("*.json"))
    todo, rejected, adopted = [], [], []
    for image in split:
        path = pred_dir / f"{image.image_id}.json"
        if not path.is_file():
            todo.append(image.image_id)
            continue
        data = path.read_bytes()
        if _sha256(data) in known.get(image.image_id, ()):
            continue
        reason = _problem(data, path, image)
        if legacy and reason is None:
            adopted.append(image.image_id)
            append_jsonl(record_file(run_dir, STEM, 0, 1), {"image_id": image.image_id, "sha256": _sha256(data)})
            continue
        rejected.append(f"{path}: {reason or 'differs from what this run wrote (see ' + STEM + '.jsonl)'}")
        os.replace(path, path.with_name(path.name + REJECTED))
        todo.append(image.image_id)
    if adopted:
        print(f"warning: {run_dir} has no {STEM}.jsonl (written before manifests existed): "
              f"{len(adopted)} checked predictions adopted", file=sys.stderr)
    for line in rejected[:_WARN_AT_MOST]:
        print(f"warning: {line}; moved aside to *.json{REJECTED}, predicting it again", file=sys.stderr)
    if len(rejected) > _WARN_AT_MOST:
        print(f"warning: ... and {len(rejected) - _WARN_AT_MOST} more untrusted predictions in {pred_dir}, "
              "predicting them again", file=sys.stderr)
    return todo


def run_files(run_dir: Path) -> list[Path]:
    """The manifest records and moved-aside files: ``overwrite=true`` discards them with the rest."""
    return [*record_files(run_dir, STEM), *(run_dir / "predictions").glob(f"*.json{REJECTED}")]


def _problem(data: bytes, path: Path, image: GTImage) -> str | None:
    """Why a prediction file cannot be scored, or None; the message without the leading path."""
    try:
        parse_prediction(data.decode("utf-8"), path, image)
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except GCGPredictionError as err:
        return str(err).removeprefix(f"{path}: ").split("; ")[0]  # what is wrong; the fix is ours
    return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
