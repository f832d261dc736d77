"""Procedural GranD-f-format scenes for grounded conversation generation (GCG).

A scene is a square RGB image: a muted, textured background and a few (1..6 by default)
flat-coloured shapes that never touch, a caption naming every shape as a phrase ("small red
circle"), and one exact pixel mask per phrase. Everything is a pure function of an integer
seed (`render_scene`).

Phrase order, the rule a model has to learn: objects are sorted by the centroid (cy, cx) of
their mask; first by row band, band = floor(ORDER_BANDS * cy / H), top to bottom; then by cx,
left to right; then by cy.

Texts, for phrases p1..pn in that order (n = 1 gives "a p1", n = 2 "a p1 and a p2"):
    caption  "The image shows a p1, a p2 and a p3."
    answer   "The image shows a <p> p1 </p> [SEG] , a <p> p2 </p> [SEG] and a <p> p3 </p> [SEG] ."
The answer is GLaMM's training format with every token separated by one space, so
`answer.split()` yields words of VOCAB. Phrases are "<size> <colour> <shape>", unique per image.

`write_dataset` / `write_split` write the GranD-f val/test layout (one shared image folder, ids
are file stems); `iter_training_samples` is an endless stream whose seeds never meet theirs.
"""

from __future__ import annotations

import io
import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from skimage import draw, filters

from altp.data.grandf import GTImage, encode_mask, gt_json

TOKEN_GRID = 24  # the tiny vision model's token grid side: image sides must be multiples of it
MIN_IMAGE_SIZE = 96  # below this the smallest objects (5 % of the side) shrink under 5 px
JPEG_QUALITY = 95
ORDER_BANDS = 3

# Saturated or extreme colours; backgrounds are muted mid-tones, so these stand out.
COLOURS = {
    "black": (15, 15, 15), "blue": (30, 70, 225), "green": (30, 170, 50),
    "orange": (245, 140, 20), "purple": (140, 40, 185), "red": (220, 30, 30),
    "white": (250, 250, 250), "yellow": (240, 220, 30),
}
SHAPES = ("circle", "cross", "ellipse", "ring", "square", "star", "triangle")
SIZES = {"small": (0.05, 0.09), "large": (0.20, 0.30)}  # extent as a fraction of the image side
SMALL_PROBABILITY = 0.6  # small objects are what token pruning loses first: make them common
BACKGROUND_KINDS = ("gradient", "stripes", "checker", "blotches")
BACKGROUND_CONTRAST = 30.0  # max per-channel difference between a background's two colours
PIXEL_NOISE = 6.0  # std of the Gaussian noise over the whole image
MIN_CONTRAST = 100.0  # RGB distance required between an object's colour and the ground under it
GAP = 0.02  # free border around every object, as a fraction of the side
MAX_PLACEMENT_TRIES = 200

_TEMPLATE_WORDS = ("The", "image", "shows", "a", "and", ",", ".", "<p>", "</p>", "[SEG]")
VOCAB = sorted({*_TEMPLATE_WORDS, *SIZES, *COLOURS, *SHAPES})

SPLITS = ("val", "test")
_SEED_STREAMS = ("val", "test", "train")
GENERATOR_VERSION = 1  # bump whenever the same config would render different data
CONFIG_FILE = "synthetic_config.json"  # written last by write_dataset: marks a finished dataset


@dataclass(frozen=True)
class SceneSample:
    """One rendered scene; `image` is the decoding of `jpeg`, the bytes written to disk."""

    seed: int
    jpeg: bytes
    image: np.ndarray  # uint8, H x W x 3
    caption: str
    phrases: list[str]
    masks: np.ndarray  # bool, n x H x W, in phrase order
    answer: str


class SplitSummary(NamedTuple):
    """What write_split wrote."""

    split: str
    n_images: int
    n_masks: int
    caption_gt: Path
    mask_gt: Path


