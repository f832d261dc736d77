"""The engine's correctness anchors (altp/engine.py, "Semantics").

* keep = 1.0 reproduces the unpruned model (transformers' own forward, no cache) exactly;
* dropping tokens equals a slow reference that keeps every token but masks the pruned key
  columns in layers >= K, with the positions the policy prescribes, in prefill and decode;
* a left-padded batch equals single-sample runs;
* the recomputed last-token attention equals the eager attention matrix's row;
* ``prev_keys`` are what transformers' own KV cache of layer K-1 holds, for every column.
"""

import pytest
import torch
from llama_fixtures import embedded_batch, tiny_llama

from altp.engine import EngineInputs, PruningEngine
from altp.pruning import NoPruning, PruneContext, Pruner, topk_sorted, visual_budget

STEPS = 20


class TopAttention(Pruner):
    """Test pruner: top-k by one importance signal at a single layer."""

    name = "top_attention"

    def __init__(self, signal="attn_prev", **kwargs):
        super().__init__(**kwargs)
        self.signal = signal

    def select(self, ctx: PruneContext) -> torch.Tensor:
        return topk_sorted(ctx.importance(self.signal), ctx.budget)


class TwoStages(TopAttention):
    """Test pruner: PDrop-like, halving the visual tokens at two layers."""

    name = "two_stages"

    @property
    def layers(self):
        return (1, 3)

    def stage_budgets(self, n_visual):
        return [n_visual // 2, n_visual // 4]


def reference_logits(model, inputs: EngineInputs, generated, stages, policy):
    """Full-sequence recompute (no cache) of prompt + generated tokens, single sample.

    ``stages``: (layer, kept grid indices) per pruning stage. From each stage's layer on, no
    token attends to visual columns pruned so far; positions there follow the policy: original
    ids, or ranks among the surviving tokens (renumber).
    """
    embeds = torch.cat([inputs.inputs_embeds[0], model.model.embed_tokens(generated[:-1])])[None]
    n = embeds.shape[1]
    start = int(inputs.visual_start[0])
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    eye = torch.eye(n, dtype=torch.bool)
    survives = torch.ones(n, dtype=torch.bool)
    starts = {layer: kept for layer, kept in stages}
    hidden = embeds
    for idx, block in enumerate(model.model.layers):
        if idx in starts:
            survives = survives.clone()
            survives[start:start + inputs.n_visual] = False
            survives[start + starts[idx]] = True
        mask = ((causal & survives[None, :]) | eye)[None, None]
        pos = torch.arange(n) if policy == "original" else survives.long().cumsum(0) - 1
        hidden = block(hidden, attention_mask=mask, position_embeddings=model.model.rotary_emb(hidden, pos[None]))
    return model.lm_head(model.model.norm(hidden))[0], survives


def test_keep_one_reproduces_unpruned_model():
    model = tiny_llama()
    inputs = embedded_batch(model, [3])
    for pruner in (NoPruning(), TopAttention(keep=1.0, layer=2)):
        out = PruningEngine(model, pruner).generate(inputs, STEPS, return_logits=True)
        assert out.tokens.shape[1] == STEPS
        embeds = torch.cat([inputs.inputs_embeds[0], model.model.embed_tokens(out.tokens[0, :-1])])
        with torch.no_grad():
            expected = model(inputs_embeds=embeds[None]).logits[0]
        prompt = inputs.inputs_embeds.shape[1]
        torch.testing.assert_close(out.prefill_logits[0], expected[:prompt], atol=1e-5, rtol=0)
        torch.testing.assert_close(out.logits[0], expected[prompt - 1:], atol=1e-5, rtol=0)
        assert out.visual_per_layer == [16] * 4 and out.kept_grid_index == []
        # hidden[:, t] is the final-norm state of the position that produced token t ([SEG] rule)
        with torch.no_grad():
            states = model.model(inputs_embeds=embeds[None]).last_hidden_state[0]
        torch.testing.assert_close(out.hidden[0], states[prompt - 1:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("policy", ["original", "renumber"])
@pytest.mark.parametrize("layer,signal", [(2, "attn_prev"), (1, "attn_next"), (0, "attn_next")])
def test_dropping_equals_masked_reference(policy, layer, signal):
    model = tiny_llama()
    inputs = embedded_batch(model, [4], grid=(4, 4))
    pruner = TopAttention(signal=signal, keep=0.25, layer=layer, position_policy=policy)
    out = PruningEngine(model, pruner).generate(inputs, STEPS, return_logits=True)
    kept = out.kept_grid_index[0][0]
    assert kept.numel() == visual_budget(0.25, 16) == 4
    with torch.no_grad():
        expected, survives = reference_logits(model, inputs, out.tokens[0], [(layer, kept)], policy)
    prompt = inputs.inputs_embeds.shape[1]
    torch.testing.assert_close(out.logits[0], expected[prompt - 1:], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.prefill_logits[0], expected[:prompt][survives[:prompt]],
                               atol=1e-5, rtol=0)
    assert out.visual_per_layer == [16] * layer + [4] * (4 - layer)


@pytest.mark.parametrize("policy", ["original", "renumber"])
@pytest.mark.parametrize("signal", ["attn_prev", "attn_next"])
def test_two_stages_equal_masked_reference(policy, signal):
    """PDrop-shaped: per-stage decode positions, attn_prev read through an already pruned stage."""
    model = tiny_llama()
    inputs = embedded_batch(model, [4], grid=(4, 4))
    out = PruningEngine(model, TwoStages(signal=signal, position_policy=policy)).generate(
        inputs, STEPS, return_logits=True)
    first, second = out.kept_grid_index[0][0], out.kept_grid_index[1][0]
    assert (first.numel(), second.numel()) == (8, 4) and set(second.tolist()) <= set(first.tolist())
    assert out.visual_per_layer == [16, 8, 8, 4]
    with torch.no_grad():
        expected, _ = reference_logits(model, inputs, out.tokens[0], [(1, first), (3, second)], policy)
    prompt = inputs.inputs_embeds.shape[1]
    torch.testing.assert_close(out.logits[0], expected[prompt - 1:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("policy", ["original", "renumber"])
def test_batch_equals_single_runs(policy):
    model = tiny_llama()
    prefixes = [2, 6, 3, 9]
    batch = embedded_batch(model, prefixes, seed=1)
    pruner = TopAttention(keep=0.25, layer=2, position_policy=policy)
    together = PruningEngine(model, pruner).generate(batch, STEPS, return_logits=True)
    for b in range(len(prefixes)):
        pad = int((batch.attention_mask[b] == 0).sum())
        single = EngineInputs(batch.inputs_embeds[b:b + 1, pad:], batch.attention_mask[b:b + 1, pad:],
                              batch.visual_start[b:b + 1] - pad, batch.n_visual, batch.grid)
        alone = PruningEngine(model, pruner).generate(single, STEPS, return_logits=True)
        assert torch.equal(together.tokens[b], alone.tokens[0])
        assert torch.equal(together.kept_grid_index[0][b], alone.kept_grid_index[0][0])
        torch.testing.assert_close(together.logits[b], alone.logits[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(together.hidden[b], alone.hidden[0], atol=1e-5, rtol=0)


def test_eos_stops_generation_per_sample():
    model = tiny_llama()
    batch = embedded_batch(model, [2, 5])
    free = PruningEngine(model).generate(batch, 8)
    eos = int(free.tokens[0, 2])  # pretend sample 0's third token is EOS
    out = PruningEngine(model).generate(batch, 8, eos_token_id=eos)
    for b in range(2):
        hits = (free.tokens[b] == eos).nonzero()
        expected = int(hits[0]) + 1 if len(hits) else 8
        assert out.lengths[b] == expected
        assert torch.equal(out.tokens[b, :expected], free.tokens[b, :expected])
        assert bool((out.tokens[b, expected - 1:] == eos).all()) or expected == 8


def test_recomputed_attention_matches_eager_row():
    sdpa = tiny_llama()
    eager = tiny_llama()
    eager.config._attn_implementation = "eager"
    inputs = embedded_batch(sdpa, [3])
    seen = {}

    class Recorder(TopAttention):
        def select(self, ctx):
            seen["prev"], seen["next"] = ctx.importance("attn_prev"), ctx.importance("attn_next")
            seen["cols"] = ctx.visual_cols
            return super().select(ctx)

    PruningEngine(sdpa, Recorder(keep=0.5, layer=2)).generate(inputs, 1)
    with torch.no_grad():
        attentions = eager(inputs_embeds=inputs.inputs_embeds, output_attentions=True).attentions
    cols = seen["cols"][0]
    for key, layer in (("prev", 1), ("next", 2)):
        row = attentions[layer][0, :, -1].mean(0)
        torch.testing.assert_close(seen[key][0], row[cols], atol=1e-6, rtol=1e-5)


def test_previous_layer_keys_are_transformers_cache():
    model = tiny_llama()
    batch = embedded_batch(model, [2, 5], grid=(4, 4))
    seen = {}

    class Recorder(TopAttention):
        def select(self, ctx):
            seen["keys"], seen["positions"], seen["norm"] = ctx.prev_keys(), ctx.positions, ctx.final_norm
            return super().select(ctx)

    PruningEngine(model, Recorder(keep=0.5, layer=2)).generate(batch, 1)
    assert seen["norm"] is model.model.norm
    for b in range(2):
        valid = batch.attention_mask[b].bool()
        with torch.no_grad():
            cache = model(inputs_embeds=batch.inputs_embeds[b:b + 1, valid], use_cache=True).past_key_values
        expected = cache.layers[1].keys[0].transpose(0, 1).flatten(1)  # layer K-1 = 1: [T, kv * hd]
        torch.testing.assert_close(seen["keys"][b, valid], expected, atol=1e-6, rtol=1e-5)
        assert seen["positions"][b, valid].tolist() == list(range(int(valid.sum())))


def test_bad_pruners_are_refused():
    model = tiny_llama()
    with pytest.raises(ValueError, match="out of range"):
        PruningEngine(model, TopAttention(keep=0.5, layer=9))

    class Greedy(Pruner):
        name = "greedy"

        def select(self, ctx):
            return torch.arange(ctx.budget + 1).expand(ctx.batch_size, -1)

    with pytest.raises(RuntimeError, match="expected"):
        PruningEngine(model, Greedy(keep=0.5)).generate(embedded_batch(model, [2]), 1)
    with pytest.raises(ValueError, match="attn_prev"):
        PruningEngine(model, TopAttention(keep=0.5, layer=0)).generate(embedded_batch(model, [2]), 1)


@pytest.mark.parametrize("keep,n,expected", [(0.1, 576, 57), (0.25, 576, 144), (0.5, 576, 288),
                                             (0.1, 256, 25), (0.25, 256, 64), (1.0, 576, 576),
                                             (0.001, 576, 1), (0.29, 100, 29)])
def test_visual_budget(keep, n, expected):
    assert visual_budget(keep, n) == expected


@pytest.mark.parametrize("keep", [0.0, -0.1, 1.5])
def test_visual_budget_rejects_bad_keep(keep):
    with pytest.raises(ValueError, match="keep"):
        visual_budget(keep, 576)
