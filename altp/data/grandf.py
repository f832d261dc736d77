"""GranD-f GCG ground truth: load (and write) the val/test annotation files.

The benchmark is the four files ``annotations/val_test/{val,test}_gcg_coco_{caption,mask}_gt.json``
plus one shared image folder; image ids are the file stems. The schema is the one
``groundingLMM eval/gcg/evaluate.py`` reads (``docs/upstream/grandf_eval.md`` §1.3):

* caption GT: ``images[].id``; ``annotations[]`` with ``id, image_id, caption, labels``
  (one annotation per image; like GLaMM we take the first when there are several);
* mask GT: ``images[]`` (``id, height, width``), ``annotations[]`` with ``id, image_id,
  category_id, segmentation`` (compressed RLE), ``categories``; mask k of an image belongs to
  label k of its caption annotation, in file order.

Every problem is raised as :class:`GranDfError` with a one-line message naming the file, the
image id when there is one, what is wrong and how to fix it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

SPLITS = ("val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_LAYOUT_HINT = "ann_dir should point to the GranD-f '.../annotations/val_test' folder"


class GranDfError(ValueError):
    """Invalid or missing GranD-f ground truth; the message is one line."""


@dataclass(frozen=True)
class GTImage:
    image_id: str
    file_name: str
    height: int
    width: int
    caption: str
    labels: list[str]
    masks: list[dict]  # compressed RLE {"size": [H, W], "counts": str}, same order as labels


@dataclass
class GCGSplit:
    split: str
    caption_path: Path
    mask_path: Path
    caption_gt: dict  # raw JSON as read: pycocotools / COCOEvalCap need the original structure
    mask_gt: dict
    images: list[GTImage]  # caption-GT "images" order, the order GLaMM iterates in
    image_dir: Path | None = None
    _by_id: dict[str, GTImage] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {image.image_id: image for image in self.images}

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[GTImage]:
        return iter(self.images)

    def by_id(self, image_id: str) -> GTImage:
        try:
            return self._by_id[image_id]
        except KeyError:
            raise GranDfError(
                f"{self.caption_path}: image {image_id} is not in the {self.split} split; "
                "use an id from the caption GT 'images' list"
            ) from None

    def image_path(self, image_id: str) -> Path:
        if self.image_dir is None:
            raise GranDfError(
                f"{self.caption_path}: no image_dir was given, so image {image_id} has no path; "
                "pass image_dir (the GranD-f images/val_test folder) to load_split"
            )
        return _find_image_file(self.image_dir, self.by_id(image_id))


def load_split(ann_dir: str | Path, split: str, image_dir: str | Path | None = None,
               limit: int | None = None) -> GCGSplit:
    """Read and check ``{split}_gcg_coco_{caption,mask}_gt.json`` under ``ann_dir``.

    ``limit``: keep only the first N images (caption-GT order). Only their image files must
    exist: a smoke run on 8 images must not fail on image 2,000 of the split.
    """
    ann_dir = Path(ann_dir)
    caption_path = ann_dir / f"{split}_gcg_coco_caption_gt.json"
    mask_path = ann_dir / f"{split}_gcg_coco_mask_gt.json"
    if split not in SPLITS:
        raise GranDfError(
            f"{caption_path}: split {split!r} does not exist; GranD-f GCG has only 'val' and 'test'"
        )
    caption_gt = _read_json(caption_path, ("images", "annotations"))
    mask_gt = _read_json(mask_path, ("images", "annotations", "categories"))
    images = _join(caption_path, caption_gt, mask_path, mask_gt)
    if not images:
        raise GranDfError(f"{caption_path}: the 'images' list is empty; {_LAYOUT_HINT}")
    images = images[:limit] if limit else images
    image_dir = Path(image_dir) if image_dir is not None else None
    if image_dir is not None:
        for image in images:
            _find_image_file(image_dir, image)
    return GCGSplit(split, caption_path, mask_path, caption_gt, mask_gt, images, image_dir)


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB; a missing, truncated or non-image file raises GranDfError."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() forces the full decode inside the try
    except (OSError, UnidentifiedImageError, ValueError) as error:
        message = " ".join(str(error).split())
        raise GranDfError(
            f"{path}: cannot read the image ({message}); re-extract it from the GranD-f image zip"
        ) from None


def load_checked_image(split: GCGSplit, image_id: str) -> Image.Image:
    """The image of ``image_id``, refused when its size is not the ground truth's.

    Predicted masks are written at the size of the image the model saw, and scoring needs the
    GT size: a resized or swapped file would give masks that cannot be scored. Raised here,
    before inference, the runner records it as that image's failure and the run goes on.
    """
    path = split.image_path(image_id)
    image = load_image(path)
    gt = split.by_id(image_id)
    if image.size != (gt.width, gt.height):
        raise GranDfError(
            f"{path}: image {image_id} is {image.height}x{image.width} (HxW) but its ground truth "
            f"is {gt.height}x{gt.width}; put the original image file back")
    return image


def encode_mask(mask: np.ndarray) -> dict:
    """Binary H x W mask -> COCO compressed RLE with a str ``counts`` (the GT/prediction format)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("utf-8")}


