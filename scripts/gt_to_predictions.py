"""Write a split's ground truth as a prediction folder (the evaluator's sanity check).

    python scripts/gt_to_predictions.py --gt-dir DIR/annotations/val_test --split val --out PRED_DIR
    python -m eval.gcg --pred-dir PRED_DIR --gt-dir DIR/annotations/val_test --split val
    # -> AP50 = mIoU = recall = 1.0
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from altp.data.grandf import GranDfError, load_split  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gt-dir", type=Path, required=True)
    parser.add_argument("--split", choices=("val", "test"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        split = load_split(args.gt_dir, args.split)
    except GranDfError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for image in split:
        record = {"image_id": image.image_id, "caption": image.caption, "phrases": image.labels,
                  "pred_masks": image.masks}
        (args.out / f"{image.image_id}.json").write_text(json.dumps(record))
    print(f"{len(split)} predictions -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
