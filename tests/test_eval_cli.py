"""eval.gcg end to end: evaluate() on small hand-made splits, and the `python -m eval.gcg` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from altp.data.grandf import GTImage, write_gt
from eval.gcg import GCGPredictionError, evaluate

REPO = Path(__file__).resolve().parents[1]


def box(rows: tuple[int, int], cols: tuple[int, int], size=(40, 40)) -> dict:
    mask = np.zeros(size, np.uint8, order="F")
    mask[rows[0]:rows[1], cols[0]:cols[1]] = 1
    return {"size": list(size), "counts": mask_utils.encode(mask)["counts"].decode()}


DOG, CAT, TREE = box((0, 10), (0, 10)), box((20, 30), (20, 30)), box((5, 35), (5, 15))
IMAGES = [
    GTImage("img_a", "img_a.jpg", 40, 40, "a dog next to a cat", ["a dog", "a cat"], [DOG, CAT]),
    GTImage("img_b", "img_b.jpg", 40, 40, "a tall tree in a field", ["a tall tree"], [TREE]),
]


class ExactMatch:
    """Text similarity 1.0 for equal phrases, else 0.0: pins recall's text rule without a model."""

    kind, name = "mean_pool", "exact-match (test)"

    def pair_similarities(self, pairs):
        return np.array([float(a == b) for a, b in pairs])


@pytest.fixture
def gt_dir(tmp_path: Path) -> Path:
    gt_dir = tmp_path / "annotations" / "val_test"
    write_gt(gt_dir, "val", IMAGES)
    return gt_dir


def write_predictions(pred_dir: Path, predictions: dict[str, dict]) -> Path:
    pred_dir.mkdir(exist_ok=True)
    for image_id, prediction in predictions.items():
        (pred_dir / f"{image_id}.json").write_text(json.dumps({"image_id": image_id, **prediction}))
    return pred_dir


def as_prediction(image: GTImage) -> dict:
    return {"caption": image.caption, "phrases": image.labels, "pred_masks": image.masks}


def run(tmp_path: Path, gt_dir: Path, predictions: dict[str, dict]) -> dict:
    pred_dir = write_predictions(tmp_path / "predictions", predictions)
    return evaluate(pred_dir, (gt_dir, "val"), text_similarity=ExactMatch())


def test_empty_prediction_scores_zero_mask_iou_and_keeps_its_gt_in_recall(tmp_path, gt_dir):
    metrics = run(tmp_path, gt_dir, {"img_a": as_prediction(IMAGES[0]),
                                     "img_b": {"caption": "", "phrases": [], "pred_masks": []}})
    assert metrics["mIoU"] == pytest.approx(0.5)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["n_missing"] == 0


def test_missing_prediction_file_is_an_empty_prediction_counted_in_n_missing(tmp_path, gt_dir):
    metrics = run(tmp_path, gt_dir, {"img_a": as_prediction(IMAGES[0])})
    assert (metrics["n_missing"], metrics["mIoU"], metrics["recall"]) == (1, pytest.approx(0.5),
                                                                           pytest.approx(2 / 3))
    assert any("1 prediction files missing" in note for note in metrics["protocol_notes"])


def test_text_failure_on_the_best_iou_pair_ends_the_images_matching(tmp_path, gt_dir):
    # (gt dog, pred 0) is the max IoU pair but its phrase is wrong: the good cat pair never counts.
    shifted_cat = box((20, 30), (22, 32))
    metrics = run(tmp_path, gt_dir, {
        "img_a": {"caption": "x", "phrases": ["a wolf", "a cat"], "pred_masks": [DOG, shifted_cat]},
        "img_b": as_prediction(IMAGES[1])})
    assert metrics["recall"] == pytest.approx(1 / 3)
    assert metrics["mIoU"] == pytest.approx(((1 + 80 / 120) / 2 + 1) / 2)


