"""DivPrune: keep a maximally diverse subset of the projected visual tokens (max-min diversity).

Reference: vbdi/divprune@799e2d9, ``LLaVA/llava/model/llava_arch.py`` (``DivPrune``, applied in
``prepare_inputs_labels_for_multimodal`` with ``LAYER_INDEX=0``); docs/upstream/pruning_methods.md
§4.4. On the projected visual tokens (the LLM's input embeddings, our layer 0), with cosine
distances 1 - cos(x_i, x_j): the first token is the one whose nearest neighbour (itself
excluded) is farthest; then, greedily, the token whose minimum distance to the selected set is
largest, until the budget is reached. Text-agnostic.

Where we differ:

* the budget is floor(keep * N) like every pruner here; the reference keeps round(ratio * N);
* selected tokens are excluded explicitly; the reference relies on their zero self-distance,
  which re-picks a token when all remaining candidates are exact duplicates of selected ones;
* batched over samples (the reference handles batch element 0 only);
* positions: the reference builds the shortened sequence before the LLM, so positions come out
  contiguous -- ``renumber`` is our default for that reason, ``original`` is available. Kept
  tokens stay in raster order (the engine keeps sequence order whatever the selection order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from altp.pruning import PruneContext, Pruner


def max_min_diverse(features: torch.Tensor, k: int) -> torch.Tensor:
    """[B, k] indices (ascending) chosen greedily by max-min cosine distance from [B, n, d]."""
    unit = F.normalize(features.float(), dim=-1)
    distance = 1.0 - unit @ unit.transpose(1, 2)  # [B, n, n]
    batch, n = distance.shape[:2]
    eye = torch.eye(n, dtype=torch.bool, device=distance.device)
    nearest = distance.masked_fill(eye, float("inf")).min(dim=2).values  # nearest-neighbour distance
    chosen = nearest.argmax(dim=1)
    selected = [chosen]
    taken = torch.zeros(batch, n, dtype=torch.bool, device=distance.device)
    rows = torch.arange(batch, device=distance.device)
    to_set = distance[rows, chosen]  # [B, n] minimum distance to the selected set
    for _ in range(k - 1):
        taken[rows, chosen] = True
        chosen = to_set.masked_fill(taken, float("-inf")).argmax(dim=1)
        selected.append(chosen)
        to_set = torch.minimum(to_set, distance[rows, chosen])
    return torch.stack(selected, dim=1).sort(dim=1).values


class DivPrune(Pruner):
    name = "divprune"

    def __init__(self, keep: float = 1.0, layer: int = 0, position_policy: str = "renumber",
                 seed: int = 0):
        super().__init__(keep=keep, layer=layer, position_policy=position_policy, seed=seed)

    def select(self, ctx: PruneContext) -> torch.Tensor:
        return max_min_diverse(ctx.visual_hidden(), ctx.budget)
