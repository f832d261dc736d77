"""Benchmark the GCG evaluator (``eval.gcg.evaluate``) end to end on a GranD-f-sized split.

    python scripts/bench_eval.py [--n 2600] [--repeats 3] [--seed 0] [--json]

Builds a random split the size of GranD-f val (2.6k images, ``docs/upstream/grandf_eval.md``
§1.2): images of 320x320 to 640x480, 3-5 ellipse or box masks each, captions naming the
phrases. Predictions perturb it the way a model errs: shifted and grown masks, a dropped or an
extra phrase with its mask, swapped caption words, and a few missing files. Every repeat runs
the whole evaluation (GT loading, text model loading, all metrics); the METEOR Java process is
reused across repeats, as it is across evaluations of one process. Prints the median seconds
and the median of each stage.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from altp.data.grandf import GTImage, write_gt  # noqa: E402
from eval.gcg import evaluate  # noqa: E402

IMAGE_SIZES = [(320, 320), (480, 360), (360, 480), (512, 384), (640, 480), (480, 640)]
COLOURS = ["red", "blue", "green", "white", "black", "brown"]
OBJECTS = ["dog", "cat", "car", "person", "tree", "chair", "table", "boat", "bird", "house"]
MISSING_FRACTION = 0.01


def random_shape(rng: np.random.Generator, height: int, width: int) -> tuple:
    """(kind, cy, cx, ry, rx): an ellipse or a box, 5-35 % of the image side."""
    ry, rx = rng.uniform(0.05, 0.35) * height / 2, rng.uniform(0.05, 0.35) * width / 2
    return (rng.choice(["ellipse", "box"]), rng.uniform(ry, height - ry),
            rng.uniform(rx, width - rx), ry, rx)


def shape_rle(shape: tuple, height: int, width: int) -> dict:
    kind, cy, cx, ry, rx = shape
    ys, xs = np.ogrid[:height, :width]
    if kind == "ellipse":
        mask = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
    else:
        mask = (abs(ys - cy) <= ry) & (abs(xs - cx) <= rx)
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [height, width], "counts": rle["counts"].decode()}


def perturb(rng: np.random.Generator, shape: tuple) -> tuple:
    """Shift the centre by up to 15 % of the radii and grow or shrink them by up to 25 %."""
    kind, cy, cx, ry, rx = shape
    grow = rng.uniform(0.75, 1.25)
    return (kind, cy + rng.uniform(-0.15, 0.15) * ry, cx + rng.uniform(-0.15, 0.15) * rx,
            ry * grow, rx * grow)


def make_split(n_images: int, seed: int) -> tuple[list[GTImage], list[dict | None]]:
    """GT images and one prediction per image (None: the file is missing)."""
    rng = np.random.default_rng(seed)
    images, predictions = [], []
    for index in range(n_images):
        height, width = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
        shapes = [random_shape(rng, height, width) for _ in range(rng.integers(3, 6))]
        labels = [f"a {rng.choice(COLOURS)} {rng.choice(OBJECTS)}" for _ in shapes]
        caption = "The image shows " + ", ".join(labels) + " in a scene."
        image_id = f"bench_{index:06d}"
        images.append(GTImage(image_id, f"{image_id}.jpg", height, width, caption, labels,
                              [shape_rle(s, height, width) for s in shapes]))
        if rng.random() < MISSING_FRACTION:
            predictions.append(None)
            continue
        pred_shapes = [perturb(rng, s) for s in shapes]
        phrases = list(labels)
        if rng.random() < 0.3:  # a dropped object
            drop = rng.integers(len(phrases))
            del phrases[drop], pred_shapes[drop]
        if rng.random() < 0.3:  # a hallucinated object
            pred_shapes.append(random_shape(rng, height, width))
            phrases.append(f"a {rng.choice(COLOURS)} {rng.choice(OBJECTS)}")
        if rng.random() < 0.05:  # the model emitted one [SEG] too many
            pred_shapes.append(random_shape(rng, height, width))
        words = caption.split()
        for _ in range(rng.integers(0, 4)):
            words[rng.integers(len(words))] = str(rng.choice(OBJECTS))
        predictions.append({"image_id": image_id, "caption": " ".join(words), "phrases": phrases,
                            "pred_masks": [shape_rle(s, height, width) for s in pred_shapes]})
    return images, predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2600, help="images in the split")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    images, predictions = make_split(args.n, args.seed)
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        ann_dir, pred_dir = Path(folder) / "annotations" / "val_test", Path(folder) / "predictions"
        write_gt(ann_dir, "val", images)
        pred_dir.mkdir()
        for image, prediction in zip(images, predictions):
            if prediction is not None:
                (pred_dir / f"{image.image_id}.json").write_text(json.dumps(prediction))
        for _ in range(args.repeats):
            runs.append(evaluate(pred_dir, (ann_dir, "val")))

    stages = {stage: statistics.median(run["eval_seconds"][stage] for run in runs)
              for stage in runs[0]["eval_seconds"]}
    summary = {
        "n_images": args.n, "repeats": args.repeats, "median_seconds": stages.pop("total"),
        "stage_median_seconds": stages,
        "metrics": {k: runs[0][k] for k in ("METEOR", "CIDEr", "AP50", "mIoU", "recall",
                                            "n_missing", "n_mismatched", "similarity_model")},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"evaluate() on {args.n} images: median {summary['median_seconds']:.1f} s "
          f"over {args.repeats} repeats")
    for stage, seconds in stages.items():
        print(f"  {stage:12s} {seconds:7.2f} s")
    print("  metrics: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in summary["metrics"].items()))


if __name__ == "__main__":
    main()
