"""Detail Density Capture (DDC, paper Sec. 3.2, Eq. 2; Algorithm 1 lines 2-6).

The image, exactly as the vision encoder saw it (H x W x 3 float RGB in [0, 1]), is cut into
superpixels {S_1..S_K} = SLIC(X_v; N, C, sigma) with scikit-image's ``slic`` (``start_label=0``;
every other argument at the library default: Lab colour space, 10 iterations, connectivity
enforced, so K is usually below N), and every visual token is assigned to one region, giving
the index sets Omega_k.

Decisions where the paper is silent:

* token -> region: the region holding the majority of the token's patch pixels; the patch of
  token (r, c) is the pixel block between proportional boundaries, rows
  ``floor(y * grid_h / H) == r`` (so sizes that are not multiples of the grid still work); a tie
  goes to the lower label. A region may win no token at all; it then has no Omega_k.
* ``sigma`` is in full-resolution pixels; the paper names it but gives no value (see altp.py).
* ``slic_mode``: ``literal`` runs SLIC on the full image. ``fast`` runs it on the image
  area-averaged down to ``px_per_token`` pixels per token side (default 1: the image of patch
  means, so each working pixel is one token; never upsampled), with sigma scaled alike;
  compactness needs no rescaling because SLIC divides spatial distances by its grid step. The
  density statistics stay full-resolution: ``Capture.mean`` / ``mean_sq`` hold each working
  pixel's area-average of x and x^2 over the full-resolution pixels it covers, so a region's
  variance E[x^2] - E[x]^2 is that of the full-resolution pixels under the region's upsampled
  label map (exact when H, W are multiples of the working size).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from skimage.segmentation import slic

SLIC_MODES = ("literal", "fast")
FAST_PX_PER_TOKEN = 1  # fast path: working pixels per token side (scripts/bench_altp.py)


@dataclass
class Capture:
    """SLIC regions of one image at the working resolution h x w."""

    labels: np.ndarray  # [h, w] int, region of each working pixel, 0..K-1
    mean: np.ndarray  # [h, w, 3] per working pixel: mean of x over the pixels it covers
    mean_sq: np.ndarray  # [h, w, 3] per working pixel: mean of x^2 over the same pixels
    token_region: np.ndarray  # [grid_h * grid_w] region of each grid cell (row-major)

    @property
    def n_regions(self) -> int:
        return int(self.labels.max()) + 1


@lru_cache(maxsize=64)
def _area_matrix(size: int, new_size: int) -> np.ndarray:
    """[new_size, size] weights that area-average a 1-D signal: row i is the overlap of output
    cell [i * size / new_size, (i + 1) * size / new_size) with each input pixel, normalised."""
    edges = np.arange(new_size + 1) * (size / new_size)
    pixel = np.arange(size)
    overlap = (np.minimum(edges[1:, None], pixel + 1) - np.maximum(edges[:-1, None], pixel))
    weights = np.clip(overlap, 0.0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def area_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """[height, width, C] area average of [H, W, C] ``image``.

    Exact multiples (336 -> 24, 192 -> 24): a block mean. Otherwise one matrix product per axis.
    The block mean avoids BLAS, whose worker threads contend with torch's right after the
    attention that ranks the tokens (measured: 15 ms instead of 1 ms on 2 cores).
    """
    rows_in, cols_in, channels = image.shape
    if rows_in % height == 0 and cols_in % width == 0:  # two contiguous block sums (fast in numpy)
        rows = image.reshape(height, rows_in // height, cols_in, channels).sum(axis=1)
        block = rows.reshape(height, width, cols_in // width, channels).sum(axis=2)
        return block / ((rows_in // height) * (cols_in // width))
    rows = _area_matrix(rows_in, height).astype(image.dtype) @ image.reshape(rows_in, -1)
    by_col = rows.reshape(height, cols_in, channels).transpose(1, 0, 2).reshape(cols_in, -1)
    out = _area_matrix(cols_in, width).astype(image.dtype) @ by_col
    return out.reshape(width, height, channels).transpose(1, 0, 2)


@lru_cache(maxsize=64)
def _pixel_tokens(height: int, width: int, grid: tuple[int, int]) -> np.ndarray:
    """[height * width] grid cell (row-major) of every pixel, by proportional boundaries."""
    rows = np.arange(height) * grid[0] // height
    cols = np.arange(width) * grid[1] // width
    return (rows[:, None] * grid[1] + cols[None, :]).ravel()


def token_regions(labels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """[grid_h * grid_w] majority region of every token's patch (ties: lower label)."""
    n_tokens = grid[0] * grid[1]
    n_regions = int(labels.max()) + 1
    pairs = labels.ravel().astype(np.int64) * n_tokens + _pixel_tokens(*labels.shape, grid)
    votes = np.bincount(pairs, minlength=n_regions * n_tokens).reshape(n_regions, n_tokens)
    return votes.argmax(axis=0)


def capture(image: np.ndarray, grid: tuple[int, int], n_segments: int = 10,
            compactness: float = 5.0, sigma: float = 1.0, slic_mode: str = "literal",
            px_per_token: int = FAST_PX_PER_TOKEN) -> Capture:
    """DDC for one image: SLIC regions, their pixel moments and the token -> region map.

    ``px_per_token`` only matters for ``slic_mode="fast"`` (the benchmark varies it).
    """
    if slic_mode not in SLIC_MODES:
        raise ValueError(f"slic_mode must be one of {SLIC_MODES}, got {slic_mode!r}")
    height, width = image.shape[:2]
    if slic_mode == "fast":
        height = min(height, px_per_token * grid[0])
        width = min(width, px_per_token * grid[1])
    if (height, width) == image.shape[:2]:
        mean = np.asarray(image, dtype=np.float64)
        mean_sq = mean * mean
    else:
        # float32 halves the cost of the two pooling products, the fast path's main expense
        full = np.asarray(image, dtype=np.float32)
        mean, mean_sq = area_resize(full, height, width), area_resize(full * full, height, width)
    # sigma is in full-resolution pixels. SciPy cuts a Gaussian at 4 sigma, so below 1/8 of a
    # working pixel its kernel is the single tap [1]: skip that identity filter (fast path).
    scaled = [sigma * height / image.shape[0], sigma * width / image.shape[1]]
    scaled = [value if value >= 0.125 else 0.0 for value in scaled]
    labels = slic(mean, n_segments=n_segments, compactness=compactness, sigma=scaled,
                  start_label=0, channel_axis=-1)
    return Capture(labels, mean, mean_sq, token_regions(labels, grid))
