"""Random selection: the sanity baseline every pruning method must beat.

Reference: FastV's mask path with K=0 (pkunlp-icler/FastV@d165972, ``modeling_llama.py``) and
LightCompress's ``RandomPrune`` (ModelTC/LightCompress@9701d035, ``llmc/compression/
token_reduction/random.py``); docs/upstream/pruning_methods.md §4.9. Uniformly random ``budget``
visual tokens, original positions, at layer 2 by default so its FLOPs equal FastV's (``layer: 0``
prunes before the LLM).

Where we differ: the draw depends on ``seed`` only, so every sample keeps the same random subset
of grid positions (for a given seed, token count and budget). That makes a sample's kept set
independent of its batch and of its batch position, and runs reproducible on any device; vary
``seed`` to average over random subsets. (Seeding from the sample's content instead would tie the
draw to floating-point values that differ in the last bits between batched and single runs.)
"""

from __future__ import annotations

import torch

from altp.pruning import PruneContext, Pruner


class RandomKeep(Pruner):
    name = "random"

    def select(self, ctx: PruneContext) -> torch.Tensor:
        # a CPU generator: the same permutation on every device
        generator = torch.Generator().manual_seed(ctx.seed)
        chosen = torch.randperm(ctx.n_visual, generator=generator)[:ctx.budget].sort().values
        return chosen.to(ctx.visual_cols.device).expand(ctx.batch_size, -1)

    def describe(self) -> dict:
        return super().describe() | {"seed": self.seed}
