"""ALTP selection overhead and fidelity of the fast SLIC path (``pruner.slic_mode``, altp/altp.py).

For images as an encoder would see them (synthetic scenes from altp.data.synthetic plus
scikit-image's photographs, centre-cropped and area-resized), at each size:

* ``timing_ms``: median wall time (perf_counter) of one ``ALTP.select`` call for one sample
  (SLIC, token map, density, allocation, selection), ``slic_mode`` literal vs fast, ``repeats``
  calls per image; ``cpu_ms``: the same in thread CPU time, less sensitive to a loaded machine;
* ``jaccard_fast``: mean Jaccard index of the kept sets, literal vs fast, per keep ratio, with
  the same importance scores (seeded log-normal, attention-like);
* two yardsticks for reading it: ``jaccard_sigma``, literal vs literal with sigma x 1.25 (how
  much a small change of the smoothing alone moves the selection) and ``jaccard_topk``, literal
  vs the global top-k of the same scores (what ALTP would keep with a single region);
* ``regions``: mean number of SLIC regions K per mode.

Timings depend on load: on a shared machine run with one BLAS/OpenMP thread, e.g.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python scripts/bench_altp.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from altp.altp import ALTP  # noqa: E402
from altp.data.synthetic import render_scene  # noqa: E402
from altp.ddc import FAST_PX_PER_TOKEN, area_resize, capture  # noqa: E402
from altp.pruning import PruneContext, topk_sorted, visual_budget  # noqa: E402

NATURAL = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina")


def natural_image(name: str, size: int) -> np.ndarray:
    """A scikit-image photograph, centre-cropped to a square and area-resized to size x size."""
    image = getattr(data, name)()[..., :3] / 255.0
    side = min(image.shape[:2])
    top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    return area_resize(image[top:top + side, left:left + side], size, size)


def bench_images(size: int, n_synthetic: int) -> list[np.ndarray]:
    synthetic = [render_scene(seed, image_size=size).image / 255.0 for seed in range(n_synthetic)]
    return synthetic + [natural_image(name, size) for name in NATURAL]


class _FastAt(ALTP):
    """ALTP whose fast path works at ``px_per_token`` pixels per token side."""

    def __init__(self, px_per_token: int, **kwargs):
        super().__init__(**kwargs)
        self.px_per_token = px_per_token

    def regions(self, image, grid):
        return capture(image, grid, self.n_segments, self.compactness, self.sigma,
                       self.slic_mode, self.px_per_token)


def _context(image, scores, grid, budget) -> PruneContext:
    """A one-sample PruneContext carrying only what ALTP reads."""
    n = grid[0] * grid[1]
    return PruneContext(layer=2, stage=0, budget=budget, hidden=torch.zeros(1, n, 1),
                        visual_cols=torch.arange(n)[None], grid_index=torch.arange(n)[None],
                        grid=grid, images=[image], _importance=lambda signal: scores)


def _median_ms(pruner, images, scores, grid, budget, repeats) -> tuple[float, float]:
    """Median wall (perf_counter) and CPU (thread_time) milliseconds of one select call."""
    wall, cpu = [], []
    for image, score in zip(images, scores):
        pruner.select(_context(image, score, grid, budget))  # warm the lru caches
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.thread_time()
            pruner.select(_context(image, score, grid, budget))
            wall.append(time.perf_counter() - start)
            cpu.append(time.thread_time() - start_cpu)
    return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu)


def _global_topk(ctx: PruneContext) -> torch.Tensor:
    return topk_sorted(ctx.importance(), ctx.budget)


def _mean_jaccard(first, second, images, scores, grid, budget) -> float:
    """Mean Jaccard of the kept sets of two selection rules (ctx -> [1, budget]) over images."""
    values = []
    for image, score in zip(images, scores):
        a, b = (set(rule(_context(image, score, grid, budget))[0].tolist()) for rule in (first, second))
        values.append(len(a & b) / len(a | b))
    return statistics.mean(values)


def benchmark_selection(sizes=(336, 192), grid=(24, 24), keeps=(0.1, 0.25, 0.5),
                        n_synthetic=44, repeats=5, px_per_token=FAST_PX_PER_TOKEN,
                        seed=0) -> dict:
    """Timing (median ms per sample), Jaccard and region counts, per image size (see above)."""
    n = grid[0] * grid[1]
    gen = torch.Generator().manual_seed(seed)
    result = {"grid": list(grid), "fast_px_per_token": px_per_token, "keeps": list(keeps),
              "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
              "sizes": {}}
    for size in sizes:
        images = bench_images(size, n_synthetic)
        scores = [torch.randn(1, n, generator=gen).exp() for _ in images]
        entry = {"n_images": len(images), "timing_ms": {}, "cpu_ms": {}, "regions": {},
                 "jaccard_fast": {}, "jaccard_sigma": {}, "jaccard_topk": {}}
        for mode in ("literal", "fast"):
            pruner = _FastAt(px_per_token, keep=keeps[0], slic_mode=mode)
            entry["timing_ms"][mode], entry["cpu_ms"][mode] = _median_ms(
                pruner, images, scores, grid, visual_budget(keeps[0], n), repeats)
            entry["regions"][mode] = statistics.mean(
                pruner.regions(image, grid).n_regions for image in images)
        for keep in keeps:
            budget = visual_budget(keep, n)
            literal = ALTP(keep=keep)
            others = {"fast": _FastAt(px_per_token, keep=keep, slic_mode="fast").select,
                      "sigma": ALTP(keep=keep, sigma=1.25 * literal.sigma).select,
                      "topk": _global_topk}
            for name, other in others.items():
                entry[f"jaccard_{name}"][str(keep)] = _mean_jaccard(
                    literal.select, other, images, scores, grid, budget)
        result["sizes"][str(size)] = entry
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[336, 192])
    parser.add_argument("--grid", type=int, nargs=2, default=[24, 24])
    parser.add_argument("--n-synthetic", type=int, default=44)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--px-per-token", type=int, default=FAST_PX_PER_TOKEN)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = benchmark_selection(sizes=tuple(args.sizes), grid=tuple(args.grid),
                                 n_synthetic=args.n_synthetic, repeats=args.repeats,
                                 px_per_token=args.px_per_token)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for size, entry in result["sizes"].items():
        print(f"{size}x{size}, grid {result['grid']}, {entry['n_images']} images, "
              f"fast at {result['fast_px_per_token']} px/token")
        for mode in ("literal", "fast"):
            print(f"  {mode:8s} median {entry['timing_ms'][mode]:7.2f} ms/sample "
                  f"(CPU {entry['cpu_ms'][mode]:.2f} ms), mean regions {entry['regions'][mode]:.2f}")
        for keep, value in entry["jaccard_fast"].items():
            print(f"  keep {keep}: Jaccard literal-fast {value:.3f}  (yardsticks: sigma x1.25 "
                  f"{entry['jaccard_sigma'][keep]:.3f}, global top-k {entry['jaccard_topk'][keep]:.3f})")


if __name__ == "__main__":
    main()