def validate_config(image_size: int, min_objects: int, max_objects: int) -> None:
    """Raise ValueError naming the first bad generator setting."""
    if image_size < MIN_IMAGE_SIZE or image_size % TOKEN_GRID:
        raise ValueError(f"image_size must be a multiple of {TOKEN_GRID}, at least "
                         f"{MIN_IMAGE_SIZE}; got {image_size}")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")


def scene_seed(base_seed: int, stream: str, index: int) -> int:
    """Seed of scene `index` of a stream (val, test, train): distinct for every triple."""
    if base_seed < 0 or not 0 <= index < 2**32:
        raise ValueError(f"need base_seed >= 0 and 0 <= index < 2**32, got {base_seed}, {index}")
    return (base_seed * len(_SEED_STREAMS) + _SEED_STREAMS.index(stream)) * 2**32 + index


def format_caption(phrases: list[str]) -> str:
    """Plain GT caption naming `phrases` in order (format in the module docstring)."""
    return f"The image shows {_enumerate([f'a {p}' for p in phrases], ', ')}."


def format_answer(phrases: list[str]) -> str:
    """Training answer: the caption with each phrase tagged `<p> phrase </p> [SEG]`."""
    tagged = [f"a <p> {p} </p> [SEG]" for p in phrases]
    return f"The image shows {_enumerate(tagged, ' , ')} ."


def _enumerate(items: list[str], comma: str) -> str:
    if len(items) == 1:
        return items[0]
    return f"{comma.join(items[:-1])} and {items[-1]}"


def render_scene(
    seed: int, image_size: int = 192, min_objects: int = 1, max_objects: int = 6
) -> SceneSample:
    """Draw the scene of `seed`: image (after a JPEG round trip), texts and masks."""
    validate_config(image_size, min_objects, max_objects)
    rng = np.random.default_rng(seed)
    canvas = _background(rng, image_size)
    phrases, masks = [], []
    for size_name, cy, cx, extent in _place_objects(rng, min_objects, max_objects, image_size):
        colour, shape = _pick_colour_and_shape(rng, canvas, size_name, cy, cx, extent, phrases)
        mask = _shape_mask(shape, cy, cx, extent, image_size)
        canvas[mask] = COLOURS[colour]
        phrases.append(f"{size_name} {colour} {shape}")
        masks.append(mask)
    canvas += rng.normal(0.0, PIXEL_NOISE, canvas.shape)
    jpeg = _encode_jpeg(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))
    order = sorted(range(len(masks)), key=lambda i: _reading_order_key(masks[i]))
    phrases = [phrases[i] for i in order]
    return SceneSample(
        seed=seed,
        jpeg=jpeg,
        image=np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")),
        caption=format_caption(phrases),
        phrases=phrases,
        masks=np.stack([masks[i] for i in order]),
        answer=format_answer(phrases),
    )


