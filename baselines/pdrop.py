"""PyramidDrop: drop visual tokens in stages, ranked by the next layer's lightweight attention.

Reference: Cooperx521/PyramidDrop@6444f30, ``llava/model/modeling_llama_pdrop.py``
(``pdrop_forward``, ``pdrop_rank_drop``) and ``llava/eval/model_vqa_loader.py``
(docs/upstream/pruning_methods.md §2). At each stage layer l, the input of layer l is ranked by the
attention of the last prompt token computed with layer l's own q/k (PDrop's "rank_layer"
recomputation, our ``attn_next``), and stage s keeps int(N * lambda^s) of the ORIGINAL N visual
tokens; positions are renumbered contiguously after each drop (PDrop), configurable.

Schedules:

* ``fixed`` (PDrop's eval scripts): ``layer_list`` [8, 16, 24], lambda 0.5 -> 576/288/144/72 on
  LLaVA-1.5; ``keep`` is not used (``describe()`` says ``keep_used: false``).
* ``match_fastv`` (our rule, because the ALTP paper compares methods at equal FLOPs and PDrop's
  own configs for other budgets were never published, PDrop issues #10/#27/#29): the same number
  of stages as ``layer_list``, the first at FastV's layer K (``fastv_layer``), the others evenly
  spaced over the remaining layers (32 layers, K=2 -> [2, 12, 22]); keep PDrop's geometric
  lambda, lambda^2, lambda^3 counts (with int() per stage) and choose lambda by bisection so that
  the eval.flops ratio is as close as possible to FastV's at the same ``keep`` (single stage at
  K, floor(keep * N) tokens). The FLOPs are computed for the LLM shape given by ``n_layers``,
  ``hidden``, ``ffn`` and ``text_tokens`` (default: GLaMM's Vicuna-7B with 36 text tokens, the
  paper's accounting); lambda barely depends on d, m and the text length because text tokens are
  in both schedules. The pruner does not see the model, so ``n_layers`` must be the LLM's layer
  count (the engine refuses stage layers beyond it).

Where we differ: per-sample selection in left-padded batches (the reference asserts batch 1 and
right padding); nothing else in the ranking (same query, layer, fp32 softmax, head mean).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import torch

from altp.pruning import IMPORTANCE_SIGNALS, PruneContext, Pruner, topk_sorted, visual_budget
from eval.flops import flops_ratio, geometric_counts, multi_stage_schedule, single_stage_schedule

SCHEDULES = ("fixed", "match_fastv")


@cache
def match_fastv_lambda(keep: float, n_visual: int, layers: tuple[int, ...], fastv_layer: int,
                       n_layers: int, hidden: int, ffn: int, text: int) -> float:
    """lambda whose PDrop schedule over ``layers`` has the FLOPs ratio closest to FastV's.

    The ratio only grows with lambda (int(N * lambda^s) is monotone), so bisection brackets the
    jump across FastV's ratio; the closer side wins.
    """
    def ratio(tokens_per_layer):
        return flops_ratio(tokens_per_layer, n_visual + text, hidden, ffn)

    def pdrop(lam):
        stages = list(zip(layers, geometric_counts(n_visual, lam, len(layers))))
        return ratio(multi_stage_schedule(n_layers, n_visual, text, stages))

    budget = visual_budget(keep, n_visual)
    target = ratio(single_stage_schedule(n_layers, n_visual, text, fastv_layer, budget))
    if pdrop(1.0) <= target:  # FastV keeps everything: so does PDrop
        return 1.0
    low, high = 0.0, 1.0  # pdrop(low) < target <= pdrop(high)
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (low, mid) if pdrop(mid) >= target else (mid, high)
    return high if pdrop(high) - target <= target - pdrop(low) else low


class PyramidDrop(Pruner):
    name = "pdrop"

    def __init__(self, keep: float = 1.0, schedule: str = "fixed",
                 layer_list: Sequence[int] = (8, 16, 24), lam: float = 0.5, fastv_layer: int = 2,
                 n_layers: int = 32, hidden: int = 4096, ffn: int = 11008, text_tokens: int = 36,
                 importance: str = "attn_next", position_policy: str = "renumber", seed: int = 0):
        super().__init__(keep=keep, layer=fastv_layer, position_policy=position_policy, seed=seed)
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if importance not in IMPORTANCE_SIGNALS:
            raise ValueError(f"importance must be one of {IMPORTANCE_SIGNALS}, got {importance!r}")
        if not 0.0 < lam <= 1.0:
            raise ValueError(f"lam must be in (0, 1], got {lam}")
        self.schedule, self.lam, self.importance = schedule, lam, importance
        self.n_layers, self.hidden, self.ffn, self.text_tokens = n_layers, hidden, ffn, text_tokens
        n_stages = len(layer_list)
        if schedule == "fixed":
            self._layers = tuple(int(layer) for layer in layer_list)
        else:  # first drop at FastV's K, the rest evenly spaced over the remaining layers
            self._layers = tuple(fastv_layer + s * (n_layers - fastv_layer) // n_stages
                                 for s in range(n_stages))
        if not self._layers or self._layers[0] < 0 or any(
                a >= b for a, b in zip(self._layers, self._layers[1:])):
            raise ValueError(f"PyramidDrop needs increasing stage layers >= 0, got {list(self._layers)}"
                             f" (schedule={schedule}, n_layers={n_layers})")
        if importance == "attn_prev" and self._layers[0] < 1:
            raise ValueError("importance 'attn_prev' needs every stage layer >= 1")
        self._solved: dict[int, float] = {}  # n_visual -> lambda, for describe()

    @property
    def layers(self) -> tuple[int, ...]:
        return self._layers

    @property
    def uses_keep(self) -> bool:
        return self.schedule == "match_fastv"  # fixed: PDrop's own [8,16,24], lambda 0.5 at any keep

    def stage_lambda(self, n_visual: int) -> float:
        if self.schedule == "fixed":
            return self.lam
        lam = match_fastv_lambda(self.keep, n_visual, self._layers, self.layer, self.n_layers,
                                 self.hidden, self.ffn, self.text_tokens)
        self._solved[n_visual] = lam
        return lam

    def stage_budgets(self, n_visual: int) -> list[int]:
        return geometric_counts(n_visual, self.stage_lambda(n_visual), len(self._layers))

    def select(self, ctx: PruneContext) -> torch.Tensor:
        return topk_sorted(ctx.importance(self.importance), ctx.budget)

    def describe(self) -> dict:
        info = super().describe() | {"schedule": self.schedule, "importance": self.importance,
                                     "keep_used": self.uses_keep}
        if self.schedule == "fixed":
            return info | {"lambda": self.lam}
        return info | {"fastv_layer": self.layer, "flops_shape": {
            "n_layers": self.n_layers, "hidden": self.hidden, "ffn": self.ffn,
            "text_tokens": self.text_tokens},
            # lambda and stage budgets per visual-token count solved so far (one per model)
            "lambda": dict(self._solved),
            "stage_budgets": {n: geometric_counts(n, lam, len(self._layers))
                              for n, lam in self._solved.items()}}
