"""FastV and PyramidDrop against their authors' code (tests/fixtures/parity/llama/).

The fixture was recorded by ``scripts/parity/pruners_upstream.py`` running UPSTREAM code on a
random 8-layer multi-head Llama (fp32): FastV's inplace prefill (pkunlp-icler/FastV@d165972,
transformers 4.31 fork) and PyramidDrop's ``pdrop_forward`` with KV-cached greedy decoding
(Cooperx521/PyramidDrop@6444f30, transformers 4.37.2), for 576 and 99 visual tokens. Here our
engine runs the same weights and inputs: kept visual tokens per stage identical, prefill logits
(and PDrop's 8 greedy tokens and their logits) within ``ATOL``. Each comparison also runs on a
deliberately broken copy of the pruner, which must fail it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from altp.engine import EngineInputs, PruningEngine
from baselines.fastv import FastV
from baselines.pdrop import PyramidDrop

FIXTURE = Path(__file__).parent / "fixtures" / "parity" / "llama"
ATOL = 1e-4  # eager attention (upstream) vs SDPA (ours), fp32; measured differences are ~1e-6
GRIDS = {576: (24, 24), 99: (9, 11)}


@pytest.fixture(scope="module")
def llm() -> LlamaForCausalLM:
    config = LlamaConfig(**json.loads((FIXTURE / "config.json").read_text()), attn_implementation="sdpa")
    model = LlamaForCausalLM(config).eval()
    model.load_state_dict(load_file(str(FIXTURE / "model.safetensors")), strict=True)
    return model


def recorded(method: str) -> dict:
    return torch.load(FIXTURE / f"{method}.pt", weights_only=True)


def fastv(**broken) -> FastV:
    settings = recorded("fastv")["settings"]
    return FastV(keep=settings["keep"], layer=settings["layer"], **broken)


def pdrop(**broken) -> PyramidDrop:
    settings = recorded("pdrop")["settings"]
    return PyramidDrop(schedule="fixed", layer_list=tuple(settings["layer_list"]), lam=settings["lam"],
                       n_layers=8, **broken)


def mismatches(llm, method: str, pruner) -> list[str]:
    """What differs from upstream's record, over every case (empty: parity)."""
    found = []
    for case, up in recorded(method)["cases"].items():
        embeds = up["inputs_embeds"][None]
        n_visual, length = up["n_visual"], embeds.shape[1]
        inputs = EngineInputs(inputs_embeds=embeds, attention_mask=torch.ones(1, length, dtype=torch.long),
                              visual_start=torch.tensor([up["visual_start"]]), n_visual=n_visual,
                              grid=GRIDS[n_visual])
        steps = len(up.get("tokens", [None]))
        with torch.no_grad():
            out = PruningEngine(llm, pruner).generate(inputs, steps, return_logits=True)
        kept = [sorted(stage[0].tolist()) for stage in out.kept_grid_index]
        if kept != up["kept"]:
            found.append(f"{case}: kept sets differ ({[len(k) for k in kept]} vs {[len(k) for k in up['kept']]})")
        ours, theirs = out.prefill_logits[0], up["prefill_logits"]
        if ours.shape != theirs.shape or not torch.allclose(ours, theirs, atol=ATOL, rtol=0):
            diff = (ours - theirs).abs().max() if ours.shape == theirs.shape else "shape"
            found.append(f"{case}: prefill logits differ ({diff})")
        if "tokens" in up:
            tokens = out.tokens[0, :steps].tolist()
            if tokens != up["tokens"]:
                found.append(f"{case}: greedy tokens {tokens} vs {up['tokens']}")
            elif not torch.allclose(out.logits[0, :steps], up["step_logits"], atol=ATOL, rtol=0):
                found.append(f"{case}: step logits differ ({(out.logits[0, :steps] - up['step_logits']).abs().max()})")
        elif int(ours[-1].argmax()) != int(theirs[-1].argmax()):
            found.append(f"{case}: first greedy token differs")
    return found


def test_fixture_records_upstream_and_stays_small():
    for method, repo in (("fastv", "pkunlp-icler/FastV@d165972"), ("pdrop", "Cooperx521/PyramidDrop@6444f30")):
        assert recorded(method)["upstream"].startswith(repo)
    assert recorded("fastv")["transformers"] == "4.31.0" and recorded("pdrop")["transformers"] == "4.37.2"
    assert sum(f.stat().st_size for f in FIXTURE.iterdir()) < 3e6


def test_fastv_matches_upstream_inplace_prefill(llm):
    assert mismatches(llm, "fastv", fastv()) == []


def test_pdrop_matches_upstream_kept_sets_prefill_and_cached_decoding(llm):
    assert mismatches(llm, "pdrop", pdrop()) == []


@pytest.mark.parametrize("method, broken, symptom", [
    ("fastv", dict(importance="attn_next"), "kept sets differ"),  # ranks with layer K, not K-1
    ("fastv", dict(position_policy="renumber"), "prefill logits differ"),  # FastV keeps positions
    ("pdrop", dict(importance="attn_prev"), "kept sets differ"),  # ranks with layer l-1, not l
    ("pdrop", dict(position_policy="original"), "logits differ"),  # PDrop renumbers positions
])
def test_parity_fails_on_a_broken_copy(llm, method, broken, symptom):
    found = mismatches(llm, method, fastv(**broken) if method == "fastv" else pdrop(**broken))
    assert any(symptom in line for line in found), found
