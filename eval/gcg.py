"""GranD-f GCG evaluation: METEOR, CIDEr, AP50, mIoU and mask recall of a prediction folder.

    python -m eval.gcg --pred-dir DIR --gt-dir DIR/annotations/val_test --split val
        [--similarity-model /path/to/bert-base-uncased] [--similarity mean_pool|bert_score]

prints one JSON object. It follows ``groundingLMM eval/gcg/evaluate.py`` (protocol in
``docs/upstream/grandf_eval.md`` §2, prediction format §3): one ``<image_id>.json`` per GT
image, flat ``{caption, phrases, pred_masks}`` or nested under one key, scored over every image
of the caption GT. Values are fractions (0..1), unrounded. Differences from the reference:

* a missing prediction file is scored as an empty prediction (caption "", no phrases, no
  masks) and counted in ``n_missing``; GLaMM stops with FileNotFoundError;
* an unreadable prediction file, a missing key, a mask whose size is not the GT image size or
  whose RLE counts do not decode raises :class:`GCGPredictionError` naming the file (GLaMM
  crashes on the size with a numpy broadcast error, and scores undecodable counts as some other
  mask); delete such a file to have it scored as missing;
* recall's text model is bert-base-uncased only when ``similarity_model`` points to a local
  copy; otherwise the packaged all-MiniLM-L6-v2 (``eval.similarity``). ``similarity_model``
  records the model and ``protocol_notes`` flags every such difference in this run;
* SPICE is not computed, and nothing is written to ``tmp/`` (``eval.captioning``).

Images with more masks than phrases reproduce GLaMM's swallowed IndexError (0 true positives,
GT still counted): ``n_recall_errors``; ``n_mismatched`` counts all images where the number of
masks differs from the number of phrases.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from altp.data.grandf import GCGSplit, GranDfError, GTImage, load_split
from eval.captioning import CaptionScorerError, caption_scores
from eval.metrics import ap50, greedy_miou, iou_matrix, recall_candidates, true_positives
from eval.similarity import PROTOCOL_MODEL, SIMILARITY_KINDS, SimilarityModelError, load_similarity

IOU_THRESHOLD = 0.5
TEXT_SIM_THRESHOLD = 0.5


class GCGPredictionError(ValueError):
    """A prediction file cannot be scored; the message is one line naming the file."""


@dataclass(frozen=True)
class Prediction:
    caption: str
    phrases: list[str]
    masks: list[dict]  # compressed RLE at the GT image size, in phrase order


EMPTY_PREDICTION = Prediction("", [], [])


def load_prediction(path: Path, image: GTImage) -> Prediction | None:
    """Read one prediction file; None when it does not exist."""
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise GCGPredictionError(f"{path}: cannot read the file ({error})") from None
    return parse_prediction(text, path, image)


def parse_prediction(text: str, path: Path, image: GTImage) -> Prediction:
    """Parse and check one prediction's JSON text: every mask must decode at the GT image size.

    Decoding is what pycocotools does when it scores, and it is the only check that catches
    garbage ``counts``: ``mask.area`` / ``mask.iou`` read such a string as some other mask
    without a word, so a bad file would move AP50 silently.
    """
    try:
        content = json.loads(text)
    except json.JSONDecodeError as error:
        raise GCGPredictionError(
            f"{path}: invalid JSON at line {error.lineno} column {error.colno} ({error.msg}); "
            f"rerun inference for image {image.image_id} or delete the file") from None
    if not isinstance(content, dict) or not content:
        raise GCGPredictionError(f"{path}: expected a JSON object with caption, phrases, pred_masks")
    # GLaMM tries pred[first key] and falls back to the flat object when that has no caption/phrases.
    first = next(iter(content.values()))
    body = first if isinstance(first, dict) and "caption" in first and "phrases" in first else content
    for key, kind in (("caption", str), ("phrases", list), ("pred_masks", list)):
        if not isinstance(body.get(key), kind):
            raise GCGPredictionError(
                f"{path}: {key!r} is missing or not a {kind.__name__}; a prediction is "
                "{caption: str, phrases: [str], pred_masks: [RLE]}")
    if not all(isinstance(phrase, str) for phrase in body["phrases"]):
        raise GCGPredictionError(f"{path}: 'phrases' must be a list of strings")
    for k, rle in enumerate(body["pred_masks"]):
        _check_mask(path, k, rle, image)
    return Prediction(body["caption"], body["phrases"], body["pred_masks"])


def _check_mask(path: Path, k: int, rle, image: GTImage) -> None:
    if not (isinstance(rle, dict) and isinstance(rle.get("counts"), str) and "size" in rle):
        raise GCGPredictionError(
            f"{path}: mask {k} is not compressed RLE {{'size': [H, W], 'counts': str}}")
    if list(rle["size"]) != [image.height, image.width]:
        raise GCGPredictionError(
            f"{path}: mask {k} has size {rle['size']} but GT image {image.image_id} is "
            f"{image.height}x{image.width} (HxW); write masks at the original image size")
    try:
        mask_utils.decode({"size": [image.height, image.width], "counts": rle["counts"].encode()})
    except ValueError:
        raise GCGPredictionError(
            f"{path}: mask {k} has RLE counts that pycocotools cannot decode; rerun inference for "
            f"image {image.image_id} or delete the file") from None


def evaluate(pred_dir: str | Path, gt: GCGSplit | tuple[str | Path, str],
             similarity_model: str | Path | None = None, similarity: str = "mean_pool",
             *, text_similarity=None) -> dict:
    """Score ``pred_dir`` against ``gt`` (a loaded split or ``(ann_dir, split)``).

    ``text_similarity``: an already built ``eval.similarity`` object, to reuse a loaded model
    across calls; it overrides ``similarity_model`` and ``similarity``.
    """
    seconds: dict[str, float] = {}
    with _timed(seconds, "total"):
        with _timed(seconds, "ground_truth"):
            split = gt if isinstance(gt, GCGSplit) else load_split(*gt)
        pred_dir = Path(pred_dir)
        if not pred_dir.is_dir():
            raise GCGPredictionError(f"{pred_dir}: prediction folder not found")
        text_similarity = text_similarity or load_similarity(similarity_model, similarity)

        with _timed(seconds, "predictions"):
            predictions = [load_prediction(pred_dir / f"{image.image_id}.json", image)
                           for image in split]
            n_missing = sum(prediction is None for prediction in predictions)
            predictions = [prediction or EMPTY_PREDICTION for prediction in predictions]
        with _timed(seconds, "AP50"):
            results = [{"image_id": image.image_id, "category_id": 1, "segmentation": rle,
                        "score": 1.0}
                       for image, prediction in zip(split, predictions) for rle in prediction.masks]
            ap = ap50(split.mask_gt, results, [image.image_id for image in split])
        with _timed(seconds, "captions"):
            references: dict[str, list[str]] = {image.image_id: [] for image in split}
            for ann in split.caption_gt["annotations"]:
                if ann["image_id"] in references:  # COCOEvalCap uses every caption of the image
                    references[ann["image_id"]].append(ann["caption"])
            captions = caption_scores(
                references, {image.image_id: p.caption for image, p in zip(split, predictions)})
        with _timed(seconds, "mIoU"):  # recall's greedy walk shares the IoU matrices
            mious, candidates = [], []
            for image, prediction in zip(split, predictions):
                ious = iou_matrix(prediction.masks, image.masks)
                mious.append(greedy_miou(ious))
                candidates.append(recall_candidates(ious.T, len(prediction.phrases), IOU_THRESHOLD))
        with _timed(seconds, "recall"):
            recall, n_recall_errors = _recall(split, predictions, candidates, text_similarity)

    n_mismatched = sum(len(p.masks) != len(p.phrases) for p in predictions)
    metrics = {
        "METEOR": captions["METEOR"], "CIDEr": captions["CIDEr"], "AP50": ap,
        "mIoU": float(np.mean(mious)) if mious else 0.0, "recall": recall,
        **{name: value for name, value in captions.items() if name not in ("METEOR", "CIDEr")},
        "split": split.split, "n_images": len(split), "n_missing": n_missing,
        "n_mismatched": n_mismatched, "n_recall_errors": n_recall_errors,
        "similarity": text_similarity.kind, "similarity_model": text_similarity.name,
    }
    metrics["protocol_notes"] = _protocol_notes(metrics)
    metrics["eval_seconds"] = seconds
    return metrics


def _recall(split: GCGSplit, predictions: list[Prediction], candidates: list, text_similarity
            ) -> tuple[float, int]:
    """Σ true positives / Σ GT labels; embeds only the phrases the greedy walks can reach."""
    pairs_per_image = [
        [(image.labels[i], prediction.phrases[j]) for i, j in image_candidates.pairs]
        for image, prediction, image_candidates in zip(split, predictions, candidates)]
    distinct = list(dict.fromkeys(pair for pairs in pairs_per_image for pair in pairs))
    similarity_of = dict(zip(distinct, text_similarity.pair_similarities(distinct)))
    found, errors = 0, 0
    for image_candidates, pairs in zip(candidates, pairs_per_image):
        matched = true_positives(image_candidates, [similarity_of[pair] for pair in pairs],
                                 TEXT_SIM_THRESHOLD)
        errors += matched is None
        found += matched or 0
    n_labels = sum(len(image.labels) for image in split)
    return (found / n_labels if n_labels else 0.0), errors


def _protocol_notes(metrics: dict) -> list[str]:
    notes = []
    if metrics["n_missing"]:
        notes.append(f"{metrics['n_missing']} prediction files missing, scored as empty predictions "
                     "(GLaMM's evaluate.py stops with FileNotFoundError)")
    if not metrics["similarity_model"].startswith(f"{PROTOCOL_MODEL}:"):
        notes.append(f"recall text similarity uses {metrics['similarity_model']}, not the "
                     f"protocol's {PROTOCOL_MODEL}: recall is not directly comparable to papers")
    if metrics["similarity"] != "mean_pool":
        notes.append("recall text similarity is BERTScore F1, not GLaMM's mean-pooled cosine")
    if metrics["n_recall_errors"]:
        notes.append(f"{metrics['n_recall_errors']} images have more masks than phrases and get "
                     "0 recall true positives, as GLaMM's swallowed IndexError gives")
    return notes


@contextlib.contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.gcg", description=__doc__.split("\n")[0])
    parser.add_argument("--pred-dir", required=True, help="folder of <image_id>.json predictions")
    parser.add_argument("--gt-dir", required=True, help="GranD-f annotations/val_test folder")
    parser.add_argument("--split", default="val", help="val or test (default: val)")
    parser.add_argument("--similarity-model", default=None,
                        help=f"local {PROTOCOL_MODEL} folder (default: packaged all-MiniLM-L6-v2)")
    parser.add_argument("--similarity", default="mean_pool", choices=SIMILARITY_KINDS)
    args = parser.parse_args(argv)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON result
            metrics = evaluate(args.pred_dir, (args.gt_dir, args.split),
                               args.similarity_model, args.similarity)
    except (GranDfError, GCGPredictionError, SimilarityModelError, CaptionScorerError) as error:
        print(f"eval.gcg: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
