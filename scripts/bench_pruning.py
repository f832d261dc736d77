"""Pruning benchmark: selection overhead per pruner, measured prefill speed-up beside FLOPs.

    python scripts/bench_pruning.py [--json] [--repeats 5] [--keeps 0.1 0.25 0.5]

A mid-size random Llama (hidden 1024, 8 layers, SDPA, fp32 on CPU / bf16 on GPU) gets one
sample of 576 visual tokens (24 x 24) between 20 + 20 text tokens, with a 336 x 336 image for
ALTP's superpixels. For every pruner config in configs/pruner/ (ALTP in both SLIC modes) and
keep ratio: the median over repeats (after one warm-up) of

* ``selection_ms``: the engine's pruner time (importance recomputation + selection, SLIC);
* ``select_only_ms``: ``select`` alone, its importance/keys already computed (SLIC, allocation,
  top-k: the method's own overhead);
* ``prefill_ms`` and ``time_ratio`` = prefill / unpruned prefill, the unpruned one measured again
  right before each row;
* ``flops_ratio``: eval.flops on the token schedule the run actually had.

Speed claims live here, never in unit tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from skimage import data as skimage_data
from skimage.transform import resize
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from altp.engine import EngineInputs, PruningEngine  # noqa: E402
from altp.pruning import build_pruner  # noqa: E402
from eval.flops import flops_ratio  # noqa: E402

HIDDEN, FFN, LAYERS, HEADS, TEXT_BEFORE, TEXT_AFTER, GRID = 1024, 2816, 8, 16, 20, 20, 24


def build_model(device: torch.device) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=HEADS, attn_implementation="sdpa")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return LlamaForCausalLM(config).eval().to(device=device, dtype=dtype)


def build_inputs(model: LlamaForCausalLM) -> EngineInputs:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (TEXT_BEFORE + TEXT_AFTER,), generator=gen).to(model.device)
    text = model.model.embed_tokens(ids)
    visual = (torch.randn(GRID * GRID, HIDDEN, generator=gen) * 0.05).to(model.device, model.dtype)
    embeds = torch.cat([text[:TEXT_BEFORE], visual, text[TEXT_BEFORE:]])[None]
    image = resize(skimage_data.astronaut(), (336, 336), anti_aliasing=True).astype(np.float32)
    return EngineInputs(embeds, torch.ones(1, embeds.shape[1], dtype=torch.long, device=model.device),
                        torch.tensor([TEXT_BEFORE], device=model.device), GRID * GRID, (GRID, GRID), [image])


def pruner_variants() -> dict[str, list[str]]:
    """Config name -> overrides; ALTP in both SLIC modes; PDrop matched to FastV's FLOPs here."""
    variants = {path.stem: [] for path in sorted((ROOT / "configs" / "pruner").glob("*.yaml"))}
    variants.pop("none", None)
    if "altp" in variants:
        variants.pop("altp")
        variants["altp[literal]"] = ["slic_mode=literal"]
        variants["altp[fast]"] = ["slic_mode=fast"]
    if "pdrop" in variants:
        variants["pdrop"] = ["schedule=match_fastv", f"n_layers={LAYERS}", f"hidden={HIDDEN}", f"ffn={FFN}",
                             f"text_tokens={TEXT_BEFORE + TEXT_AFTER}"]
    return variants


def make_pruner(variant: str, overrides: list[str], keep: float):
    path = ROOT / "configs" / "pruner" / f"{variant.split('[')[0]}.yaml"
    cfg = OmegaConf.merge(OmegaConf.create({"keep": keep, "seed": 0}),
                          {"pruner": OmegaConf.load(path)}, {"pruner": OmegaConf.from_dotlist(overrides)})
    return build_pruner(cfg.pruner)


def time_select_alone(pruner, seconds: list[float]) -> None:
    """Wrap ``pruner.select``: time select itself, without the model signals it asks the context
    for (importance, keys: the context computes them from the model on first use)."""
    select = pruner.select

    def timed(ctx):
        signals = [0.0]

        def timed_signal(compute):
            def wrapped(*args):
                start = time.perf_counter()
                try:
                    return compute(*args)
                finally:
                    signals[0] += time.perf_counter() - start
            return wrapped

        for field in ("_importance", "_keys", "_prev_keys"):
            if getattr(ctx, field) is not None:
                setattr(ctx, field, timed_signal(getattr(ctx, field)))
        start = time.perf_counter()
        selected = select(ctx)
        seconds.append(time.perf_counter() - start - signals[0])
        return selected

    pruner.select = timed


def measure(model, inputs, pruner, repeats: int) -> dict:
    engine = PruningEngine(model, pruner)
    engine.generate(inputs, max_new_tokens=1)  # warm-up
    runs = [engine.generate(inputs, max_new_tokens=1) for _ in range(repeats)]
    alone: list[float] = []
    time_select_alone(pruner, alone)
    for _ in range(repeats):
        engine.generate(inputs, max_new_tokens=1)
    return {"prefill_ms": 1e3 * statistics.median(r.timing["prefill"] for r in runs),
            "selection_ms": 1e3 * statistics.median(r.timing["pruner"] for r in runs),
            "select_only_ms": 1e3 * statistics.median(alone) if alone else 0.0,
            "tokens_per_layer": runs[0].tokens_per_layer}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keeps", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(device)
    inputs = build_inputs(model)
    with torch.no_grad():
        base = measure(model, inputs, make_pruner("none", [], 1.0), args.repeats)
    full_tokens = base["tokens_per_layer"][0]
    result = {"device": str(device), "model": {"hidden": HIDDEN, "ffn": FFN, "layers": LAYERS,
                                                "visual": GRID * GRID, "text": TEXT_BEFORE + TEXT_AFTER},
              "repeats": args.repeats, "unpruned_prefill_ms": base["prefill_ms"], "pruners": {}}
    for variant, overrides in pruner_variants().items():
        rows = {}
        for keep in args.keeps:
            # the unpruned reference is re-measured next to every row: load on a shared machine drifts
            base = measure(model, inputs, make_pruner("none", [], 1.0), args.repeats)
            m = measure(model, inputs, make_pruner(variant, overrides, keep), args.repeats)
            rows[str(keep)] = {"selection_ms": round(m["selection_ms"], 3),
                               "select_only_ms": round(m["select_only_ms"], 3), "prefill_ms": round(m["prefill_ms"], 2),
                               "time_ratio": round(m["prefill_ms"] / base["prefill_ms"], 3),
                               "flops_ratio": round(flops_ratio(m["tokens_per_layer"], full_tokens, HIDDEN, FFN), 3)}
        result["pruners"][variant] = rows
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"device {device}; unpruned prefill {base['prefill_ms']:.1f} ms (median of {args.repeats})")
    print(f"{'pruner':16s} {'keep':>5s} {'pruner ms':>10s} {'select ms':>10s} {'prefill ms':>11s} "
          f"{'time ratio':>11s} {'FLOPs ratio':>12s}")
    for variant, rows in result["pruners"].items():
        for keep, row in rows.items():
            print(f"{variant:16s} {keep:>5s} {row['selection_ms']:10.3f} {row['select_only_ms']:10.3f} {row['prefill_ms']:11.2f} "
                  f"{row['time_ratio']:11.3f} {row['flops_ratio']:12.3f}")


if __name__ == "__main__":
    main()
