"""DART: keep a few pivot tokens and the visual tokens least duplicated with them.

Reference: DART (Wen et al., arXiv 2502.11494), described from the fork
xqy1111111/DART@d6a5af6, ``llava/model/language_model/modeling_llama_self.py``
(``DART.forward``, ``get_retained_image_token``); reference/pruning_methods.md §4.3. At layer K
(=2): pivots are the visual tokens with the largest L1 norm of their post-RoPE keys; for each
pivot in turn, the visual tokens with the lowest cosine similarity to it join the kept set and
leave the candidate pool. No attention weights; original positions.

Where we differ:

* exactly ``budget`` tokens: the pivots count towards it and the rest is split evenly across the
  pivots, the first ``rest % n_pivots`` taking one more (the reference takes ``max_num //
  pivots`` per pivot on top of its pivots, ~max_num + 4 tokens);
* image pivots only (a mode the reference supports): the context holds no text hidden states, so
  the reference's 4 text-token pivots (not kept themselves) are not available;
* keys are layer K's on its input (``ctx.keys()``); the reference reads layer K-1's key cache;
* similarities use the layer-K input hidden states, L2-normalised; the reference applies the
  model's final RMSNorm first, whose per-channel gain the context does not expose (its 1/rms
  factor cancels in the cosine anyway);
* pivots are processed in token order; the reference iterates a Python set (order unspecified).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from altp.pruning import PruneContext, Pruner, topk_sorted


class DART(Pruner):
    name = "dart"
    needs = frozenset({"keys", "hidden"})

    def __init__(self, keep: float = 1.0, layer: int = 2, n_pivots: int = 4,
                 position_policy: str = "original", seed: int = 0):
        super().__init__(keep=keep, layer=layer, position_policy=position_policy, seed=seed)
        if n_pivots < 1:
            raise ValueError(f"n_pivots must be >= 1, got {n_pivots}")
        self.n_pivots = n_pivots

    def select(self, ctx: PruneContext) -> torch.Tensor:
        n_pivots = min(self.n_pivots, ctx.budget)
        pivots = topk_sorted(ctx.keys().float().abs().sum(-1), n_pivots)  # [B, P] by L1 norm
        features = F.normalize(ctx.visual_hidden().float(), dim=-1)
        pool = torch.ones(ctx.batch_size, ctx.n_visual, dtype=torch.bool, device=pivots.device)
        pool.scatter_(1, pivots, False)
        rest = ctx.budget - n_pivots
        kept = [pivots]
        for p in range(n_pivots):
            count = rest // n_pivots + (p < rest % n_pivots)
            pivot = features.gather(1, pivots[:, p, None, None].expand(-1, 1, features.shape[-1]))
            similarity = (features * pivot).sum(-1).masked_fill(~pool, float("inf"))
            chosen = topk_sorted(-similarity, count)  # least similar among the remaining pool
            pool.scatter_(1, chosen, False)
            kept.append(chosen)
        return torch.cat(kept, dim=1).sort(dim=1).values

    def describe(self) -> dict:
        return super().describe() | {"n_pivots": self.n_pivots}
