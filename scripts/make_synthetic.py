"""Write the synthetic GranD-f-format val/test sets (see altp/data/synthetic.py).

    python scripts/make_synthetic.py --out outputs/synthetic [--n-val 200 --n-test 400 --seed 0]

Rerunning with the same settings reports the dataset as already there; other settings over
existing annotation files need --overwrite, so no dataset is replaced by accident.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, installed or not
from altp.data import synthetic  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="dataset root folder")
    parser.add_argument("--n-val", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=192)
    parser.add_argument("--min-objects", type=int, default=1)
    parser.add_argument("--max-objects", type=int, default=6)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    args = parser.parse_args(argv)
    settings = (args.n_val, args.n_test, args.seed, args.image_size, args.min_objects,
                args.max_objects)
    try:
        config = synthetic.dataset_config(*settings)
    except ValueError as error:
        parser.error(str(error))

    if synthetic.read_dataset_config(args.out) == config:
        print(f"{args.out}: this synthetic dataset is already there")
        return
    gt_files = [path for split in synthetic.SPLITS for path in synthetic.gt_paths(args.out, split)]
    if not args.overwrite and any(path.exists() for path in gt_files):
        sys.exit(f"{args.out} already holds other annotations; pass --overwrite to replace them")
    for summary in synthetic.write_dataset(args.out, *settings):
        print(f"{summary.split}: {summary.n_images} images, {summary.n_masks} masks "
              f"-> {summary.caption_gt.parent}")


if __name__ == "__main__":
    main()
