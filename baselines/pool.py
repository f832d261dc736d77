"""Spatially uniform selection: keep the tokens nearest to an even lattice over the token grid.

Reference: the pooling / spatial-downsampling sanity baselines of docs/upstream/pruning_methods.md
§4.9 (UniPruneBench ``Pool_PreLLM``, TianfanPeng/VLMUniPruneBench@f93768f; the uniform spatial
samples of PruMerge+ and VisionZip's contextual targets). On LLaVA's 24x24 grid a 2x2 pooling
gives 144 tokens, which this pruner reproduces as one token per 2x2 block.

Where we differ: this is a *selection*, not average pooling -- kept tokens are unmodified hidden
states -- so it fits the engine's "indices of kept tokens" interface and any budget, not only
square numbers: ``budget`` lattice points are laid out in ``r`` rows (r ~ sqrt(budget * rows /
cols)) with the points spread as evenly as possible over those rows, and each point takes the
grid cell containing it. Deterministic, text- and content-agnostic, original positions, layer 2
by default (FastV's FLOPs; ``layer: 0`` = before the LLM, like pooling in the references).
"""

from __future__ import annotations

import math

import torch

from altp.pruning import PruneContext, Pruner


def lattice_cells(budget: int, rows: int, cols: int) -> torch.Tensor:
    """[budget] distinct row-major cell indices of an even lattice of ``budget`` points.

    Lattice row i (of r) sits at height (i + 1/2) * rows / r and holds floor((i+1) b / r) -
    floor(i b / r) points at widths (j + 1/2) * cols / c_i; r <= rows and every c_i <= cols, so
    the cells containing the points are distinct.
    """
    r = min(rows, max(1, round(math.sqrt(budget * rows / cols)), math.ceil(budget / cols)))
    starts = torch.arange(r + 1) * budget // r  # first point of each lattice row
    per_row = starts[1:] - starts[:-1]
    row = torch.repeat_interleave(torch.arange(r), per_row)
    j = torch.arange(budget) - torch.repeat_interleave(starts[:-1], per_row)
    c = per_row[row]
    y = (2 * row + 1) * rows // (2 * r)  # floor of the point's height: the cell that holds it
    x = (2 * j + 1) * cols // (2 * c)
    return y * cols + x


class SpatialPool(Pruner):
    name = "pool"

    def select(self, ctx: PruneContext) -> torch.Tensor:
        rows, cols = ctx.grid
        cells = lattice_cells(ctx.budget, rows, cols).to(ctx.grid_index.device)
        # position of each grid cell among the current visual tokens (-1: not present)
        where = torch.full((ctx.batch_size, rows * cols), -1, dtype=torch.long,
                           device=ctx.grid_index.device)
        where.scatter_(1, ctx.grid_index, torch.arange(ctx.n_visual, device=where.device)
                       .expand(ctx.batch_size, -1))
        selected = where[:, cells]
        if bool((selected < 0).any()):
            raise ValueError("pool needs the full token grid: an earlier stage removed lattice cells")
        return selected.sort(dim=1).values
