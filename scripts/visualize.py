"""One image, one pruner: a figure like the ALTP paper's Figures 4-5, written as one PNG.

    python scripts/visualize.py pruner=altp keep=0.25 image=<image_id> [run.py overrides] [out=PATH]

Takes every ``run.py`` override (``data.split=test``, ``model.weights=DIR``, ``pruner.alpha=2``,
...); ``image`` defaults to the split's first image, ``out`` to
``<output_root>/figures/<model>_<pruner>_keep<k>_<image>.png``. Panels, left to right:

1. the image the encoder saw, with the SLIC superpixel boundaries (altp/ddc only);
2. the kept visual tokens of the last pruning stage (pruned grid cells darkened);
3. per-region information density d_k (Eq. 3) as a heat map, values at the region centres;
4. the allocation per region: ALTP's weights w_k (Eq. 4), DDC's one keep ratio, and the kept
   tokens / tokens of each region;
5. the predicted masks over the original image, phrases in the legend; the caption is the title.

Panels 3-4 only for altp and ddc (regions recomputed with altp.ddc / altp.ddf and the pruner's
own parameters). A config mistake or an unknown image id: one line on stderr, exit 2.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from skimage.segmentation import mark_boundaries  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from altp import distributed  # noqa: E402
from altp.altp import ALTP, DDCOnly  # noqa: E402
from altp.cli_checks import one_line  # noqa: E402
from altp.data.grandf import GranDfError, load_image  # noqa: E402
from altp.data.prepare import prepare_split  # noqa: E402
from altp.ddc import capture  # noqa: E402
from altp.ddf import density_allocation, density_weights, region_density, uniform_allocation  # noqa: E402
from altp.engine import PruningEngine  # noqa: E402
from altp.errors import ConfigError  # noqa: E402
from altp.models.loader import load_model  # noqa: E402
from altp.pruning import build_pruner  # noqa: E402
from altp.run_identity import effective_keep, pruner_name  # noqa: E402
from altp.validation import validate  # noqa: E402


def fail(message: str) -> None:
    print(f"config error: {message}", file=sys.stderr)
    sys.exit(2)


def compose_config(overrides: list[str]):
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs"), job_name="visualize"):
            return compose("config", overrides=overrides)
    except Exception as err:  # noqa: BLE001 - every composition failure is a config error
        fail(one_line(err))


def upsample(grid_values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[h, w] map -> [H, W] by nearest cell (proportional boundaries, as altp.ddc)."""
    rows = np.arange(size[0]) * grid_values.shape[0] // size[0]
    cols = np.arange(size[1]) * grid_values.shape[1] // size[1]
    return grid_values[rows[:, None], cols[None, :]]


def region_analysis(pruner: DDCOnly, image: np.ndarray, grid: tuple[int, int], budget: int,
                    kept: np.ndarray) -> dict:
    """DDC/DDF for one image, with the pruner's parameters, plus what was actually kept."""
    regions = capture(image, grid, pruner.n_segments, pruner.compactness, pruner.sigma, pruner.slic_mode)
    density = region_density(regions.labels, regions.mean, regions.mean_sq)
    capacity = np.bincount(regions.token_region, minlength=regions.n_regions)
    if isinstance(pruner, ALTP):
        weights = density_weights(density, pruner.alpha)
        allocation = density_allocation(density, capacity, budget, pruner.alpha)
    else:
        weights = np.full(regions.n_regions, budget / capacity.sum())  # one keep ratio r
        allocation = uniform_allocation(capacity, budget)
    labels = upsample(regions.labels, image.shape[:2])
    ys, xs = np.indices(labels.shape)
    counts = np.maximum(np.bincount(labels.ravel(), minlength=regions.n_regions), 1)
    centres = np.stack([np.bincount(labels.ravel(), weights=a.ravel(), minlength=regions.n_regions) / counts
                        for a in (xs, ys)], axis=1)
    return {"labels": labels, "density": density, "weights": weights, "capacity": capacity,
            "allocation": allocation, "centres": centres,
            "kept": np.bincount(regions.token_region[kept], minlength=regions.n_regions)}


def region_panel(ax, fig, image, info, values, texts, title, cmap):
    ax.imshow(image, alpha=0.35)
    shown = ax.imshow(values[info["labels"]], cmap=cmap, alpha=0.75)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    for (x, y), text in zip(info["centres"], texts):
        ax.text(x, y, text, ha="center", va="center", fontsize=7,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.75, "lw": 0})
    ax.set_title(title, fontsize=9)


