"""FastV: prune once at layer K, keeping the visual tokens the last prompt token attends to most.

Reference: pkunlp-icler/FastV@d165972, ``src/transformers/src/transformers/models/llama/
modeling_llama.py`` (``LlamaModel.forward``, "inplace" path) and the HF port's ``fastv_forward``
(docs/upstream/pruning_methods.md §1). As in that code (not the paper's "attention received from all
tokens"), the score is layer K-1's attention row of the last prompt token, averaged over heads;
the top ``budget`` visual tokens enter layer K with their original position ids.

Where we differ: the row is recomputed from layer K-1's q/k projections (one query, SDPA stays on
every layer) instead of an eager attention matrix -- the same numbers (tests check it against
eager attention); per-sample selection instead of batch element ``[0]``; the budget is
floor(keep * N) as in FastV's ``int(576 * ratio)`` drop-in, not the HF port's ``round``.
"""

from __future__ import annotations

import torch

from altp.pruning import IMPORTANCE_SIGNALS, PruneContext, Pruner, topk_sorted


class FastV(Pruner):
    name = "fastv"

    def __init__(self, keep: float = 1.0, layer: int = 2, importance: str = "attn_prev",
                 position_policy: str = "original", seed: int = 0):
        super().__init__(keep=keep, layer=layer, position_policy=position_policy, seed=seed)
        if importance not in IMPORTANCE_SIGNALS:
            raise ValueError(f"importance must be one of {IMPORTANCE_SIGNALS}, got {importance!r}")
        if importance == "attn_prev" and layer < 1:
            raise ValueError("FastV with importance 'attn_prev' needs layer >= 1 (it reads layer K-1)")
        self.importance = importance

    def select(self, ctx: PruneContext) -> torch.Tensor:
        return topk_sorted(ctx.importance(self.importance), ctx.budget)

    def describe(self) -> dict:
        return super().describe() | {"importance": self.importance}
