"""The pruner interface: what a pruning method declares, what the engine hands it, budgets.

A pruner is a small object the engine consults during prefill. It declares

* ``layers``: the LLM layer indices at whose *input* it acts (``0`` = before the first layer,
  i.e. on the projected visual tokens; FastV's "K=2" = layers 0 and 1 see every token);
* ``stage_budgets(n_visual)``: how many visual tokens survive each of those stages;
* ``position_policy``: ``"original"`` (kept tokens keep their position ids, FastV) or
  ``"renumber"`` (positions are made contiguous again, PyramidDrop);
* ``uses_image``: whether ``select`` reads the image (``ctx.images``; the engine refuses a model
  that gives none); every other input (importance, hidden states, keys) is computed on demand
  when ``select`` asks the context for it;
* ``uses_keep``: whether the kept tokens depend on ``keep`` (not for ``none`` or PDrop's fixed
  schedule: the runner then makes one run, named keep1, instead of one per keep),

and implements ``select(ctx) -> LongTensor[B, budget]``: for every sample, which of the
*current* visual tokens to keep. The engine does the rest uniformly (gather, positions, masks,
KV cache), so a pruner file is only its selection rule.

Work that depends on the image alone (ALTP's SLIC superpixels) may go into
``prepare(image, grid) -> state``: the data pipeline (altp.pipeline) runs it ahead of the
model, off the critical path, and the state reaches ``select`` as ``ctx.prepared[b]``
(through ``EngineInputs.prepared``). ``select`` must give the same tokens when ``prepared`` is
None (then it does that work itself, inline), so prefetching never changes a prediction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

POSITION_POLICIES = ("original", "renumber")
IMPORTANCE_SIGNALS = ("attn_prev", "attn_next")


def visual_budget(keep: float, n_visual: int) -> int:
    """Kept visual tokens for a keep ratio: floor(keep * N), at least 1 (576 -> 57/144/288).

    The small epsilon keeps products that are integers in exact arithmetic (0.29 * 100) from
    being floored one below by binary rounding.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    return max(1, min(n_visual, math.floor(keep * n_visual + 1e-9)))


@dataclass
class PruneContext:
    """Everything a pruner may read at one pruning stage, for a batch of B samples.

    ``visual_cols[b]`` are the columns of ``hidden`` holding sample b's current visual tokens
    (in sequence order) and ``grid_index[b]`` their row-major index in the original token grid,
    so grid-aware pruners (ALTP, pooling) keep working after an earlier stage removed tokens.
    ``select`` returns indices into these n current visual tokens, not sequence columns.
    """

    layer: int
    stage: int
    budget: int
    hidden: torch.Tensor  # [B, T, d] input of `layer`
    visual_cols: torch.Tensor  # [B, n] long
    grid_index: torch.Tensor  # [B, n] long, in [0, grid_h * grid_w)
    grid: tuple[int, int]
    images: list[np.ndarray] | None = None  # per sample HxWx3 float in [0, 1], as the encoder saw it
    prepared: list | None = None  # per sample the pruner's own prepare() state, or None
    seed: int = 0
    positions: torch.Tensor | None = None  # [B, T] position ids of the columns of `hidden`
    final_norm: Callable[[torch.Tensor], torch.Tensor] | None = None  # the LLM's last norm (model.norm)
    _importance: Callable[[str], torch.Tensor] | None = field(default=None, repr=False)
    _keys: Callable[[], torch.Tensor] | None = field(default=None, repr=False)
    _prev_keys: Callable[[], torch.Tensor] | None = field(default=None, repr=False)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def batch_size(self) -> int:
        return self.visual_cols.shape[0]

    @property
    def n_visual(self) -> int:
        return self.visual_cols.shape[1]

    def importance(self, signal: str = "attn_prev") -> torch.Tensor:
        """[B, n] last-prompt-token attention over the current visual tokens (mean over heads).

        ``attn_prev``: the attention row of layer ``layer - 1`` on its own input (FastV);
        ``attn_next``: layer ``layer``'s q/k applied to the current hidden states (PyramidDrop).
        Computed once per signal and stage, from q/k projections only (no attention matrix).
        """
        if signal not in IMPORTANCE_SIGNALS:
            raise ValueError(f"importance signal must be one of {IMPORTANCE_SIGNALS}, got {signal!r}")
        if signal not in self._cache:
            self._cache[signal] = self._importance(signal)
        return self._cache[signal]

    def keys(self) -> torch.Tensor:
        """[B, n, kv_heads * head_dim] post-RoPE keys of the current visual tokens at ``layer``."""
        if "keys" not in self._cache:
            self._cache["keys"] = self._keys()
        return self._cache["keys"]

    def prev_keys(self) -> torch.Tensor:
        """[B, T, kv_heads * head_dim] post-RoPE keys of layer ``layer - 1`` on its own input, for
        every column of ``hidden`` (text and visual): what that layer's KV cache holds (DART)."""
        if "prev_keys" not in self._cache:
            self._cache["prev_keys"] = self._prev_keys()
        return self._cache["prev_keys"]

    def visual_hidden(self) -> torch.Tensor:
        """[B, n, d] hidden states of the current visual tokens."""
        index = self.visual_cols.unsqueeze(-1).expand(-1, -1, self.hidden.shape[-1])
        return self.hidden.gather(1, index)