def draw(path: Path, image: np.ndarray, original: np.ndarray, grid: tuple[int, int], kept: np.ndarray,
         info: dict | None, prediction, heading: str, allocation_name: str) -> None:
    n_panels = 5 if info else 3
    fig, axes = plt.subplots(1, n_panels, figsize=(4.2 * n_panels, 5.0))
    mask = np.zeros(grid[0] * grid[1], dtype=bool)
    mask[kept] = True
    kept_px = upsample(mask.reshape(grid), image.shape[:2])
    if info:
        axes[0].imshow(mark_boundaries(image, info["labels"], color=(1, 0, 1)))
        axes[0].set_title(f"DDC: {len(info['density'])} SLIC regions", fontsize=9)
    else:
        axes[0].imshow(image)
        axes[0].set_title("input (as the encoder saw it)", fontsize=9)
    dimmed = image * np.where(kept_px, 1.0, 0.2)[..., None]
    axes[1].imshow(mark_boundaries(dimmed, kept_px.astype(int), color=(0, 1, 1)))
    axes[1].set_title(f"kept tokens: {len(kept)} / {mask.size} (pruned dark)", fontsize=9)
    if info:
        region_panel(axes[2], fig, image, info, info["density"], [f"{d:.3g}" for d in info["density"]],
                     "information density $d_k$ (Eq. 3)", "magma")
        texts = [f"{w:.2f}\n{k}/{c}" for w, k, c in zip(info["weights"], info["kept"], info["capacity"])]
        region_panel(axes[3], fig, image, info, info["weights"], texts,
                     f"{allocation_name}; kept / tokens per region", "viridis")
    ax = axes[-1]
    ax.imshow(original)
    colours = plt.get_cmap("tab10").colors
    handles = []
    for i, region in enumerate(prediction.masks):
        colour = np.array(colours[i % len(colours)])
        overlay = np.zeros((*region.shape, 4))
        overlay[region] = (*colour, 0.55)
        ax.imshow(overlay)
        phrase = prediction.phrases[i] if i < len(prediction.phrases) else f"[SEG] {i + 1}"
        handles.append(Patch(color=colour, label=phrase))
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=8,
                  ncol=min(2, len(handles)), frameon=False)
    ax.set_title(f"predicted masks ({len(prediction.masks)})", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    caption = textwrap.fill(prediction.caption or "(empty caption)", width=40 * n_panels)
    fig.suptitle(f"{heading}\n{caption}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str]) -> None:
    options = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv if a.startswith(("image=", "out="))}
    cfg = compose_config([a for a in argv if not a.startswith(("image=", "out="))])
    try:
        validate(cfg)
        name = pruner_name(cfg)
        split = prepare_split(cfg)
    except (ConfigError, GranDfError) as err:
        fail(str(err))
    image_id = options.get("image", split.images[0].image_id)
    if image_id not in {gt.image_id for gt in split}:
        fail(f"image={image_id}: not in {cfg.data.name}-{cfg.data.split}; "
             f"e.g. image={split.images[0].image_id}")
    keep = effective_keep(cfg)
    out = Path(options.get("out") or Path(cfg.output_root) / "figures"
               / f"{cfg.model.name}_{name}_keep{keep:g}_{image_id}.png")
    try:
        model = load_model(cfg, distributed.pick_device(cfg.device)).eval()
    except ConfigError as err:
        fail(str(err))
    pruner = build_pruner(cfg.pruner)
    original = load_image(split.image_path(image_id))
    predictions, gen = model.predict([original], PruningEngine(model.llm, pruner), cfg.max_new_tokens)
    seen, grid = model.encoder_view(original), tuple(model.grid)  # the image the pruner saw
    kept = gen.kept_grid_index[-1][0].cpu().numpy() if gen.kept_grid_index else np.arange(model.n_visual)
    info = None
    if isinstance(pruner, DDCOnly):
        info = region_analysis(pruner, seen, grid, len(kept), kept)
    alloc = "DDF weights $w_k$ (Eq. 4)" if isinstance(pruner, ALTP) else "DDC keep ratio r = n'/n"
    stage = f", layer {pruner.layers[-1]}" if gen.kept_grid_index else ""
    heading = f"{cfg.model.name} | {name} keep={keep:g}{stage} | {cfg.data.name}-{cfg.data.split} {image_id}"
    draw(out, seen, np.asarray(original), grid, kept, info, predictions[0], heading, alloc)
    print(out)


if __name__ == "__main__":
    main(sys.argv[1:])
