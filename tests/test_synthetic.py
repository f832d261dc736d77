"""Synthetic GranD-f scenes: determinism, GT schema, texts and the make_synthetic CLI."""

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from altp.data import synthetic

REPO = Path(__file__).resolve().parents[1]
N_VAL, N_TEST = 5, 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    synthetic.write_dataset(out, n_val=N_VAL, n_test=N_TEST, seed=3)
    return out


def load_split(out: Path, split: str) -> tuple[dict, dict]:
    caption_gt, mask_gt = synthetic.gt_paths(out, split)
    return json.loads(caption_gt.read_text()), json.loads(mask_gt.read_text())


def reading_order_key(mask: np.ndarray) -> tuple:
    """The documented phrase order, written out independently of the generator."""
    rows, cols = np.nonzero(mask)
    band = int(np.floor(synthetic.ORDER_BANDS * rows.mean() / mask.shape[0]))
    return band, cols.mean(), rows.mean()


def test_same_seed_same_scene_and_other_seed_differs():
    first, again, other = (synthetic.render_scene(s) for s in (7, 7, 8))
    assert first.jpeg == again.jpeg and first.answer == again.answer
    np.testing.assert_array_equal(first.masks, again.masks)
    assert first.jpeg != other.jpeg


def test_written_dataset_is_byte_identical_for_the_same_seed(dataset, tmp_path):
    synthetic.write_dataset(tmp_path, n_val=N_VAL, n_test=N_TEST, seed=3)
    for split in synthetic.SPLITS:
        pairs = zip(synthetic.gt_paths(dataset, split), synthetic.gt_paths(tmp_path, split))
        assert all(ours.read_bytes() == theirs.read_bytes() for ours, theirs in pairs)
    for image in (dataset / "images" / "val_test").iterdir():
        assert image.read_bytes() == (tmp_path / "images" / "val_test" / image.name).read_bytes()


def test_layout_and_disjoint_split_ids(dataset):
    (val_captions, _), (test_captions, _) = (load_split(dataset, s) for s in synthetic.SPLITS)
    val_ids = [image["id"] for image in val_captions["images"]]
    test_ids = [image["id"] for image in test_captions["images"]]
    assert len(val_ids) == N_VAL and len(test_ids) == N_TEST
    assert not set(val_ids) & set(test_ids)
    assert val_ids == sorted(val_ids)
    files = sorted(path.stem for path in (dataset / "images" / "val_test").iterdir())
    assert files == sorted(val_ids + test_ids)


@pytest.mark.parametrize("split", synthetic.SPLITS)
def test_gt_schema(dataset, split):
    captions, masks = load_split(dataset, split)
    assert "info" not in captions and "info" not in masks
    assert captions["images"] == masks["images"]
    assert masks["categories"] == [{"id": 1, "name": "object"}]
    assert len(captions["annotations"]) == len(captions["images"])
    for ann_list in (captions["annotations"], masks["annotations"]):
        assert len({ann["id"] for ann in ann_list}) == len(ann_list)
    masks_by_image = {
        image_id: list(anns)
        for image_id, anns in itertools.groupby(masks["annotations"], lambda a: a["image_id"])
    }
    for image, caption in zip(captions["images"], captions["annotations"]):
        assert caption["image_id"] == image["id"] and image["file_name"] == f"{image['id']}.jpg"
        size = [image["height"], image["width"]]
        mask_anns = masks_by_image[image["id"]]
        assert len(mask_anns) == len(caption["labels"]) >= 1
        assert all(label in caption["caption"] for label in caption["labels"])
        decoded = []
        for ann in mask_anns:
            assert ann["category_id"] == 1 and ann["iscrowd"] == 0
            rle = ann["segmentation"]
            assert rle["size"] == size and isinstance(rle["counts"], str)
            mask = mask_utils.decode({**rle, "counts": rle["counts"].encode()})
            assert list(mask.shape) == size and ann["area"] == mask.sum() > 0
            decoded.append(mask.astype(bool))
        assert np.sum(decoded, axis=0).max() == 1  # pairwise disjoint
        assert [reading_order_key(m) for m in decoded] == sorted(map(reading_order_key, decoded))


def test_written_image_matches_training_pixels(dataset):
    sample = synthetic.render_scene(synthetic.scene_seed(3, "val", 0))
    written = np.asarray(Image.open(dataset / "images" / "val_test" / "syn_val_000000.jpg"))
    np.testing.assert_array_equal(written, sample.image)
    assert sample.image.shape == (192, 192, 3) and sample.image.dtype == np.uint8


def test_training_stream_texts_masks_and_vocab():
    for sample in itertools.islice(synthetic.iter_training_samples(seed=0, image_size=96), 20):
        words = sample.answer.split(" ") + re.findall(r"\w+|[,.]", sample.caption)
        assert set(words) <= set(synthetic.VOCAB)
        tagged = [match.strip() for match in re.findall(r"<p>(.*?)</p>", sample.answer)]
        assert tagged == sample.phrases
        assert sample.answer.count("[SEG]") == len(sample.phrases) == len(sample.masks)
        assert sample.caption == synthetic.format_caption(sample.phrases)
        assert sample.masks.dtype == bool and sample.masks.shape[1:] == (96, 96)
        assert len(set(sample.phrases)) == len(sample.phrases)


def test_caption_and_answer_format():
    phrases = ["small red circle", "large blue star", "small green triangle"]
    assert synthetic.format_caption(phrases) == (
        "The image shows a small red circle, a large blue star and a small green triangle."
    )
    assert synthetic.format_answer(phrases[:2]) == (
        "The image shows a <p> small red circle </p> [SEG] and a <p> large blue star </p> [SEG] ."
    )
    assert synthetic.VOCAB == sorted(synthetic.VOCAB)


def test_training_seeds_are_disjoint_from_eval_seeds():
    seeds = {
        stream: {synthetic.scene_seed(base, stream, i) for base in range(3) for i in range(50)}
        for stream in ("val", "test", "train")
    }
    assert not seeds["train"] & (seeds["val"] | seeds["test"]) and not seeds["val"] & seeds["test"]


@pytest.mark.parametrize("image_size", [100, 72, 0])
def test_bad_image_size_is_refused(image_size):
    with pytest.raises(ValueError, match="image_size"):
        synthetic.render_scene(0, image_size=image_size)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_synthetic.py"), *args],
        capture_output=True, text=True, env=env, check=False,
    )


def test_cli_writes_layout_and_refuses_silent_overwrite(tmp_path):
    small = ["--out", str(tmp_path), "--n-val", "2", "--n-test", "3"]
    first = run_cli(*small)
    assert first.returncode == 0 and first.stdout.count("\n") == 2
    assert (tmp_path / "annotations" / "val_test" / "test_gcg_coco_mask_gt.json").exists()
    assert len(list((tmp_path / "images" / "val_test").glob("*.jpg"))) == 5

    assert "already there" in run_cli(*small).stdout
    refused = run_cli(*small, "--seed", "1")
    assert refused.returncode == 1 and "--overwrite" in refused.stderr
    assert run_cli(*small, "--seed", "1", "--overwrite").returncode == 0
    bad = run_cli(*small, "--image-size", "100")
    assert bad.returncode == 2 and "image_size" in bad.stderr.splitlines()[-1]