def test_more_masks_than_phrases_reproduces_glamms_index_error(tmp_path, gt_dir):
    # the phrase-less second mask is the cat's best match: GLaMM raises, the image gets 0 TP
    metrics = run(tmp_path, gt_dir, {
        "img_a": {"caption": "x", "phrases": ["a dog"], "pred_masks": [DOG, CAT]},
        "img_b": as_prediction(IMAGES[1])})
    assert (metrics["recall"], metrics["n_mismatched"], metrics["n_recall_errors"]) == (
        pytest.approx(1 / 3), 1, 1)
    assert metrics["mIoU"] == pytest.approx(1.0)  # mIoU ignores phrases


def test_nested_prediction_format_is_accepted(tmp_path, gt_dir):
    pred_dir = tmp_path / "predictions"
    pred_dir.mkdir()
    for image in IMAGES:  # GLaMM reads pred[first key] when that holds caption and phrases
        (pred_dir / f"{image.image_id}.json").write_text(json.dumps({"any": as_prediction(image)}))
    metrics = evaluate(pred_dir, (gt_dir, "val"), text_similarity=ExactMatch())
    assert metrics["recall"] == pytest.approx(1.0)


def test_mask_of_the_wrong_size_names_the_file(tmp_path, gt_dir):
    bad = {"caption": "x", "phrases": ["a tall tree"], "pred_masks": [box((0, 5), (0, 5), (20, 40))]}
    with pytest.raises(GCGPredictionError, match=r"img_b\.json: mask 0 has size \[20, 40\].*40x40"):
        run(tmp_path, gt_dir, {"img_a": as_prediction(IMAGES[0]), "img_b": bad})


def test_invalid_prediction_json_names_the_file(tmp_path, gt_dir):
    pred_dir = write_predictions(tmp_path / "predictions", {"img_a": as_prediction(IMAGES[0])})
    (pred_dir / "img_b.json").write_text("{")
    with pytest.raises(GCGPredictionError, match=r"img_b\.json: invalid JSON"):
        evaluate(pred_dir, (gt_dir, "val"), text_similarity=ExactMatch())


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "eval.gcg", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_gt_as_predictions_scores_one(tmp_path, gt_dir):
    pred_dir = write_predictions(tmp_path / "predictions",
                                 {image.image_id: as_prediction(image) for image in IMAGES})
    done = cli("--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--split", "val")
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)
    assert {"METEOR", "CIDEr", "AP50", "mIoU", "recall", "n_images", "n_missing", "n_mismatched",
            "similarity", "similarity_model", "protocol_notes"} <= metrics.keys()
    assert (metrics["AP50"], metrics["mIoU"], metrics["recall"]) == pytest.approx((1.0, 1.0, 1.0))
    assert metrics["METEOR"] == pytest.approx(1.0) and metrics["CIDEr"] > 0
    assert metrics["n_images"] == 2 and metrics["n_missing"] == 0
    assert metrics["similarity_model"].startswith("all-MiniLM-L6-v2")


def test_cli_bad_gt_dir_is_one_line_and_exit_2(tmp_path):
    done = cli("--pred-dir", str(tmp_path), "--gt-dir", str(tmp_path / "nowhere"), "--split", "val")
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert "annotations/val_test" in done.stderr


def test_cli_rejects_garbage_rle_counts_naming_the_file(tmp_path, gt_dir):
    # pycocotools' iou/area read such counts as some other mask: scoring them would move AP50 silently
    garbage = {**as_prediction(IMAGES[1]), "pred_masks": [{"size": [40, 40], "counts": "!!garbage~~"}]}
    pred_dir = write_predictions(tmp_path / "predictions", {"img_a": as_prediction(IMAGES[0]), "img_b": garbage})
    with pytest.raises(GCGPredictionError, match=r"img_b\.json: mask 0 has RLE counts that pycocotools cannot decode"):
        evaluate(pred_dir, (gt_dir, "val"), text_similarity=ExactMatch())
    done = cli("--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--split", "val")
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    line, = done.stderr.strip().splitlines()
    assert "img_b.json: mask 0 has RLE counts that pycocotools cannot decode" in line
