"""GLaMM-GCG against groundingLMM's own code (tests/fixtures/parity/glamm/).

``scripts/parity/glamm_upstream.py`` built the tiny checkpoint with UPSTREAM classes in the released
layout and recorded ``eval/gcg/infer.py``'s loading + ``inference`` + ``GLaMMForCausalLM.evaluate``
(groundingLMM@e74865f, transformers 4.28) in fp32 and bf16 for two images. Here ``load_glamm``
reads the same folders and our engine decodes with a KV cache: prompt ids, [SEG] id, greedy tokens,
captions and phrases identical; fp32 logits and mask logits within ``FP32_ATOL``, mask IoU >=
0.999 (bf16: tokens and captions identical, IoU >= 0.95). Broken copies must fail the comparison.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from altp.engine import PruningEngine
from altp.models.glamm import load_glamm
from altp.models.glamm.prompt import REFERENCE_IDS, build_prompt_ids
from altp.pruning import NoPruning

pytest.importorskip("sentencepiece")  # the 4.28-saved tokenizer.model is converted with it
FIXTURE = Path(__file__).parent / "fixtures" / "parity" / "glamm"
FP32_ATOL = 1e-3  # our KV cache + SDPA vs upstream's full recompute + eager attention; measured ~1e-5
EXPECTED = torch.load(FIXTURE / "expected.pt", weights_only=True)


def load(dtype: str, **options):
    return load_glamm(str(FIXTURE / "GLaMM-GCG"), str(FIXTURE / "clip-vit-large-patch14-336"), dtype=dtype,
                      device="cpu", **options)


@pytest.fixture(scope="module")
def fp32():
    return load("float32")


def iou(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def mismatches(model, dtype: str) -> list[str]:
    """What differs from upstream's record for every image (empty: parity)."""
    found, subset, steps = [], torch.tensor(EXPECTED["subset"]), EXPECTED["max_new_tokens"]
    for up in EXPECTED["runs"][dtype]:
        name = f"{dtype} {up['image']}"
        if model.ids != up["prompt_ids"] or model.seg_token_id != up["seg_token_idx"]:
            found.append(f"{name}: prompt ids or [SEG] id differ")
        image = Image.open(FIXTURE / "images" / up["image"])
        array = np.asarray(image.convert("RGB"))
        engine = PruningEngine(model.llm, NoPruning())
        with torch.no_grad():
            out = engine.generate(model.engine_inputs([array]), steps, eos_token_id=2, return_logits=True)
            prediction = model.predict([image], engine, steps)[0][0]
            tokens = out.tokens[0, :out.lengths[0]].tolist()
            seg = [t for t, token in enumerate(tokens) if token == model.seg_token_id]
            masks = model.mask_logits(array, out.hidden[0, seg]) if seg else torch.zeros(0, *array.shape[:2])
        if tokens != up["generated"]:
            found.append(f"{name}: greedy tokens differ")
        if (prediction.caption, prediction.phrases) != (up["caption"], up["phrases"]):
            found.append(f"{name}: caption or phrases differ: {prediction.caption!r} vs {up['caption']!r}")
        if masks.shape != up["mask_logits"].shape:
            found.append(f"{name}: {masks.shape[0]} masks vs {up['mask_logits'].shape[0]}")
            continue
        worst_iou = min([iou(a, b) for a, b in zip(masks > 0, up["mask_logits"] > 0)], default=1.0)
        if worst_iou < (0.999 if dtype == "float32" else 0.95):
            found.append(f"{name}: mask IoU {worst_iou:.4f}")
        if dtype == "float32":
            diffs = {"prefill logits": (out.prefill_logits[0][:, subset] - up["prefill_logits"]).abs().max(),
                     "step logits": (out.logits[0][:, subset] - up["step_logits"][:len(tokens)]).abs().max(),
                     "mask logits": (masks - up["mask_logits"]).abs().max()}
            found += [f"{name}: {what} differ by {float(d):.2e}" for what, d in diffs.items() if d > FP32_ATOL]
    return found


def test_fixture_was_recorded_by_upstream_and_is_small():
    assert EXPECTED["upstream"].startswith("mbzuai-oryx/groundingLMM@e74865f") and EXPECTED["transformers"] == "4.28.0"
    assert all(len(run["phrases"]) == 6 and run["mask_logits"].shape[0] == 6 for run in EXPECTED["runs"]["float32"])
    assert sum(f.stat().st_size for f in FIXTURE.rglob("*") if f.is_file()) < 10e6


def test_fp32_matches_upstream_with_its_bf16_rounded_weights(fp32):
    assert mismatches(fp32, "float32") == []
    assert fp32.deviations["fp32_weights"].startswith("bf16_rounded")
    assert fp32.deviations["load_warnings"] == []  # the release layout loads without a warning


@pytest.mark.slow
def test_bf16_matches_upstream():
    assert mismatches(load("bfloat16"), "bfloat16") == []


def test_prompt_ids_and_seg_id_from_the_4_28_tokenizer_files(fp32):
    """Upstream 4.28 gave the reference ids; transformers 5 (legacy=False) only adds the '▁' before
    <im_start> (prompt.py); with 5's legacy default it would be '▁▁' + characters (91 ids)."""
    assert EXPECTED["runs"]["float32"][0]["prompt_ids"] == REFERENCE_IDS
    assert build_prompt_ids(fp32.tokenizer, "tokenizer") == REFERENCE_IDS[:35] + [29871] + REFERENCE_IDS[35:]
    assert fp32.seg_token_id == EXPECTED["runs"]["float32"][0]["seg_token_idx"] == 32004


@pytest.mark.parametrize("broken, symptom", [
    (dict(fp32_weights="full"), "logits differ"),  # SAM / CLIP / text_hidden_fcs not rounded
    ("select_layer", "prefill logits differ"),  # CLIP's last layer instead of hidden_states[-2]
])
def test_parity_fails_on_a_broken_copy(broken, symptom):
    model = load("float32", **(broken if isinstance(broken, dict) else {}))
    if broken == "select_layer":
        model.select_layer = -1
    found = mismatches(model, "float32")
    assert any(symptom in line for line in found), found