def _background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Float H x W x 3 texture: two close mid-tone colours mixed by a pattern of a random kind."""
    ys, xs = np.mgrid[0:image_size, 0:image_size] / image_size
    angle = rng.uniform(0.0, np.pi)
    along = ys * np.sin(angle) + xs * np.cos(angle)  # position along a random direction
    kind = BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))]
    if kind == "gradient":
        mix = along
    elif kind == "stripes":
        mix = np.floor(along * rng.uniform(4.0, 12.0)) % 2
    elif kind == "checker":
        cells = rng.integers(3, 12)
        mix = (np.floor(ys * cells) + np.floor(xs * cells)) % 2
    else:  # blotches: smoothed white noise
        mix = filters.gaussian(rng.random((image_size, image_size)), sigma=image_size / 12)
    mix = (mix - mix.min()) / max(np.ptp(mix), 1e-9)
    # Grey plus a small tint: low saturation keeps every palette colour far from the ground.
    base = rng.uniform(90.0, 165.0) + rng.uniform(-20.0, 20.0, size=3)
    other = base + rng.uniform(-BACKGROUND_CONTRAST, BACKGROUND_CONTRAST, size=3)
    return base + mix[..., None] * (other - base)


def _place_objects(rng, min_objects, max_objects, image_size):
    """Non-overlapping square boxes as (size_name, cy, cx, extent), by rejection sampling.

    Large boxes go first so that they still fit; a box that finds no free spot in
    MAX_PLACEMENT_TRIES is left out, so a crowded scene may hold fewer objects than drawn.
    """
    n_objects = rng.integers(min_objects, max_objects + 1)
    size_names = np.where(rng.random(n_objects) < SMALL_PROBABILITY, "small", "large")
    extents = [rng.uniform(*SIZES[name]) * image_size for name in size_names]
    gap = GAP * image_size
    placed = []
    for i in np.argsort(extents)[::-1]:
        half = extents[i] / 2
        for _ in range(MAX_PLACEMENT_TRIES):
            cy, cx = rng.uniform(half + gap, image_size - half - gap, size=2)
            if all(
                max(abs(cy - py), abs(cx - px)) >= half + pe / 2 + gap for _, py, px, pe in placed
            ):
                placed.append((str(size_names[i]), cy, cx, extents[i]))
                break
    return placed


def _pick_colour_and_shape(rng, canvas, size_name, cy, cx, extent, taken_phrases):
    """A (colour, shape) that contrasts with the ground under the box and repeats no phrase."""
    half = extent / 2
    box = canvas[int(cy - half) : int(cy + half) + 1, int(cx - half) : int(cx + half) + 1]
    ground = box.reshape(-1, 3).mean(axis=0)
    options = [
        (colour, shape)
        for colour, rgb in COLOURS.items()
        if np.linalg.norm(np.subtract(rgb, ground)) >= MIN_CONTRAST
        for shape in SHAPES
        if f"{size_name} {colour} {shape}" not in taken_phrases
    ]
    return options[rng.integers(len(options))]


# Each polygon shape is a union of polygons with (y, x) vertices in the unit box [-1, 1]^2.
_SQUARE = np.array([(-1, -1), (-1, 1), (1, 1), (1, -1)], dtype=float)
_STAR_ANGLES = -np.pi / 2 + np.arange(10) * np.pi / 5  # a point up, alternating outer/inner
_STAR = np.stack([np.sin(_STAR_ANGLES), np.cos(_STAR_ANGLES)], axis=1)
_POLYGONS = {
    "square": [_SQUARE],
    "cross": [_SQUARE * (1, 1 / 3), _SQUARE * (1 / 3, 1)],  # a vertical and a horizontal bar
    "triangle": [np.array([(-1, 0), (1, 1), (1, -1)], dtype=float)],
    "star": [_STAR * np.tile([1.0, 0.45], 5)[:, None]],
}


def _shape_mask(shape: str, cy: float, cx: float, extent: float, image_size: int) -> np.ndarray:
    """Bool mask of a shape whose bounding box is `extent` wide, centred at (cy, cx)."""
    radius = extent / 2
    grid = (image_size, image_size)
    mask = np.zeros(grid, dtype=bool)
    if shape in ("circle", "ring"):
        mask[draw.disk((cy, cx), radius, shape=grid)] = True
        if shape == "ring":
            mask[draw.disk((cy, cx), 0.55 * radius, shape=grid)] = False
    elif shape == "ellipse":
        mask[draw.ellipse(cy, cx, 0.55 * radius, radius, shape=grid)] = True
    else:
        for unit in _POLYGONS[shape]:
            rows, cols = cy + radius * unit[:, 0], cx + radius * unit[:, 1]
            mask[draw.polygon(rows, cols, shape=grid)] = True
    return mask


def _reading_order_key(mask: np.ndarray) -> tuple[int, float, float]:
    rows, cols = np.nonzero(mask)
    cy, cx = rows.mean(), cols.mean()
    return int(ORDER_BANDS * cy // mask.shape[0]), cx, cy


def _encode_jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # No chroma subsampling: it would smear the colour of objects only a few pixels wide.
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buffer.getvalue()


def iter_training_samples(
    seed: int, image_size: int = 192, min_objects: int = 1, max_objects: int = 6
) -> Iterator[SceneSample]:
    """Endless training scenes; their seeds never coincide with a val or test scene's."""
    for index in itertools.count():
        yield render_scene(scene_seed(seed, "train", index), image_size, min_objects, max_objects)


