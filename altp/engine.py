"""Pruned prefill + KV-cached greedy decoding over transformers' Llama decoder layers.

The engine calls the decoder layers of a ``LlamaForCausalLM``-shaped model itself (``model.model
.layers``, ``.norm``, ``.rotary_emb``, ``.embed_tokens``, ``.lm_head``), so it controls, per
pruning stage, which tokens exist, their position ids, the attention mask and each layer's KV
cache. Every layer keeps SDPA: importance is recomputed from q/k projections (one query row),
never read from an attention matrix.

Semantics:

* a pruner acting at layer K replaces the hidden states entering layer K by the kept subset;
  layers < K saw every token, layers >= K see the kept ones (K = 0: before the LLM);
* pruning happens once, in prefill; each layer's cache holds exactly what that layer saw, and
  decoding attends to it;
* ``original`` positions keep each token's position id (gaps) and decode continues from the
  unpruned prompt length; ``renumber`` makes positions contiguous per stage and decode continues
  from that stage's length (PyramidDrop);
* batches are left-padded; every sample keeps the same number of visual tokens (its own set),
  so the pruned batch stays rectangular and outputs equal batch-size-1 runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from altp.pruning import NoPruning, PruneContext, Pruner


@dataclass
class EngineInputs:
    """One batch, already embedded: text embeddings with the visual tokens spliced in."""

    inputs_embeds: torch.Tensor  # [B, T, d]
    attention_mask: torch.Tensor  # [B, T], 1 = token, 0 = left padding
    visual_start: torch.Tensor  # [B] column of each sample's first visual token
    n_visual: int  # visual tokens per sample (the same for every sample)
    grid: tuple[int, int]  # token grid (rows, cols), rows * cols == n_visual
    images: list[np.ndarray] | None = None  # per sample HxWx3 float [0, 1], as the encoder saw it
    prepared: list | None = None  # per sample the pruner's prepare() state (altp.pipeline), or None

    def __post_init__(self):
        if self.grid[0] * self.grid[1] != self.n_visual:
            raise ValueError(f"grid {self.grid} does not hold {self.n_visual} visual tokens")


@dataclass
class GenerationOutput:
    tokens: torch.Tensor  # [B, S] generated ids; after a sample's EOS, filled with (the first) EOS
    lengths: list[int]  # generated tokens per sample, EOS included
    hidden: torch.Tensor  # [B, S, d] final-norm hidden state of the position that produced tokens[:, t]
    logits: torch.Tensor | None  # [B, S, V] when requested: the logits that produced tokens[:, t]
    prefill_logits: torch.Tensor | None  # [B, T', V] when requested (T' = tokens of the last layer)
    visual_per_layer: list[int]  # visual tokens each layer saw in prefill (sample 0)
    tokens_per_layer: list[int]  # all non-padding tokens each layer saw in prefill (sample 0)
    kept_grid_index: list[torch.Tensor]  # per stage [B, budget] grid indices of the kept tokens
    timing: dict = field(default_factory=dict)  # seconds: pruner, prefill, decode; decode_steps


@dataclass
class _Stage:
    """The token set some layers run on: original columns, padding, visual flags, positions."""

    token_index: torch.Tensor  # [B, T_s] column in the unpruned input
    valid: torch.Tensor  # [B, T_s] bool, False = left padding
    is_visual: torch.Tensor  # [B, T_s] bool
    positions: torch.Tensor  # [B, T_s] position ids
    next_position: torch.Tensor  # [B] position id of the first generated token at these layers

    def prefill_mask(self) -> torch.Tensor | None:
        """None lets SDPA use its causal kernel; with padding: causal & valid keys, plus the
        diagonal so padding rows attend to themselves instead of producing NaNs."""
        if bool(self.valid.all()):
            return None
        n = self.valid.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=self.valid.device).tril()
        eye = torch.eye(n, dtype=torch.bool, device=self.valid.device)
        return ((causal & self.valid[:, None, :]) | eye)[:, None]

    def decode_mask(self, n_generated: int) -> torch.Tensor | None:
        if bool(self.valid.all()):
            return None
        generated = self.valid.new_ones(self.valid.shape[0], n_generated)
        return torch.cat([self.valid, generated], dim=1)[:, None, None, :]

    def visual_cols(self) -> torch.Tensor:
        batch = self.is_visual.shape[0]
        return self.is_visual.nonzero(as_tuple=True)[1].view(batch, -1)


class _LayerKVCache:
    """Per-layer K/V buffers sized prefill + max_new_tokens on first use.

    Layers see different prefill lengths once tokens are pruned, so each layer allocates its
    own buffer; ``update`` is the only method transformers' attention calls.
    """

    def __init__(self, n_layers: int, max_new_tokens: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.length = [0] * n_layers
        self.extra = max_new_tokens

    def update(self, key, value, layer_idx, *args, **kwargs):
        start, n = self.length[layer_idx], key.shape[2]
        if self.keys[layer_idx] is None:
            b, h, _, d = key.shape
            self.keys[layer_idx] = key.new_empty(b, h, n + self.extra, d)
            self.values[layer_idx] = value.new_empty(b, h, n + self.extra, value.shape[-1])
        self.keys[layer_idx][:, :, start:start + n] = key
        self.values[layer_idx][:, :, start:start + n] = value
        self.length[layer_idx] = start + n
        end = start + n
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]


class Clock:
    """perf_counter that first waits for queued CUDA work, so stages are timed truthfully."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def last_token_attention(layer, hidden: torch.Tensor, stage: _Stage, rotary) -> torch.Tensor:
    """[B, T_s] attention row of the last prompt token in ``layer`` on input ``hidden``,
    averaged over heads: softmax(q_last k^T / sqrt(d)) over every valid (earlier) key, in fp32.

    The same q/k projections, RoPE and scaling as the layer's own attention, for one query.
    """
    attn = layer.self_attn
    batch, length, _ = hidden.shape
    x = layer.input_layernorm(hidden)
    query = attn.q_proj(x[:, -1:]).view(batch, 1, -1, attn.head_dim).transpose(1, 2)
    key = attn.k_proj(x).view(batch, length, -1, attn.head_dim).transpose(1, 2)
    cos, sin = rotary(x, stage.positions)
    query, _ = apply_rotary_pos_emb(query, query, cos[:, -1:], sin[:, -1:])
    _, key = apply_rotary_pos_emb(key, key, cos, sin)
    key = repeat_kv(key, attn.num_key_value_groups)
    scores = (query.float() @ key.float().transpose(-1, -2)).squeeze(2) * attn.scaling
    scores = scores.masked_fill(~stage.valid[:, None, :], float("-inf"))
    return scores.softmax(dim=-1).mean(dim=1)


