"""ALTP and its DDC-only ablation as pruners (paper Sec. 3.4, Algorithm 1; Table 3).

Per sample: DDC (ddc.py) cuts the image the encoder saw into SLIC regions and maps every
current visual token to one; ALTP allocates the budget by region density (DDF, ddf.py, Eq. 3-4),
``DDCOnly`` with one keep ratio for every region; then each region keeps its most important
tokens and the total is trimmed to exactly the budget. Both act once, at the input of layer K
(``layer``, default 2: layers 0 and 1 see every token, as in the paper's FastV comparison), and
keep original position ids, as FastV does.

Where the paper contradicts itself: Algorithm 1 (line 20) and Sec. 3.4 feed only the selected
tokens to the LLM (pruning before it, K = 0), but Table 1 gives ALTP the same FLOPs as FastV at
K = 2 (20/33/55 %), and its importance "cross-attention" needs an LLM layer. We follow Table 1:
``layer: 2``; ``pruner.layer=0`` with ``importance=none`` is the literal Algorithm 1.

Decisions where the paper is silent (Sec. 3.3 only says "by some local importance criterion,
e.g. cross-attention or self-attention magnitude"):

* ``importance="attn_prev"`` (default): the last prompt token's attention in layer K-1, averaged
  over heads (FastV's signal); ``"attn_next"``: layer K's q/k on its input (PyramidDrop's);
  ``"none"``: no attention at all, tokens closest to their region's centroid (in grid cells)
  rank first, ties in raster order, so a region keeps its core before its border.
* ``sigma`` defaults to 1 pixel. Eq. 2 names sigma but gives no value; scikit-image's default
  (0, no smoothing) lets pixel and JPEG noise fragment the low-compactness (C = 5) clusters, and
  SLIC's connectivity step then merges them into a single region for 36-42 % of the images of
  scripts/bench_altp.py (mean K 2.4; sigma = 1: 6-8 %, mean K 5.6), where ALTP is FastV (the
  paper's Table 4 N = 3 regime). sigma = 1 is also what scikit-image's gallery uses for SLIC
  (plot_segmentations). ``pruner.sigma=0`` gives the library default.
* ``slic_mode`` defaults to ``literal`` (a fast path is the default only if the metrics do not
  suffer, and that is not shown): ``fast`` (ddc.py) is ~15-30x
  cheaper, but its kept sets overlap the literal ones by a mean Jaccard of only ~0.8 (about as
  far as a global top-k is from literal ALTP), below the 0.9 we ask before trusting it without
  GCG metrics (scripts/bench_altp.py).

Everything that depends on the image alone (SLIC, the token -> region map, DDF's Eq. 3
densities) is ``prepare`` (altp.pruning): with ``prefetch=true`` the data pipeline runs it
ahead of the model, so what remains inside prefill is Eq. 4, the allocation and the per-region
top-k (Algorithm 1 lines 7-19), as cheap as FastV's top-k. Without a prepared state ``select``
runs ``prepare`` itself, inline, with the same result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from altp.ddc import SLIC_MODES, Capture, capture
from altp.ddf import density_allocation, region_density, select_tokens, uniform_allocation
from altp.pruning import IMPORTANCE_SIGNALS, PruneContext, Pruner

IMPORTANCE_CHOICES = (*IMPORTANCE_SIGNALS, "none")


def centroid_scores(region: np.ndarray, cells: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Minus each token's squared grid distance to the centroid of its region's tokens."""
    rows, cols = np.divmod(cells, grid[1])
    counts = np.maximum(np.bincount(region), 1)
    centre_r = np.bincount(region, weights=rows) / counts
    centre_c = np.bincount(region, weights=cols) / counts
    return -((rows - centre_r[region]) ** 2 + (cols - centre_c[region]) ** 2)


@dataclass(frozen=True)
class Regions:
    """One image's DDC result, as ``select`` needs it (the state ``prepare`` returns)."""

    grid: tuple[int, int]
    token_region: np.ndarray  # [grid_h * grid_w] region of each grid cell (row-major)
    n_regions: int
    density: np.ndarray | None  # [n_regions] Eq. 3 densities (ALTP); None for DDC-only