def gt_json(images: Sequence[GTImage]) -> tuple[dict, dict]:
    """The (caption GT, mask GT) JSON objects that :func:`load_split` reads back as ``images``."""
    caption_gt: dict = {"images": [], "annotations": []}
    mask_gt: dict = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    for image in images:
        entry = {"id": image.image_id, "file_name": image.file_name,
                 "height": image.height, "width": image.width}
        caption_gt["images"].append(dict(entry))
        mask_gt["images"].append(entry)
        caption_gt["annotations"].append(
            {"id": len(caption_gt["annotations"]) + 1, "image_id": image.image_id,
             "caption": image.caption, "labels": list(image.labels)})
        for rle in image.masks:
            mask_gt["annotations"].append(
                {"id": len(mask_gt["annotations"]) + 1, "image_id": image.image_id,
                 "category_id": 1, "segmentation": rle, "iscrowd": 0,
                 "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist()})
    return caption_gt, mask_gt


def write_gt(ann_dir: str | Path, split: str, images: Sequence[GTImage]) -> tuple[Path, Path]:
    """Write ``images`` in the GranD-f layout; returns (caption GT path, mask GT path)."""
    ann_dir = Path(ann_dir)
    ann_dir.mkdir(parents=True, exist_ok=True)
    paths = (ann_dir / f"{split}_gcg_coco_caption_gt.json", ann_dir / f"{split}_gcg_coco_mask_gt.json")
    for path, content in zip(paths, gt_json(images)):
        path.write_text(json.dumps(content))
    return paths


def _read_json(path: Path, required: tuple[str, ...]) -> dict:
    if not path.is_file():
        raise GranDfError(f"{path}: file not found; {_LAYOUT_HINT}")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise GranDfError(
            f"{path}: invalid JSON at line {error.lineno} column {error.colno} ({error.msg}); "
            "re-download or regenerate the file"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise GranDfError(f"{path}: cannot read the file ({error}); check its permissions") from None
    if not isinstance(content, dict):
        raise GranDfError(f"{path}: expected a JSON object with keys {list(required)}")
    for key in required:
        if not isinstance(content.get(key), list):
            raise GranDfError(f"{path}: missing top-level list {key!r}; {_LAYOUT_HINT}")
    return content


def _require(path: Path, record: dict, keys: tuple[str, ...], what: str) -> None:
    for key in keys:
        if key not in record:
            image = f"image {record['image_id']} " if "image_id" in record else ""
            raise GranDfError(f"{path}: {image}{what} has no {key!r} key; every {what} needs {list(keys)}")


def _join(caption_path: Path, caption_gt: dict, mask_path: Path, mask_gt: dict) -> list[GTImage]:
    """Group both files by image id (one pass each) and build the checked GTImage records."""
    for entry in caption_gt["images"]:
        _require(caption_path, entry, ("id",), "image entry")
    sizes = {e["id"]: (e.get("height"), e.get("width")) for e in caption_gt["images"]}
    for entry in mask_gt["images"]:
        _require(mask_path, entry, ("id",), "image entry")
        if entry.get("height") is not None and entry.get("width") is not None:
            sizes[entry["id"]] = (entry["height"], entry["width"])

    first_caption: dict[str, dict] = {}
    for ann in caption_gt["annotations"]:
        _require(caption_path, ann, ("image_id", "id", "caption", "labels"), "caption annotation")
        if not isinstance(ann["labels"], list):
            raise GranDfError(f"{caption_path}: image {ann['image_id']} 'labels' is not a list of phrases")
        first_caption.setdefault(ann["image_id"], ann)  # GLaMM reads loadAnns(...)[0]
    masks: dict[str, list[dict]] = {}
    for ann in mask_gt["annotations"]:
        _require(mask_path, ann, ("image_id", "id", "category_id", "segmentation"), "mask annotation")
        masks.setdefault(ann["image_id"], []).append(ann["segmentation"])

    images, seen = [], set()
    for entry in caption_gt["images"]:
        image_id = entry["id"]
        if image_id in seen:
            raise GranDfError(f"{caption_path}: image {image_id} is listed twice; keep one entry")
        seen.add(image_id)
        caption = first_caption.get(image_id)
        if caption is None:
            raise GranDfError(
                f"{caption_path}: image {image_id} has no caption annotation; add one with "
                "'caption' and 'labels' or drop the image from 'images'")
        image_masks = masks.get(image_id, [])
        if len(caption["labels"]) != len(image_masks):
            raise GranDfError(
                f"{mask_path}: image {image_id} has {len(image_masks)} masks but {caption_path.name} "
                f"lists {len(caption['labels'])} labels; label k must have mask k")
        height, width = _image_size(mask_path, image_id, sizes.get(image_id, (None, None)), image_masks)
        images.append(GTImage(image_id, entry.get("file_name", f"{image_id}.jpg"), height, width,
                              caption["caption"], list(caption["labels"]), image_masks))
    return images


def _image_size(mask_path: Path, image_id: str, size: tuple, image_masks: list) -> tuple[int, int]:
    for k, rle in enumerate(image_masks):
        if not (isinstance(rle, dict) and isinstance(rle.get("counts"), str)
                and isinstance(rle.get("size"), list) and len(rle["size"]) == 2):
            raise GranDfError(
                f"{mask_path}: image {image_id} mask {k} is not compressed RLE "
                "{'size': [H, W], 'counts': str}; convert it with pycocotools.mask.frPyObjects/encode")
    if None in size:
        if not image_masks:
            raise GranDfError(
                f"{mask_path}: image {image_id} has no height/width in either file and no mask "
                "to take the size from; add 'height' and 'width' to its image entry")
        size = tuple(image_masks[0]["size"])
    height, width = int(size[0]), int(size[1])
    for k, rle in enumerate(image_masks):
        if list(rle["size"]) != [height, width]:
            raise GranDfError(
                f"{mask_path}: image {image_id} mask {k} has RLE size {rle['size']} but the image is "
                f"{height}x{width} (HxW); masks must be at the original image size")
    return height, width


def _find_image_file(image_dir: Path, image: GTImage) -> Path:
    for suffix in IMAGE_SUFFIXES:
        path = image_dir / f"{image.image_id}{suffix}"
        if path.is_file():
            return path
    raise GranDfError(
        f"{image_dir}: no image file for image {image.image_id} (looked for "
        f"{'/'.join(image.image_id + s for s in IMAGE_SUFFIXES)}); image_dir should be the "
        "GranD-f images/val_test folder")