def gt_paths(out_dir: str | Path, split: str) -> tuple[Path, Path]:
    """(caption GT, mask GT) paths of a split in the GranD-f val/test layout."""
    ann_dir = Path(out_dir) / "annotations" / "val_test"
    return ann_dir / f"{split}_gcg_coco_caption_gt.json", ann_dir / f"{split}_gcg_coco_mask_gt.json"


def write_split(
    out_dir: str | Path, split: str, n_images: int, seed: int,
    image_size: int = 192, min_objects: int = 1, max_objects: int = 6,
) -> SplitSummary:
    """Render `n_images` scenes of a split; write their JPEGs and the two GT files."""
    if split not in SPLITS or n_images < 1:
        raise ValueError(f"need split in {SPLITS} and n_images >= 1, got {split!r}, {n_images}")
    validate_config(image_size, min_objects, max_objects)
    image_dir = Path(out_dir) / "images" / "val_test"
    image_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for index in range(n_images):
        stem = f"syn_{split}_{index:06d}"
        sample = render_scene(scene_seed(seed, split, index), image_size, min_objects, max_objects)
        _write_atomic(image_dir / f"{stem}.jpg", sample.jpeg)
        images.append(GTImage(stem, f"{stem}.jpg", image_size, image_size, sample.caption,
                              sample.phrases, [encode_mask(mask) for mask in sample.masks]))
    caption_gt, mask_gt = gt_paths(out_dir, split)
    caption_gt.parent.mkdir(parents=True, exist_ok=True)
    for path, content in zip((caption_gt, mask_gt), gt_json(images)):
        _write_json(path, content)
    n_masks = sum(len(image.masks) for image in images)
    return SplitSummary(split, n_images, n_masks, caption_gt, mask_gt)


def dataset_config(n_val=200, n_test=400, seed=0, image_size=192, min_objects=1, max_objects=6):
    """The settings that determine a dataset, as stored in CONFIG_FILE; ValueError if bad."""
    if min(n_val, n_test) < 1 or seed < 0:
        raise ValueError(f"need n_val, n_test >= 1 and seed >= 0, got {n_val}, {n_test}, {seed}")
    validate_config(image_size, min_objects, max_objects)
    return dict(
        generator_version=GENERATOR_VERSION, n_val=n_val, n_test=n_test, seed=seed,
        image_size=image_size, min_objects=min_objects, max_objects=max_objects,
    )


def read_dataset_config(out_dir: str | Path) -> dict | None:
    """The config of the finished synthetic dataset in `out_dir`, or None if there is none."""
    path = Path(out_dir) / CONFIG_FILE
    return json.loads(path.read_text()) if path.exists() else None


def write_dataset(
    out_dir: str | Path, n_val: int = 200, n_test: int = 400, seed: int = 0,
    image_size: int = 192, min_objects: int = 1, max_objects: int = 6,
) -> list[SplitSummary]:
    """Write val and test (seed streams of `seed`), then CONFIG_FILE to mark the dataset done.

    Images of an earlier, larger dataset in the same folder are left in place: the GT files
    alone define which images belong to a split.
    """
    config = dataset_config(n_val, n_test, seed, image_size, min_objects, max_objects)
    # Forget the old marker first, so an interrupted rewrite never looks finished.
    (Path(out_dir) / CONFIG_FILE).unlink(missing_ok=True)
    summaries = [
        write_split(out_dir, split, n, seed, image_size, min_objects, max_objects)
        for split, n in (("val", n_val), ("test", n_test))
    ]
    _write_json(Path(out_dir) / CONFIG_FILE, config)
    return summaries


def _write_json(path: Path, obj) -> None:
    _write_atomic(path, json.dumps(obj, separators=(",", ":")).encode())


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a sibling temp file, then rename it: readers never see half a file."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_bytes(data)
    os.replace(temp, path)