class Pruner:
    """Base class: one stage at ``layer``. Subclasses set ``name`` and implement ``select``."""

    name = ""
    uses_image = False  # select reads ctx.images

    def __init__(self, keep: float = 1.0, layer: int = 2, position_policy: str = "original",
                 seed: int = 0):
        if position_policy not in POSITION_POLICIES:
            raise ValueError(f"position_policy must be one of {POSITION_POLICIES}, got {position_policy!r}")
        if layer < 0:
            raise ValueError(f"layer must be >= 0, got {layer}")
        visual_budget(keep, 1)  # validates keep
        self.keep = keep
        self.layer = layer
        self.position_policy = position_policy
        self.seed = seed

    @property
    def layers(self) -> tuple[int, ...]:
        return (self.layer,)

    @property
    def uses_keep(self) -> bool:
        """Whether ``keep`` changes which tokens are kept (False: every keep gives the same run)."""
        return True

    def stage_budgets(self, n_visual: int) -> list[int]:
        """Visual tokens kept after each stage in ``layers`` (single stage: floor(keep * N))."""
        return [visual_budget(self.keep, n_visual) for _ in self.layers]

    def select(self, ctx: PruneContext) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement select()")

    def prepare(self, image: np.ndarray, grid: tuple[int, int]):
        """Image-only work for one sample (HxWx3 float in [0, 1] as the encoder saw it, its token
        grid), run ahead of the model; the result arrives as ``ctx.prepared[b]``. None: no such work."""
        return None

    @property
    def prepares_images(self) -> bool:
        """Whether ``prepare`` does anything (a subclass overrides it): the pipeline skips the
        model's encoder view of the image otherwise."""
        return type(self).prepare is not Pruner.prepare

    def describe(self) -> dict:
        """What goes into metrics.json: the settings that change which tokens are kept."""
        return {"layers": list(self.layers), "position_policy": self.position_policy}


def build_pruner(node) -> Pruner:
    """The pruner a config node describes (``configs/pruner/<name>.yaml`` as composed): Hydra's
    ``instantiate`` without the node's ``name``, which names the preset (and the run), not a
    constructor argument."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    fields = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    fields.pop("name", None)
    return instantiate(fields)


def topk_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores per row, ascending (so kept tokens stay in order).

    Ties are broken towards the lower index, deterministically on every device.
    """
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return order[..., :k].sort(dim=-1).values


class NoPruning(Pruner):
    """The ``none`` pruner: every layer sees every token (the unpruned upper bound)."""

    name = "none"

    @property
    def layers(self) -> tuple[int, ...]:
        return ()

    @property
    def uses_keep(self) -> bool:
        return False
