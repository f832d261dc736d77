"""Tiny random models shared by the tests: Llamas with embedded batches, and tiny_gcg checkpoints."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from altp.data.synthetic import VOCAB
from altp.engine import EngineInputs
from altp.models.tiny_gcg import TinyGCG, TinyGCGConfig


def tiny_llama(layers: int = 4, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
               vocab: int = 97, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, max_position_embeddings=2048,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config).eval().float()


def embedded_batch(model, prefix_lens, suffix_len=5, grid=(4, 4), seed=0) -> EngineInputs:
    """Left-padded batch: [text prefix][grid visual tokens][text suffix] per sample.

    Visual tokens are random vectors (as a projector would give); text tokens are embedded ids.
    """
    gen = torch.Generator().manual_seed(seed)
    n_visual = grid[0] * grid[1]
    d = model.config.hidden_size
    rows, starts = [], []
    for prefix in prefix_lens:
        ids = torch.randint(0, model.config.vocab_size, (prefix + suffix_len,), generator=gen)
        text = model.model.embed_tokens(ids)
        visual = torch.randn(n_visual, d, generator=gen) * 0.05
        rows.append(torch.cat([text[:prefix], visual, text[prefix:]]))
        starts.append(prefix)
    width = max(r.shape[0] for r in rows)
    embeds = torch.zeros(len(rows), width, d)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        pad = width - row.shape[0]
        embeds[b, pad:] = row
        mask[b, pad:] = 1
        starts[b] += pad
    return EngineInputs(inputs_embeds=embeds.detach(), attention_mask=mask,
                        visual_start=torch.tensor(starts), n_visual=n_visual, grid=grid)


def save_random_tiny_gcg(directory, seed: int = 0):
    """A randomly initialised tiny_gcg saved to ``directory``: for plumbing tests, not scores."""
    torch.manual_seed(seed)
    TinyGCG(TinyGCGConfig(vocab=list(VOCAB))).eval().save(directory)
    return directory
