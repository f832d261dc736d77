"""DART: keep a few pivot tokens and the visual tokens least duplicated with them.

Reference: DART (Wen et al., arXiv 2502.11494), the authors' ZichenWen1/DART@5a19452,
``llava/model/language_model/modeling_llama_self.py`` (``DART.forward`` L332-359,
``DART.get_retained_image_token`` L397-449); tests/test_dart_parity.py checks our kept sets and
logits against that code. Pruning at the input of layer K (default 2), from what layer K-1 left:

1. pivots: the 4 visual tokens and the 4 text tokens after the image whose post-RoPE keys of
   layer K-1 have the largest L1 norm (L342 ``layer_outputs[-2]``, L421-428);
2. features: layer K-1's output through the model's final RMSNorm (L340-341), compared by cosine;
3. for each pivot in the iteration order of upstream's Python set of sequence indices (L429,
   L434; CPython's order for ints is deterministic, so we build the same set), the visual tokens
   least similar to it join the kept set and leave the pool (L435-443);
4. image pivots stay, text pivots do not (L445). Kept tokens keep their original positions (L359).

Where we differ:

* exactly ``budget`` = floor(keep * N) visual tokens, like every pruner here. Upstream keeps
  ``4 + P * (M // P)`` for ``--max_num_trunction M`` and P pivots (L409: ``ceil(M // P)`` is a
  floor). We set M = budget - image pivots, take M // P per pivot as upstream does, and give the
  remaining ``M % P`` tokens one each to the first pivots in the same order, in a second pass
  after upstream's (so upstream's set at that M is a subset of ours). The upstream-equivalent
  budget is keep = (4 + P * (M // P)) / 576, where both agree exactly. Budgets under 4 keep
  that many image pivots and nothing else. ``describe()`` records the split per budget.
* batches: per sample (upstream asserts batch size 1, L313); fewer than 4 text tokens after the
  image give fewer text pivots (upstream's ``topk`` would fail).
* the L1 norm is over the kv heads (``ctx.prev_keys()``); upstream's keys are ``repeat_kv``'d to
  the query heads first (L881), which multiplies every norm by the group count: the same order
  up to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from altp.pruning import PruneContext, Pruner

REFERENCE = "ZichenWen1/DART@5a19452 llava/model/language_model/modeling_llama_self.py"


class DART(Pruner):
    name = "dart"

    def __init__(self, keep: float = 1.0, layer: int = 2, n_pivots: int = 4, n_text_pivots: int = 4,
                 position_policy: str = "original", seed: int = 0):
        super().__init__(keep=keep, layer=layer, position_policy=position_policy, seed=seed)
        if layer < 1:
            raise ValueError("DART reads layer K-1's keys and output: it needs layer >= 1")
        if n_pivots < 1 or n_text_pivots < 0:
            raise ValueError(f"need n_pivots >= 1 and n_text_pivots >= 0, got {n_pivots}, {n_text_pivots}")
        self.n_pivots, self.n_text_pivots = n_pivots, n_text_pivots
        self._splits: dict[int, dict] = {}  # budget -> how it was split, for describe()

    # --- the signals, one method each (tests swap them for broken variants) -------------------
    def pivot_keys(self, ctx: PruneContext) -> torch.Tensor:
        """[B, T, D] keys ranking the pivots: layer K-1's post-RoPE keys (L342)."""
        return ctx.prev_keys()

    def features(self, ctx: PruneContext) -> torch.Tensor:
        """[B, T, d] what the cosine compares: layer K-1's output, final-normed (L340-341)."""
        return ctx.final_norm(ctx.hidden)

    @staticmethod
    def pivot_order(image_ids: list[int], text_ids: list[int]) -> list[int]:
        """Upstream's iteration order: ``list(set(image_indices + query_indices))`` (L429, L434)."""
        return list(set(image_ids + text_ids))

    # --- selection ----------------------------------------------------------------------------
    def select(self, ctx: PruneContext) -> torch.Tensor:
        keys, features = self.pivot_keys(ctx), self.features(ctx)
        kept = [self._select_one(ctx, b, keys[b], features[b]) for b in range(ctx.batch_size)]
        return torch.stack(kept).to(ctx.visual_cols.device)

    def _select_one(self, ctx: PruneContext, b: int, keys: torch.Tensor,
                    features: torch.Tensor) -> torch.Tensor:
        visual_cols = ctx.visual_cols[b]
        text_cols = torch.arange(int(visual_cols[-1]) + 1, ctx.hidden.shape[1], device=keys.device)
        # upstream's indices are sequence positions (batch 1, no padding): our position ids
        seq_id = ctx.positions[b].tolist()
        column = {seq_id[c]: c for c in visual_cols.tolist() + text_cols.tolist()}
        n_image = min(self.n_pivots, ctx.budget)
        n_text = min(self.n_text_pivots, len(text_cols)) if n_image == self.n_pivots else 0
        image_l1 = torch.norm(keys[visual_cols], p=1, dim=-1)  # L424
        text_l1 = torch.norm(keys[text_cols], p=1, dim=-1)  # L425
        image_ids = [seq_id[c] for c in visual_cols[image_l1.topk(n_image).indices].tolist()]  # L427
        text_ids = [seq_id[c] for c in text_cols[text_l1.topk(n_text).indices].tolist()]  # L428
        order = self.pivot_order(image_ids, text_ids)

        extra = ctx.budget - n_image  # upstream's max_num_trunction M
        per_pivot, remainder = divmod(extra, n_image + n_text)  # L409 TOKEN_TOPK = ceil(M // P)
        self._splits[ctx.budget] = {"image_pivots": n_image, "text_pivots": n_text,
                                    "per_pivot": per_pivot, "filled": remainder}
        kept = set(image_ids)
        pool = set(seq_id[c] for c in visual_cols.tolist()) - set(image_ids)  # L431
        for counts in ([per_pivot] * len(order), [1] * remainder):  # upstream's pass, then the fill
            for item, count in zip(order, counts):
                if count == 0:
                    continue
                pool_list = list(pool)  # L433, L443
                rows = torch.tensor([column[i] for i in pool_list], device=features.device)
                valid_vectors = features.index_select(0, rows)  # L435
                cos_sim = -F.cosine_similarity(features[column[item]], valid_vectors, dim=-1)  # L436
                chosen = [pool_list[i] for i in cos_sim.topk(count).indices.tolist()]  # L437-439
                kept.update(chosen)  # L440
                pool.difference_update(chosen)  # L442
        index_of = {seq_id[c]: i for i, c in enumerate(visual_cols.tolist())}
        return torch.tensor(sorted(index_of[i] for i in kept))  # text pivots were never in `kept`

    def describe(self) -> dict:
        return super().describe() | {
            "n_pivots": self.n_pivots, "n_text_pivots": self.n_text_pivots, "reference": REFERENCE,
            "budget_rule": "exactly floor(keep*N): M = budget - image pivots, M // pivots each "
                           "(upstream's TOKEN_TOPK), M % pivots one more for the first pivots; "
                           "upstream keeps 4 + pivots * (M // pivots)",
            "budget_split": dict(self._splits)}
