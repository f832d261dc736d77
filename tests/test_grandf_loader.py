"""GranD-f GT loader (altp.data.grandf): layout, schema checks and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from altp.data.grandf import (
    GranDfError,
    GTImage,
    load_checked_image,
    load_image,
    load_split,
    write_gt,
)


def box(height: int, width: int, rows: tuple[int, int], cols: tuple[int, int]) -> dict:
    mask = np.zeros((height, width), np.uint8, order="F")
    mask[rows[0]:rows[1], cols[0]:cols[1]] = 1
    rle = mask_utils.encode(mask)
    return {"size": [height, width], "counts": rle["counts"].decode()}


IMAGES = [
    GTImage("sa_1", "sa_1.jpg", 20, 30, "a dog and a cat", ["a dog", "a cat"],
            [box(20, 30, (0, 5), (0, 5)), box(20, 30, (10, 15), (10, 20))]),
    GTImage("psg_2", "psg_2.jpg", 16, 16, "a tree", ["a tree"], [box(16, 16, (2, 9), (3, 8))]),
]


@pytest.fixture
def ann_dir(tmp_path: Path) -> Path:
    ann_dir = tmp_path / "annotations" / "val_test"
    write_gt(ann_dir, "val", IMAGES)
    return ann_dir


def edit(ann_dir: Path, kind: str, change) -> Path:
    """Apply ``change`` to the parsed val caption or mask GT file and write it back."""
    path = ann_dir / f"val_gcg_coco_{kind}_gt.json"
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))
    return path


def error_of(*args, **kwargs) -> str:
    with pytest.raises(GranDfError) as caught:
        load_split(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_loads_images_in_caption_order_with_sizes_labels_and_masks(ann_dir):
    split = load_split(ann_dir, "val")
    assert [image.image_id for image in split] == ["sa_1", "psg_2"]
    assert len(split) == 2 and split.by_id("psg_2") == IMAGES[1]
    assert split.caption_gt["images"][0]["id"] == "sa_1" and "categories" in split.mask_gt


def test_size_prefers_mask_gt_then_caption_gt_then_rle(ann_dir):
    edit(ann_dir, "caption", lambda gt: gt["images"][0].update(height=99, width=99))
    assert load_split(ann_dir, "val").by_id("sa_1").height == 20  # mask GT wins
    edit(ann_dir, "mask", lambda gt: gt["images"][0].pop("height"))
    assert "99x99" in error_of(ann_dir, "val")  # caption GT size, which the masks contradict
    edit(ann_dir, "caption", lambda gt: gt["images"][0].pop("height"))
    assert load_split(ann_dir, "val").by_id("sa_1").height == 20  # from the RLE size


def test_image_paths_accept_jpg_jpeg_png(ann_dir, tmp_path):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    (image_dir / "sa_1.jpg").write_bytes(b"")
    (image_dir / "psg_2.png").write_bytes(b"")
    split = load_split(ann_dir, "val", image_dir)
    assert split.image_path("psg_2") == image_dir / "psg_2.png"


def test_missing_file_names_it_and_the_expected_folder(tmp_path):
    message = error_of(tmp_path / "nowhere", "val")
    assert "val_gcg_coco_caption_gt.json" in message and "annotations/val_test" in message


def test_unknown_split(ann_dir):
    assert "'train'" in error_of(ann_dir, "train")


def test_invalid_json_gives_file_and_position(ann_dir):
    (ann_dir / "val_gcg_coco_mask_gt.json").write_text('{"images": [}')
    message = error_of(ann_dir, "val")
    assert "val_gcg_coco_mask_gt.json" in message and "line 1 column 13" in message


@pytest.mark.parametrize("kind, key, change", [
    ("caption", "labels", lambda gt: gt["annotations"][1].pop("labels")),
    ("mask", "segmentation", lambda gt: gt["annotations"][2].pop("segmentation")),
])
def test_missing_key_names_key_file_and_image(ann_dir, kind, key, change):
    message = error_of(edit(ann_dir, kind, change).parent, "val")
    assert repr(key) in message and f"val_gcg_coco_{kind}_gt.json" in message and "psg_2" in message


def test_missing_top_level_list(ann_dir):
    edit(ann_dir, "mask", lambda gt: gt.pop("categories"))
    assert "'categories'" in error_of(ann_dir, "val")


def test_image_without_caption_annotation(ann_dir):
    edit(ann_dir, "caption", lambda gt: gt["annotations"].pop(0))
    message = error_of(ann_dir, "val")
    assert "sa_1" in message and "no caption annotation" in message


def test_labels_and_masks_must_pair_up(ann_dir):
    edit(ann_dir, "mask", lambda gt: gt["annotations"].pop(1))
    message = error_of(ann_dir, "val")
    assert "sa_1" in message and "1 masks" in message and "2 labels" in message


def test_rle_size_must_match_image_size(ann_dir):
    edit(ann_dir, "mask", lambda gt: gt["annotations"][2].update(segmentation=box(8, 8, (0, 2), (0, 2))))
    message = error_of(ann_dir, "val")
    assert "psg_2" in message and "[8, 8]" in message and "16x16" in message


def test_uncompressed_rle_is_rejected(ann_dir):
    edit(ann_dir, "mask", lambda gt: gt["annotations"][0]["segmentation"].update(counts=[0, 600]))
    assert "not compressed RLE" in error_of(ann_dir, "val")


def test_missing_image_file_names_the_id(ann_dir, tmp_path):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    (image_dir / "sa_1.jpg").write_bytes(b"")
    assert "psg_2" in error_of(ann_dir, "val", image_dir)
    assert len(load_split(ann_dir, "val", image_dir, limit=1)) == 1  # only the images a run uses


def test_checked_image_refuses_another_size_than_the_gt(ann_dir, tmp_path):
    from PIL import Image

    image_dir = tmp_path / "images"
    image_dir.mkdir()
    Image.new("RGB", (30, 20)).save(image_dir / "sa_1.png")
    Image.new("RGB", (10, 8)).save(image_dir / "psg_2.png")
    split = load_split(ann_dir, "val", image_dir)
    assert load_checked_image(split, "sa_1").size == (30, 20)
    with pytest.raises(GranDfError, match=r"psg_2\.png: image psg_2 is 8x10 \(HxW\) but its ground truth is 16x16"):
        load_checked_image(split, "psg_2")


def test_load_image_reads_rgb_and_names_a_corrupt_file(tmp_path):
    from PIL import Image

    good, bad = tmp_path / "good.png", tmp_path / "bad.jpg"
    Image.new("L", (4, 3)).save(good)
    bad.write_bytes(b"not a jpeg")
    assert load_image(good).mode == "RGB" and load_image(good).size == (4, 3)
    with pytest.raises(GranDfError, match="bad.jpg"):
        load_image(bad)


def test_reads_the_synthetic_generators_layout(tmp_path):
    from altp.data.synthetic import write_split

    write_split(tmp_path, "val", 2, seed=0)
    split = load_split(tmp_path / "annotations" / "val_test", "val", tmp_path / "images" / "val_test")
    assert [image.image_id for image in split] == ["syn_val_000000", "syn_val_000001"]
    assert load_image(split.image_path("syn_val_000001")).size == (split.images[1].width,
                                                                   split.images[1].height)
