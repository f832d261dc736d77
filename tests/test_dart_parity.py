"""DART against the authors' code (ZichenWen1/DART@5a19452), from a recorded fixture.

``tests/fixtures/parity/dart/`` was written by ``scripts/parity/dart_upstream.py``, which ran
upstream's ``modeling_llama_self.py`` under transformers 4.37.2 on a small random Llama (35 system
+ 576 visual + 20 instruction tokens, fp32): its weights, its input, and per setting (K = 2 or 3;
image pivots only or 4 + 4 as the authors' scripts; --max_num_trunction 64 / 100 / 288) the
visual tokens upstream kept and the logits of 8 greedy steps. Our engine with ``dart`` at the
upstream-equivalent budget (keep = n_kept / 576) must keep the same set and reproduce the logits;
each of the differences our first DART had must make that check fail.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from altp.engine import EngineInputs, PruningEngine, rotary_keys
from baselines.dart import DART

FIXTURE = Path(__file__).parent / "fixtures" / "parity" / "dart"
TOLERANCE = 1e-4  # fp32 logits


@pytest.fixture(scope="module")
def upstream():
    meta = json.loads((FIXTURE / "upstream.json").read_text())
    tensors = torch.load(FIXTURE / "tensors.pt", weights_only=True)
    config = LlamaConfig(**tensors["config"], attn_implementation="sdpa")
    model = LlamaForCausalLM(config).eval().float()
    model.load_state_dict(tensors["state_dict"])
    prompt = meta["prompt"]
    inputs = EngineInputs(inputs_embeds=tensors["inputs_embeds"],
                          attention_mask=torch.ones(tensors["inputs_embeds"].shape[:2], dtype=torch.long),
                          visual_start=torch.tensor([prompt["system"]]), n_visual=prompt["visual"],
                          grid=(24, 24))
    return SimpleNamespace(meta=meta, logits=tensors["logits"], model=model, inputs=inputs)


def mismatches(upstream, make_pruner) -> list[str]:
    """Every setting where our kept set, greedy tokens or logits differ from upstream's."""
    problems = []
    for i, setting in enumerate(upstream.meta["settings"]):
        pruner = make_pruner(keep=setting["n_kept"] / upstream.meta["prompt"]["visual"],
                             layer=setting["K"], n_pivots=setting["pivot_image_token"],
                             n_text_pivots=setting["pivot_text_token"])
        out = PruningEngine(upstream.model, pruner).generate(upstream.inputs, upstream.meta["steps"],
                                                             return_logits=True)
        name = f"K={setting['K']} text={setting['pivot_text_token']} M={setting['max_num_trunction']}"
        kept = out.kept_grid_index[0][0].tolist()
        if kept != setting["kept"]:
            same = len(set(kept) & set(setting["kept"])) / len(set(kept) | set(setting["kept"]))
            problems.append(f"{name}: kept set differs (Jaccard {same:.3f})")
            continue
        diff = float((out.logits[0] - upstream.logits[i]).abs().max())
        if diff > TOLERANCE or out.tokens[0].tolist() != setting["greedy_tokens"]:
            problems.append(f"{name}: logits differ by {diff:.2e}")
    return problems


def test_fixture_is_upstreams_and_small(upstream):
    meta = upstream.meta
    assert meta["upstream"] == "ZichenWen1/DART" and meta["commit"].startswith("5a19452")
    assert meta["transformers"] == "4.37.2" and meta["dtype"] == "float32"
    settings = {(s["K"], s["pivot_text_token"]) for s in meta["settings"]}
    assert settings == {(2, 0), (2, 4), (3, 0), (3, 4)}
    for s in meta["settings"]:  # upstream keeps 4 + P * (M // P) (modeling_llama_self.py L409)
        pivots = s["pivot_image_token"] + s["pivot_text_token"]
        assert s["n_kept"] == len(s["kept"]) == 4 + pivots * (s["max_num_trunction"] // pivots)
    assert sum(p.stat().st_size for p in FIXTURE.iterdir()) < 2 * 2**20


def test_dart_keeps_upstreams_tokens_and_logits(upstream):
    assert mismatches(upstream, DART) == []


class LayerKKeys(DART):
    """Broken: pivots ranked by layer K's keys on its input instead of layer K-1's."""

    model = None

    def pivot_keys(self, ctx):
        stage = SimpleNamespace(positions=ctx.positions)
        return rotary_keys(self.model.model.layers[ctx.layer], ctx.hidden, stage,
                           self.model.model.rotary_emb)


class PlainCosine(DART):
    """Broken: cosine on the raw hidden states (L2 only), without the final RMSNorm's gain."""

    def features(self, ctx):
        return ctx.hidden


class TokenOrder(DART):
    """Broken: pivots in sequence order instead of upstream's set order."""

    @staticmethod
    def pivot_order(image_ids, text_ids):
        return sorted(image_ids + text_ids)


class NoTextPivots(DART):
    """Broken: image pivots only, whatever the setting asks."""

    def __init__(self, n_text_pivots=4, **kwargs):
        super().__init__(n_text_pivots=0, **kwargs)


class Renumbered(DART):
    """Broken after the selection: the same kept set with contiguous positions (upstream keeps the
    original ones, L359), so only the logits can catch it."""

    def __init__(self, **kwargs):
        super().__init__(position_policy="renumber", **kwargs)


@pytest.mark.parametrize("variant", [LayerKKeys, PlainCosine, TokenOrder, NoTextPivots])
def test_parity_check_catches_each_old_difference(upstream, variant):
    variant.model = upstream.model
    assert mismatches(upstream, variant)  # at least one setting fails


def test_parity_check_catches_logits_alone(upstream):
    problems = mismatches(upstream, Renumbered)
    assert len(problems) == len(upstream.meta["settings"])
    assert all("logits differ" in p for p in problems)


def test_budget_off_the_upstream_grid_keeps_exactly_floor_and_contains_upstreams(upstream):
    # M = 100 with 8 pivots: upstream keeps 4 + 96 = 100; a budget of 107 = 4 + 96 + 7 fills
    # 7 more, one for each of the first 7 pivots, after upstream's pass
    setting = next(s for s in upstream.meta["settings"]
                   if s["K"] == 2 and s["pivot_text_token"] == 4 and s["max_num_trunction"] == 100)
    pruner = DART(keep=107 / 576, layer=2)
    kept = PruningEngine(upstream.model, pruner).generate(upstream.inputs, 1).kept_grid_index[0][0]
    assert kept.numel() == 107 and set(setting["kept"]) <= set(kept.tolist())
    assert pruner.describe()["budget_split"] == {
        107: {"image_pivots": 4, "text_pivots": 4, "per_pivot": 12, "filled": 7}}
