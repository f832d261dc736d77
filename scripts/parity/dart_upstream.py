"""Reference outputs of the authors' DART for tests/test_dart_parity.py.

Runs ZichenWen1/DART's own ``llava/model/language_model/modeling_llama_self.py`` (class ``DART``,
the LLaVA-1.5 LLM of its ``llava_llama.py`` L45) on a small random Llama and writes what it kept
and the logits it produced to ``tests/fixtures/parity/dart/``. Run it in a separate environment
with upstream's transformers, never this project's:

    python -m venv /work/venvs/dart
    /work/venvs/dart/bin/pip install torch==2.13.0 transformers==4.37.2 einops
    git --git-dir=<mirror of ZichenWen1/DART or a fork> archive 5a19452 llava | tar -x -C /work/upstream/dart
    /work/venvs/dart/bin/python scripts/parity/dart_upstream.py --upstream /work/upstream/dart

The prompt mimics LLaVA-1.5's: 35 system tokens, 576 visual tokens, 20 instruction tokens, fp32,
batch 1 (upstream asserts it, L313). Settings are upstream's command-line options
(``llava/eval/model_vqa_loader.py`` L21-29): ``--pruned_layer`` K, ``--max_num_trunction`` M,
``--pivot_image_token`` 4, ``--pivot_text_token`` 4 (the authors' scripts) or 0 (image pivots only).
Upstream keeps 4 + P * (M // P) visual tokens with P the number of pivots (L409, L427-445).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import types
from pathlib import Path

import torch
import transformers

COMMIT = "5a19452fc173017191c247848673e0bde755695a"
SYSTEM, VISUAL, INSTRUCTION = 35, 576, 20
STEPS = 8
CONFIG = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=5,
              num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
              rms_norm_eps=1e-6, rope_theta=10000.0)
SETTINGS = [dict(K=k, pivot_text_token=text, max_num_trunction=m)
            for k in (2, 3) for text in (0, 4) for m in (64, 100, 288)]
OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "parity" / "dart"


def load_upstream(root: Path):
    """Upstream's LLM module as a package of its own (``llava/__init__`` would pull in all of LLaVA)."""
    package = types.ModuleType("dart_upstream")
    package.__path__ = [str(root / "llava" / "model" / "language_model")]
    sys.modules["dart_upstream"] = package
    config = importlib.import_module("dart_upstream.configuration_llama")
    modeling = importlib.import_module("dart_upstream.modeling_llama_self")
    return config.LlamaConfig, modeling


def random_weights(model, seed: int) -> None:
    """Weights a random init would not give: per-channel norm gains (so the final RMSNorm
    matters to the cosine) and unit-variance layers (so every layer changes the keys)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif name.endswith("embed_tokens.weight"):
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)


@torch.no_grad()
def run_setting(model, embeds: torch.Tensor, setting: dict) -> dict:
    model.config.DART_config = {
        "K": setting["K"], "image_token_start_index": SYSTEM, "image_token_length": VISUAL,
        "max_num_trunction": setting["max_num_trunction"], "reduction_ratio": 0.778,
        "retain_token_num_for_llava_next": None, "pivot_image_token": 4,
        "pivot_text_token": setting["pivot_text_token"]}
    retained = []
    select = type(model.model).get_retained_image_token

    def record(config, state, keys):  # upstream's selection, unchanged; we only keep its result
        kept = select(model.model, config, state, keys)
        retained.append(kept.clone())
        return kept

    model.model.get_retained_image_token = record
    mask = torch.ones(1, embeds.shape[1], dtype=torch.long)
    out = model(inputs_embeds=embeds, attention_mask=mask, use_cache=True, return_dict=True)
    logits, tokens = [out.logits[0, -1]], []
    past = out.past_key_values
    for step in range(STEPS):
        token = logits[-1].argmax()
        tokens.append(int(token))
        if step == STEPS - 1:
            break
        mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
        out = model(input_ids=token.view(1, 1), attention_mask=mask, past_key_values=past,
                    use_cache=True, return_dict=True)
        logits.append(out.logits[0, -1])
        past = out.past_key_values
    del model.model.get_retained_image_token
    assert len(retained) == 1, "upstream pruned more than once"
    kept = sorted(int(i) - SYSTEM for i in retained[0])
    return {**setting, "pivot_image_token": 4, "n_kept": len(kept), "kept": kept,
            "greedy_tokens": tokens}, torch.stack(logits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", type=Path, required=True,
                        help="checkout of ZichenWen1/DART at --commit (the llava/ folder is enough)")
    parser.add_argument("--commit", default=COMMIT)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    LlamaConfig, modeling = load_upstream(args.upstream)
    config = LlamaConfig(**CONFIG, text_length=None, DART_config=None)
    config._attn_implementation = "sdpa"
    torch.manual_seed(args.seed)
    model = modeling.LlamaForCausalLM(config)
    model.model = modeling.DART(config)  # what llava_llama.py L45 builds
    model.eval()
    random_weights(model, args.seed)

    gen = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(0, CONFIG["vocab_size"], (SYSTEM + INSTRUCTION,), generator=gen)
    with torch.no_grad():
        text = model.model.embed_tokens(ids)
    visual = torch.randn(VISUAL, CONFIG["hidden_size"], generator=gen)
    embeds = torch.cat([text[:SYSTEM], visual, text[SYSTEM:]])[None]

    results, logits = [], []
    for setting in SETTINGS:
        result, setting_logits = run_setting(model, embeds, setting)
        results.append(result)
        logits.append(setting_logits)
        print(f"K={result['K']} text pivots={result['pivot_text_token']} "
              f"M={result['max_num_trunction']}: kept {result['n_kept']}")

    args.out.mkdir(parents=True, exist_ok=True)
    state = {k: v.clone() for k, v in model.state_dict().items() if "rotary_emb" not in k}
    torch.save({"config": CONFIG, "state_dict": state, "inputs_embeds": embeds.clone(),
                "logits": torch.stack(logits)}, args.out / "tensors.pt")
    meta = {"upstream": "ZichenWen1/DART", "commit": args.commit,
            "file": "llava/model/language_model/modeling_llama_self.py",
            "torch": torch.__version__, "transformers": transformers.__version__,
            "attention": "sdpa", "dtype": "float32", "seed": args.seed,
            "prompt": {"system": SYSTEM, "visual": VISUAL, "instruction": INSTRUCTION},
            "steps": STEPS, "kept": "visual indices (0..575) upstream's get_retained_image_token returned",
            "logits": "tensors.pt: [setting, step, vocab], step 0 = the prefill's last position",
            "settings": results}
    (args.out / "upstream.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