class DDCOnly(Pruner):
    """Table 3's "Only DDC": SLIC regions, one keep ratio r = budget / n for every region."""

    name = "ddc"
    uses_image = True  # SLIC regions of the image (done in select when prepare() did not run)

    def __init__(self, keep: float = 1.0, layer: int = 2, position_policy: str = "original",
                 seed: int = 0, n_segments: int = 10, compactness: float = 5.0,
                 sigma: float = 1.0, importance: str = "attn_prev", slic_mode: str = "literal"):
        super().__init__(keep=keep, layer=layer, position_policy=position_policy, seed=seed)
        if importance not in IMPORTANCE_CHOICES:
            raise ValueError(f"importance must be one of {IMPORTANCE_CHOICES}, got {importance!r}")
        if importance == "attn_prev" and layer < 1:
            raise ValueError("importance 'attn_prev' reads layer K-1: it needs layer >= 1")
        if slic_mode not in SLIC_MODES:
            raise ValueError(f"slic_mode must be one of {SLIC_MODES}, got {slic_mode!r}")
        if n_segments < 1 or compactness <= 0 or sigma < 0:
            raise ValueError("need n_segments >= 1, compactness > 0 and sigma >= 0")
        self.n_segments, self.compactness, self.sigma = n_segments, compactness, sigma
        self.importance, self.slic_mode = importance, slic_mode

    def regions(self, image: np.ndarray, grid: tuple[int, int]) -> Capture:
        """DDC (Eq. 2) for one image."""
        return capture(image, grid, self.n_segments, self.compactness, self.sigma, self.slic_mode)

    def density(self, regions: Capture) -> np.ndarray | None:
        """Per-region density for ``allocate``; the uniform ratio needs none."""
        return None

    def prepare(self, image: np.ndarray, grid: tuple[int, int]) -> Regions:
        """The image-only part (Algorithm 1 lines 2-6, and Eq. 3 for ALTP), for the pipeline."""
        regions = self.regions(image, grid)
        return Regions(grid, regions.token_region, regions.n_regions, self.density(regions))

    def allocate(self, regions: Regions, capacity: np.ndarray, budget: int) -> np.ndarray:
        """Tokens per region: ceil(r * |Omega_k|), r = budget / n (Sec. 3.2)."""
        return uniform_allocation(capacity, budget)

    def _sample_regions(self, ctx: PruneContext, b: int) -> Regions:
        """The pipeline's state for sample b when it ran ``prepare``, else ``prepare`` now."""
        state = ctx.prepared[b] if ctx.prepared is not None else None
        if state is None:
            if ctx.images is None or len(ctx.images) != ctx.batch_size:
                raise ValueError(f"{self.name} needs one image per sample (EngineInputs.images)")
            return self.prepare(ctx.images[b], ctx.grid)
        if not isinstance(state, Regions) or state.grid != ctx.grid:
            raise ValueError(f"{self.name}: prepared state for sample {b} is not this pruner's "
                             f"regions on the {ctx.grid} grid")
        return state

    def select(self, ctx: PruneContext) -> torch.Tensor:
        if ctx.prepared is not None and len(ctx.prepared) != ctx.batch_size:
            raise ValueError(f"{self.name}: {len(ctx.prepared)} prepared states for {ctx.batch_size} samples")
        cells = ctx.grid_index.cpu().numpy()
        scores = None if self.importance == "none" else \
            ctx.importance(self.importance).float().cpu().numpy()
        kept = []
        for b in range(ctx.batch_size):
            regions = self._sample_regions(ctx, b)
            region = regions.token_region[cells[b]]
            capacity = np.bincount(region, minlength=regions.n_regions)
            allocation = self.allocate(regions, capacity, ctx.budget)
            importance = centroid_scores(region, cells[b], ctx.grid) if scores is None \
                else scores[b]
            kept.append(torch.from_numpy(select_tokens(region, importance, allocation, ctx.budget)))
        return torch.stack(kept).to(ctx.visual_cols.device)

    def describe(self) -> dict:
        return super().describe() | {
            "n_segments": self.n_segments, "compactness": self.compactness, "sigma": self.sigma,
            "importance": self.importance, "slic_mode": self.slic_mode}


class ALTP(DDCOnly):
    """Adaptive Local-Aware Token Pruning: DDC's regions, DDF's density allocation."""

    name = "altp"

    def __init__(self, keep: float = 1.0, layer: int = 2, position_policy: str = "original",
                 seed: int = 0, n_segments: int = 10, compactness: float = 5.0,
                 sigma: float = 1.0, alpha: float = 1.5, importance: str = "attn_prev",
                 slic_mode: str = "literal"):
        super().__init__(keep=keep, layer=layer, position_policy=position_policy, seed=seed,
                         n_segments=n_segments, compactness=compactness, sigma=sigma,
                         importance=importance, slic_mode=slic_mode)
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha = alpha

    def density(self, regions: Capture) -> np.ndarray:
        """DDF's Eq. 3 densities d_k: image-only, so computed in ``prepare``."""
        return region_density(regions.labels, regions.mean, regions.mean_sq)

    def allocate(self, regions: Regions, capacity: np.ndarray, budget: int) -> np.ndarray:
        """Tokens per region: by density (DDF, Eq. 4)."""
        return density_allocation(regions.density, capacity, budget, self.alpha)

    def describe(self) -> dict:
        return super().describe() | {"alpha": self.alpha}
