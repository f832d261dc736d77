"""Dynamic Density Formation (DDF, paper Sec. 3.3, Eq. 3-4; Algorithm 1 lines 7-18).

Pure numpy functions, from SLIC regions to the kept token set:

* ``region_density``: Eq. 3, d_k = Var(S_k) * sqrt(|P_k| / |P_total|), where Var(S_k) is the
  mean over the three RGB channels (values in [0, 1]) of the per-channel pixel variance in the
  region (population variance) and |P_k| counts pixels, not tokens.
* ``density_weights``: Eq. 4, w = softmax(d / (alpha * max d)); all-zero d (flat image) gives
  uniform weights instead of 0 / 0.
* ``density_allocation``: T_k = w_k * budget, keep ceil(T_k) (Algorithm 1 lines 15-16) but never
  more than the |Omega_k| tokens region k has. The paper is silent on regions too small for
  their share; we water-fill: such a region keeps all its tokens and the surplus is spread over
  the others by weight, repeatedly, so the shares sum to the budget. Regions that won no token
  (see ddc.py) take part in Eq. 3-4 like any SLIC region and hand their share on the same way.
* ``uniform_allocation``: DDC alone ("the simplest version of DDC", Sec. 3.2): one keep ratio
  r = budget / n for every region, ceil(r * |Omega_k|) tokens each.
* ``select_tokens``: inside region k keep its allocation[k] most important tokens; the ceils
  overshoot the budget by less than one token per region, and that excess is trimmed by
  importance (the least important kept tokens go first) so every method keeps exactly the
  budget (``altp.pruning.visual_budget``: methods are compared at equal token counts). The trim takes a region's most important token last, so every region
  with a token keeps one whenever the budget allows it (budget >= number of such regions), as
  the paper's ceil intends ("each superpixel region retains at least a fraction of its
  tokens"). An allocation short of the budget is filled with the most important unkept tokens.
"""

from __future__ import annotations

import numpy as np

_CEIL_TOLERANCE = 1e-9  # a share of 3 + 1e-12 from float round-off is 3 tokens, not 4


def region_density(labels: np.ndarray, mean: np.ndarray, mean_sq: np.ndarray) -> np.ndarray:
    """Eq. 3 for every region of ``labels`` [h, w]; ``mean``/``mean_sq`` [h, w, 3] are each
    pixel's x and x^2 (or, at reduced resolution, their averages over equal-area blocks)."""
    n_regions = int(labels.max()) + 1
    flat = labels.ravel()
    pixels = np.bincount(flat, minlength=n_regions)
    columns = [*mean.reshape(-1, 3).T, *mean_sq.reshape(-1, 3).T]
    sums = np.stack([np.bincount(flat, weights=c, minlength=n_regions) for c in columns], axis=1)
    first, second = sums[:, :3] / pixels[:, None], sums[:, 3:] / pixels[:, None]
    variance = np.clip(second - first * first, 0.0, None).mean(axis=1)  # E[x^2] - E[x]^2
    return variance * np.sqrt(pixels / labels.size)


def density_weights(density: np.ndarray, alpha: float = 1.5) -> np.ndarray:
    """Eq. 4: softmax of d / (alpha * max d); uniform when every density is 0."""
    top = density.max()
    if top <= 0:
        return np.full(len(density), 1.0 / len(density))
    scores = np.exp(density / (alpha * top))  # exponents lie in [0, 1/alpha]: no overflow
    return scores / scores.sum()


def water_fill(weights: np.ndarray, capacity: np.ndarray, budget: int) -> np.ndarray:
    """Real shares T_k summing to ``budget``: w_k * budget where that fits in capacity_k; a
    region that cannot hold its share is capped and the rest re-spread over the others by w."""
    if budget > capacity.sum():
        raise ValueError(f"budget {budget} exceeds the {capacity.sum()} tokens available")
    capped = capacity <= 0
    while True:
        if capped.all():
            return capacity.astype(np.float64)
        rest = budget - capacity[capped].sum()
        shares = np.where(capped, capacity, weights * rest / weights[~capped].sum())
        overflow = ~capped & (shares >= capacity)
        if not overflow.any():
            return shares
        capped |= overflow


def density_allocation(density: np.ndarray, capacity: np.ndarray, budget: int,
                       alpha: float = 1.5) -> np.ndarray:
    """ALTP: min(ceil(T_k), |Omega_k|) tokens per region (sum >= budget, see select_tokens)."""
    shares = water_fill(density_weights(density, alpha), capacity, budget)
    return np.minimum(np.ceil(shares - _CEIL_TOLERANCE), capacity).astype(np.int64)


def uniform_allocation(capacity: np.ndarray, budget: int) -> np.ndarray:
    """DDC only: ceil(r * |Omega_k|) tokens per region with r = budget / n (sum >= budget)."""
    ratio = budget / capacity.sum()
    return np.ceil(ratio * capacity - _CEIL_TOLERANCE).astype(np.int64)


def select_tokens(region: np.ndarray, importance: np.ndarray, allocation: np.ndarray,
                  budget: int) -> np.ndarray:
    """Ascending indices of exactly ``budget`` tokens (region [n] ints, importance [n]).

    Each token gets a tier: 2 = its region's most important token (if the region is allocated
    any), 1 = another allocated token, 0 = not allocated; the budget is filled by tier, then by
    importance, then by lower index.
    """
    order = np.lexsort((-importance, region))  # by region, most important first; stable
    counts = np.bincount(region, minlength=len(allocation))
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(region), dtype=np.int64)
    rank[order] = np.arange(len(region)) - starts[region[order]]
    allocated = rank < allocation[region]
    tier = allocated.astype(np.int64) + (allocated & (rank == 0))
    return np.sort(np.lexsort((-importance, -tier))[:budget])
