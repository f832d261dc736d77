"""Low-rank adaptation of a tiny_gcg's LLM for a training stage, as GLaMM adapts LLaVA-1.5's.

GLaMM's ``train.py`` wraps every decoder layer's ``q_proj`` and ``v_proj`` with peft's LoRA
(``--lora_r 8 --lora_alpha 16``), keeps the rest of each layer and the V-L projector frozen, and
merges the adapters into the dense weights for release (``scripts/merge_lora_weights.py``).
Here the same, in plain PyTorch: ``W x + (alpha / r) B A x`` with A Kaiming-uniform and B zero
(peft's initialisation, so a stage starts from exactly its source model), added by forward hooks
so that the model's own modules and state-dict keys stay as they are. One deviation: no LoRA
dropout (GLaMM's 0.05), whose draws a resumed run could not replay.
"""

from __future__ import annotations

import copy
import math

import torch

TARGETS = ("q_proj", "v_proj")  # GLaMM's --lora_target_modules


class LoRA(torch.nn.Module):
    """Rank-``rank`` adapters on ``TARGETS`` of every decoder layer of ``model.llm``."""

    def __init__(self, model, rank: int, alpha: float | None = None):
        super().__init__()
        self.scale = (2 * rank if alpha is None else alpha) / rank  # GLaMM: 16 / 8
        self.adapters = torch.nn.ModuleDict()
        self.hooks = []
        for index, layer in enumerate(model.llm.model.layers):
            for name in TARGETS:
                linear = getattr(layer.self_attn, name)
                down = torch.nn.Linear(linear.in_features, rank, bias=False)  # A: Kaiming-uniform (nn default)
                torch.nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
                up = torch.nn.Linear(rank, linear.out_features, bias=False)
                torch.nn.init.zeros_(up.weight)  # B = 0: the adapted layer starts as the base one
                pair = torch.nn.Sequential(down, up).to(linear.weight.device)
                self.adapters[f"{index}_{name}"] = pair
                self.hooks.append(linear.register_forward_hook(
                    lambda module, inputs, output, pair=pair: output + self.scale * pair(inputs[0])))

    def delta(self, key: str) -> torch.Tensor:
        down, up = self.adapters[key]
        return self.scale * up.weight @ down.weight

    def merged(self, model):
        """A copy of ``model`` with every adapter folded into its weight (merge_and_unload) and no
        hooks: what a stage saves and the engine loads."""
        copied = copy.deepcopy(model)
        with torch.no_grad():
            for index, layer in enumerate(copied.llm.model.layers):
                for name in TARGETS:
                    linear = getattr(layer.self_attn, name)
                    linear._forward_hooks.clear()
                    linear.weight += self.delta(f"{index}_{name}").to(linear.weight.dtype)
        return copied


def freeze_for_lora(model) -> None:
    """GLaMM's trainable set under LoRA: the adapters, embed_tokens, lm_head, the mask decoder
    and text_hidden_fcs; the decoder layers (norms included), the final norm, the projector and
    the vision encoder stay frozen."""
    for module in (model.llm.model.layers, model.llm.model.norm, model.projector, model.vision):
        module.requires_grad_(False)
