"""Record FastV's and PyramidDrop's own outputs on a tiny random Llama (tests/fixtures/parity/llama/).

Runs UPSTREAM code, each in its own venv (README, "Parity with upstream"):

    # FastV: pkunlp-icler/FastV@d165972, its transformers 4.31 fork's modeling_llama.py ("inplace" prefill)
    /work/venvs/fastv/bin/python scripts/parity/pruners_upstream.py fastv --src /work/upstream/FastV
    # PyramidDrop: Cooperx521/PyramidDrop@6444f30, llava/model/modeling_llama_pdrop.py (transformers 4.37.2)
    /work/venvs/pdrop/bin/python scripts/parity/pruners_upstream.py pdrop --src /work/upstream/PyramidDrop

The first run writes the random Llama (``model.safetensors`` + ``config.json``, fp32, multi-head:
upstream PDrop crashes on grouped-query attention, ``pdrop_rank_drop`` multiplies q [heads] by
k [kv_heads] without ``repeat_kv``); the other loads it. Each writes ``<method>.pt``: inputs,
kept visual indices per stage, prefill logits and (PDrop, KV-cached) greedy tokens + step logits.
Nothing of upstream's code is copied: its files are imported from ``--src``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "parity" / "llama"
CONFIG = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 8,
          "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 2048,
          "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False}
# (prefix text tokens, visual tokens, suffix text tokens): LLaVA-1.5's 576 and a small odd 99
CASES = {"n576": (35, 576, 40), "n99": (10, 99, 15)}
FASTV = {"layer": 2, "keep": 0.25}  # K and keep; budget floor(keep * N) = upstream's attention_rank
PDROP = {"layer_list": [2, 4, 6], "lam": 0.5}
STEPS = 8


def load_upstream(name: str, path: Path, package: str | None = None):
    """Import one upstream file as module ``name`` (``package`` makes its relative imports work)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if package:
        module.__package__ = package
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def weights(config_cls, model_cls, attn: str | None = None):
    """The shared random Llama: written on the first run, read afterwards. ``attn``: the attention
    class ``from_pretrained`` would pick (4.37: sdpa on torch >= 2.1.1)."""
    OUT.mkdir(parents=True, exist_ok=True)
    config = config_cls(**CONFIG)
    if attn:
        config._attn_implementation = attn
    model = model_cls(config).eval().float()
    if (OUT / "model.safetensors").is_file():
        state = load_file(str(OUT / "model.safetensors"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all(k.endswith("inv_freq") for k in missing), (missing, unexpected)
        return model
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            std = 0.3 if name.endswith(("q_proj.weight", "k_proj.weight")) else 0.08  # peaked attention
            param.copy_(torch.randn_like(param) * std if param.dim() > 1 else 1 + 0.1 * torch.randn_like(param))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("inv_freq")}
    save_file(state, str(OUT / "model.safetensors"))
    (OUT / "config.json").write_text(json.dumps(CONFIG, indent=1))
    return model


def inputs(model, prefix: int, n_visual: int, suffix: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, CONFIG["vocab_size"], (prefix + suffix,), generator=gen)
    text = model.model.embed_tokens(ids).detach()
    visual = torch.randn(n_visual, CONFIG["hidden_size"], generator=gen)
    return torch.cat([text[:prefix], visual, text[prefix:]])[None]


def run_fastv(src: Path) -> dict:
    """The inplace prefill of FastV's fork (modeling_llama.py:730-766): layer K-1's attention of the
    last token, top-``attention_rank`` visual tokens, original position ids."""
    import transformers.models.llama as llama_pkg

    base = src / "src/transformers/src/transformers/models/llama"
    fork_config = load_upstream(f"{llama_pkg.__name__}.fastv_configuration_llama",
                                base / "configuration_llama.py", llama_pkg.__name__)
    fork = load_upstream(f"{llama_pkg.__name__}.fastv_modeling_llama", base / "modeling_llama.py",
                         llama_pkg.__name__)
    model = weights(fork_config.LlamaConfig, fork.LlamaForCausalLM)
    out = {"upstream": "pkunlp-icler/FastV@d1659729b5bf1be225e99ee15783deeea80f63b1 "
                       "src/transformers/src/transformers/models/llama/modeling_llama.py (inplace)",
           "transformers": __import__("transformers").__version__, "settings": FASTV, "cases": {}}
    for seed, (case, (prefix, n_visual, suffix)) in enumerate(CASES.items()):
        embeds = inputs(model, prefix, n_visual, suffix, seed)
        budget = int(FASTV["keep"] * n_visual)
        for key, value in dict(use_fast_v=True, fast_v_inplace=True, fast_v_sys_length=prefix,
                               fast_v_image_token_length=n_visual, fast_v_attention_rank=budget,
                               fast_v_agg_layer=FASTV["layer"]).items():
            setattr(model.model, key, value)  # LlamaModel.reset_fastv reads the same from its config
        seen = {}

        def grab(module, args, kwargs, seen=seen):  # layer K's position ids are FastV's sorted keep_indexs
            seen.setdefault("positions", kwargs["position_ids"][0].clone())

        hook = model.model.layers[FASTV["layer"]].register_forward_pre_hook(grab, with_kwargs=True)
        with torch.no_grad():
            logits = model(inputs_embeds=embeds, output_attentions=True, use_cache=False).logits[0]
        hook.remove()
        positions = seen["positions"]
        kept = positions[(positions >= prefix) & (positions < prefix + n_visual)] - prefix
        out["cases"][case] = {"inputs_embeds": embeds[0], "visual_start": prefix, "n_visual": n_visual,
                              "kept": [kept.tolist()], "positions": positions, "prefill_logits": logits}
        print(f"fastv {case}: kept {len(kept)} of {n_visual}, prefill {tuple(logits.shape)}")
    return out


class KeptRows:
    """Wraps ``pdrop_rank_drop``: which visual rows survive each stage (kept rows are exact copies),
    as indices of the original visual tokens."""

    def __init__(self, rank_drop, prefix: int, n_visual: int):
        self.rank_drop, self.prefix = rank_drop, prefix
        self.rows, self.stages = torch.arange(n_visual), []

    def __call__(self, *args, **kwargs):
        before = kwargs["features"][0]
        result = self.rank_drop(*args, **kwargs)
        after, n_now, start = result[2][0], len(self.rows), self.prefix
        kept = len(after) - (len(before) - n_now)
        visual = before[start:start + n_now]
        picked = [int((visual == row).all(-1).nonzero()[0]) for row in after[start:start + kept]]
        self.rows = self.rows[torch.tensor(picked)]
        self.stages.append(self.rows.tolist())
        return result


def run_pdrop(src: Path) -> dict:
    """``LlamaModel.pdrop_forward`` + ``pdrop_rank_drop`` (modeling_llama_pdrop.py:1106-1468), driven
    as ``LlavaLlamaForCausalLM_PDrop`` drives it (language_model/llava_llama_pdrop.py:195-210) and as
    the eval scripts set it up (eval/model_vqa_loader.py:94-96); greedy decoding with the KV cache."""
    constants = types.ModuleType("llava.constants")  # the one llava import of the file
    exec(compile((src / "llava/constants.py").read_text(), "llava/constants.py", "exec"), constants.__dict__)
    sys.modules.setdefault("llava", types.ModuleType("llava")).constants = constants
    sys.modules["llava.constants"] = constants
    pdrop = load_upstream("modeling_llama_pdrop", src / "llava/model/modeling_llama_pdrop.py")
    from transformers import LlamaConfig

    model = weights(LlamaConfig, pdrop.LlamaForCausalLM, attn="sdpa")
    inner = model.model
    inner.layer_list = list(PDROP["layer_list"])
    inner.image_token_ratio_list = [1.0] + [PDROP["lam"] ** (s + 1) for s in range(len(PDROP["layer_list"]))]
    out = {"upstream": "Cooperx521/PyramidDrop@6444f304aee4b7edcb022839fb9e8cd07859704a "
                       "llava/model/modeling_llama_pdrop.py",
           "transformers": __import__("transformers").__version__, "settings": PDROP, "cases": {}}
    rank_drop = inner.pdrop_rank_drop
    for seed, (case, (prefix, n_visual, suffix)) in enumerate(CASES.items()):
        embeds = inputs(model, prefix, n_visual, suffix, seed)
        inner.image_token_posi, inner.image_tokens = [prefix], [n_visual]
        inner.prompt_len = [prefix + suffix]
        recording = KeptRows(rank_drop, prefix, n_visual)
        inner.pdrop_rank_drop = recording
        length = embeds.shape[1]
        with torch.no_grad():
            result, _ = inner.pdrop_forward(inputs_embeds=embeds, attention_mask=torch.ones(1, length, dtype=torch.long),
                                            position_ids=torch.arange(length)[None], use_cache=True, return_dict=True)
            prefill = model.lm_head(result.last_hidden_state).float()[0]
            past, token = result.past_key_values, int(prefill[-1].argmax())
            tokens, step_logits = [token], [prefill[-1]]
            for step in range(STEPS - 1):  # HF generate: position = attention_mask.cumsum - 1
                embed = model.model.embed_tokens(torch.tensor([[token]]))
                result, _ = inner.pdrop_forward(
                    inputs_embeds=embed, attention_mask=torch.ones(1, length + step + 1, dtype=torch.long),
                    position_ids=torch.tensor([[length + step]]), past_key_values=past, use_cache=True,
                    return_dict=True)
                logits = model.lm_head(result.last_hidden_state).float()[0, -1]
                past, token = result.past_key_values, int(logits.argmax())
                tokens.append(token)
                step_logits.append(logits)
        inner.pdrop_rank_drop = rank_drop
        out["cases"][case] = {"inputs_embeds": embeds[0], "visual_start": prefix, "n_visual": n_visual,
                              "kept": recording.stages, "prefill_logits": prefill, "tokens": tokens,
                              "step_logits": torch.stack(step_logits)}
        print(f"pdrop {case}: kept {[len(s) for s in recording.stages]} of {n_visual}, tokens {tokens}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=["fastv", "pdrop"])
    parser.add_argument("--src", type=Path, required=True, help="the upstream repository's files")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = run_fastv(args.src) if args.method == "fastv" else run_pdrop(args.src)
    torch.save(out, OUT / f"{args.method}.pt")
    print(f"wrote {OUT / (args.method + '.pt')}")


if __name__ == "__main__":
    main()