def rotary_keys(layer, hidden: torch.Tensor, stage: _Stage, rotary) -> torch.Tensor:
    """[B, T_s, kv_heads * head_dim] post-RoPE keys of ``layer`` for input ``hidden``."""
    attn = layer.self_attn
    batch, length, _ = hidden.shape
    x = layer.input_layernorm(hidden)
    key = attn.k_proj(x).view(batch, length, -1, attn.head_dim).transpose(1, 2)
    cos, sin = rotary(x, stage.positions)
    _, key = apply_rotary_pos_emb(key, key, cos, sin)
    return key.transpose(1, 2).reshape(batch, length, -1)


class PruningEngine:
    """Runs a Llama-family causal LM with a pruner in prefill, then greedy cached decoding."""

    def __init__(self, model, pruner: Pruner | None = None):
        self.model = model
        self.decoder = model.model
        self.layers = list(self.decoder.layers)
        self.pruner = pruner or NoPruning()
        bad = [k for k in self.pruner.layers if k >= len(self.layers)]
        if bad:
            raise ValueError(f"pruner layer(s) {bad} out of range: the LLM has {len(self.layers)} layers")

    # --- prefill -------------------------------------------------------------------------
    def _initial_stage(self, inputs: EngineInputs) -> _Stage:
        valid = inputs.attention_mask.bool()
        batch, length = valid.shape
        columns = torch.arange(length, device=valid.device).expand(batch, length)
        start = inputs.visual_start.to(valid.device)[:, None]
        is_visual = (columns >= start) & (columns < start + inputs.n_visual)
        if not bool((is_visual & valid).sum(1).eq(inputs.n_visual).all()):
            raise ValueError("visual span reaches into padding or past the sequence end")
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        return _Stage(columns, valid, is_visual, positions, valid.sum(-1))

    def _context(self, layer_idx, stage_number, budget, hidden, stage, previous, inputs):
        """The PruneContext for one stage, with lazily computed importance and keys."""
        visual_cols = stage.visual_cols()
        grid_index = stage.token_index.gather(1, visual_cols) - inputs.visual_start.to(hidden.device)[:, None]
        rotary = self.decoder.rotary_emb
        full_width = inputs.inputs_embeds.shape[1]

        def importance(signal: str) -> torch.Tensor:
            if signal == "attn_prev":
                if previous is None:
                    raise ValueError("importance 'attn_prev' needs a pruning layer >= 1 "
                                     "(it reads the attention of the layer before)")
                prev_layer, prev_hidden, prev_stage = previous
                row = last_token_attention(prev_layer, prev_hidden, prev_stage, rotary)
                # map the previous stage's columns onto the current ones through original indices
                full = row.new_zeros(row.shape[0], full_width).scatter(1, prev_stage.token_index, row)
                return full.gather(1, stage.token_index.gather(1, visual_cols))
            row = last_token_attention(self.layers[layer_idx], hidden, stage, rotary)
            return row.gather(1, visual_cols)

        def keys() -> torch.Tensor:
            k = rotary_keys(self.layers[layer_idx], hidden, stage, rotary)
            return k.gather(1, visual_cols.unsqueeze(-1).expand(-1, -1, k.shape[-1]))

        def prev_keys() -> torch.Tensor:
            if previous is None:
                raise ValueError("keys of layer K-1 need a pruning layer >= 1")
            prev_layer, prev_hidden, prev_stage = previous
            k = rotary_keys(prev_layer, prev_hidden, prev_stage, rotary)
            full = k.new_zeros(k.shape[0], full_width, k.shape[-1])
            full.scatter_(1, prev_stage.token_index.unsqueeze(-1).expand_as(k), k)
            return full.gather(1, stage.token_index.unsqueeze(-1).expand(-1, -1, k.shape[-1]))

        return PruneContext(layer=layer_idx, stage=stage_number, budget=budget, hidden=hidden,
                            visual_cols=visual_cols, grid_index=grid_index, grid=inputs.grid,
                            images=inputs.images, prepared=inputs.prepared, seed=self.pruner.seed,
                            positions=stage.positions, final_norm=self.decoder.norm, _importance=importance,
                            _keys=keys, _prev_keys=prev_keys)

    def _apply(self, hidden, stage: _Stage, visual_cols, selected) -> tuple[torch.Tensor, _Stage]:
        """Keep every non-visual column plus the selected visual ones, in sequence order."""
        batch = hidden.shape[0]
        keep = ~stage.is_visual
        keep = keep.scatter(1, visual_cols.gather(1, selected), True)
        cols = keep.nonzero(as_tuple=True)[1].view(batch, -1)
        hidden = hidden.gather(1, cols.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        valid = stage.valid.gather(1, cols)
        if self.pruner.position_policy == "renumber":
            positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
            next_position = valid.sum(-1)
        else:
            positions, next_position = stage.positions.gather(1, cols), stage.next_position
        new = _Stage(stage.token_index.gather(1, cols), valid, stage.is_visual.gather(1, cols),
                     positions, next_position)
        return hidden, new

    @staticmethod
    def _check_selection(selected: torch.Tensor, batch: int, budget: int, n_visual: int):
        if selected.shape != (batch, budget):
            raise RuntimeError(f"pruner returned shape {tuple(selected.shape)}, expected ({batch}, {budget})")
        ordered = selected.sort(dim=1).values
        if bool((ordered[:, 1:] == ordered[:, :-1]).any()) or bool((selected < 0).any()) \
                or bool((selected >= n_visual).any()):
            raise RuntimeError("pruner returned duplicate or out-of-range visual indices")

    # --- generation ----------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, inputs: EngineInputs, max_new_tokens: int, eos_token_id: int | list[int] | None = None,
                 return_logits: bool = False) -> GenerationOutput:
        """Pruned prefill, then greedy decoding until every sample produced one of
        ``eos_token_id`` (an id or a list: InternLM2 stops at ``</s>`` and ``<|im_end|>``)."""
        if self.pruner.uses_image and inputs.images is None:
            raise ValueError(f"pruner {self.pruner.name!r} needs the image, but the model gave none")
        clock = Clock(inputs.inputs_embeds.device)
        t0 = clock()
        cache = _LayerKVCache(len(self.layers), max_new_tokens)
        normed, layer_stages, kept, pruner_seconds = self._prefill(inputs, cache, clock)
        prefill_logits = self.model.lm_head(normed) if return_logits else None
        last_hidden = normed[:, -1]
        logits = self.model.lm_head(last_hidden)
        t_prefill = clock()

        batch = normed.shape[0]
        finished = torch.zeros(batch, dtype=torch.bool, device=normed.device)
        lengths = torch.zeros(batch, dtype=torch.long, device=normed.device)
        stop = None if eos_token_id is None else torch.tensor(eos_token_id, device=normed.device).reshape(-1)
        out_tokens, out_hidden, out_logits = [], [], []
        for step in range(max_new_tokens):
            token = logits.argmax(dim=-1)
            if stop is not None:
                token = token.masked_fill(finished, stop[0])
            out_tokens.append(token)
            out_hidden.append(last_hidden)
            if return_logits:
                out_logits.append(logits)
            lengths += ~finished
            if stop is not None:
                finished |= torch.isin(token, stop)
            if step == max_new_tokens - 1 or bool(finished.all()):
                break
            last_hidden, logits = self._decode_step(token, step, layer_stages, cache)
        t_end = clock()

        return GenerationOutput(
            tokens=torch.stack(out_tokens, 1), lengths=lengths.tolist(),
            hidden=torch.stack(out_hidden, 1),
            logits=torch.stack(out_logits, 1) if return_logits else None,
            prefill_logits=prefill_logits,
            visual_per_layer=[int(s.is_visual[0].sum()) for s in layer_stages],
            tokens_per_layer=[int(s.valid[0].sum()) for s in layer_stages],
            kept_grid_index=kept,
            timing={"pruner": pruner_seconds, "prefill": t_prefill - t0, "decode": t_end - t_prefill,
                    "decode_steps": len(out_tokens) - 1},
        )

    def _prefill(self, inputs: EngineInputs, cache: _LayerKVCache, clock: Clock):
        """All layers over the prompt, pruning at the pruner's layers.

        Returns (final-norm hidden states of the last layer's tokens, the stage each layer ran
        on, per-stage kept grid indices, seconds spent in the pruner).
        """
        budgets = dict(zip(self.pruner.layers, self.pruner.stage_budgets(inputs.n_visual)))
        stage = self._initial_stage(inputs)
        hidden, previous = inputs.inputs_embeds, None
        layer_stages, kept, pruner_seconds = [], [], 0.0
        for idx, layer in enumerate(self.layers):
            n_now = int(stage.is_visual[0].sum()) if idx in budgets else 0
            if idx in budgets and budgets[idx] < n_now:
                t_select = clock()
                ctx = self._context(idx, len(kept), budgets[idx], hidden, stage, previous, inputs)
                selected = self.pruner.select(ctx)
                self._check_selection(selected, hidden.shape[0], budgets[idx], n_now)
                kept.append(ctx.grid_index.gather(1, selected))
                hidden, stage = self._apply(hidden, stage, ctx.visual_cols, selected)
                pruner_seconds += clock() - t_select
            previous = (layer, hidden, stage)
            cos_sin = self.decoder.rotary_emb(hidden, stage.positions)
            hidden = layer(hidden, attention_mask=stage.prefill_mask(), position_embeddings=cos_sin,
                           cache=cache, use_cache=True)
            layer_stages.append(stage)
        return self.decoder.norm(hidden), layer_stages, kept, pruner_seconds

    def _decode_step(self, token, step, layer_stages, cache):
        """Run one generated token through every layer; returns (final-norm hidden, logits)."""
        hidden = self.decoder.embed_tokens(token)[:, None]
        per_stage = {}
        for layer, stage in zip(self.layers, layer_stages):
            key = id(stage)
            if key not in per_stage:  # layers of one stage share positions and mask
                positions = (stage.next_position + step)[:, None]
                per_stage[key] = (self.decoder.rotary_emb(hidden, positions), stage.decode_mask(step + 1))
            cos_sin, mask = per_stage[key]
            hidden = layer(hidden, attention_mask=mask, position_embeddings=cos_sin,
                           cache=cache, use_cache=True)
        normed = self.decoder.norm(hidden[:, -1])
        return normed, self.model.lm_head(normed)
