"""What the model benchmarks share: the pruner as run.py builds it, a median timer, prefill and
time-to-first-token rows."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from hydra import compose, initialize_config_dir

from altp.engine import Clock, PruningEngine
from altp.pruning import build_pruner
from eval.flops import flops_ratio

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def pruner(name: str, keep: float, llm: dict, text_tokens: int, pdrop_layers: list[int]):
    """The pruner exactly as ``run.py pruner=<name> keep=<keep>`` builds it (configs/pruner), for an
    LLM of these transformers-config shapes."""
    overrides = [f"pruner={name}", f"keep={keep}", f"model.llm.layers={llm['num_hidden_layers']}",
                 f"model.llm.hidden={llm['hidden_size']}", f"model.llm.ffn={llm['intermediate_size']}",
                 f"model.llm.text_tokens={text_tokens}",
                 f"model.llm.pdrop_layers=[{','.join(map(str, pdrop_layers))}]"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        return build_pruner(compose("config", overrides=overrides).pruner)


def median_ms(fn, repeats: int, clock: Clock) -> float:
    """Median wall time of ``fn`` in ms over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return round(1e3 * statistics.median(times), 3)


def prefill_row(engine, inputs, repeats: int, full_tokens: int, llm_config) -> dict:
    """One pruner/keep: median prefill and pruner ms over ``repeats`` (after a warm-up) beside
    the FLOPs ratio of the token schedule it ran (eval.flops)."""
    runs = [engine.generate(inputs, 1) for _ in range(repeats + 1)][1:]
    return {"ms": round(1e3 * statistics.median(r.timing["prefill"] for r in runs), 3),
            "pruner_ms": round(1e3 * statistics.median(r.timing["pruner"] for r in runs), 3),
            "flops_ratio": round(flops_ratio(runs[0].tokens_per_layer, full_tokens, llm_config.hidden_size,
                                             llm_config.intermediate_size), 4)}


def time_to_first_token(llm, make_inputs, view, grid, pruners: dict, repeats: int, clock: Clock) -> dict:
    """Median ms from the image to the first generated token (encoder, splice, pruned prefill,
    first logits) per pruner; ``make_inputs(prepared)`` builds the model's EngineInputs.

    A pruner with image-only work (``Pruner.prepare``: ALTP's SLIC) gets both latency views:
    ``with_prepare`` counts that work serially, inside prefill (one request, ``prefetch=false``);
    ``without_prepare`` has it done ahead, as the data pipeline does (``prefetch=true``), beside
    ``prepare_ms``, the work alone (on ``view``, the image as the encoder sees it).
    """
    return {name: _ttft_row(PruningEngine(llm, pruner), make_inputs, view, grid, repeats, clock)
            for name, pruner in pruners.items()}


def _ttft_row(engine: PruningEngine, make_inputs, view, grid, repeats: int, clock: Clock) -> dict:
    pruner = engine.pruner
    inline = median_ms(lambda: engine.generate(make_inputs(None), 1), repeats, clock)
    if not pruner.prepares_images:
        return {"ms": inline}
    state = [pruner.prepare(view, grid)]
    return {"with_prepare_ms": inline,
            "without_prepare_ms": median_ms(lambda: engine.generate(make_inputs(state), 1), repeats, clock),
            "prepare_ms": median_ms(lambda: pruner.prepare(view, grid), repeats, clock)}


def print_ttft(rows: dict, keep: float) -> None:
    for name, row in rows.items():
        if "ms" in row:
            print(f"  time to first token, {name:6s} keep {keep:g}: {row['ms']:9.2f} ms")
        else:
            print(f"  time to first token, {name:6s} keep {keep:g}: {row['with_prepare_ms']:9.2f} ms with its "
                  f"prepare (SLIC {row['prepare_ms']:.2f} ms) counted, {row['without_prepare_ms']:.2f} ms without")


def print_prefill(prefill: dict) -> None:
    for name, keeps in prefill.items():
        for keep, row in keeps.items():
            print(f"  prefill {name:6s} keep {keep:>4s}: {row['ms']:9.2f} ms   FLOPs {100 * row['flops_ratio']:5.1f} %")


def arguments(description: str, new_tokens: int, stop: str) -> argparse.ArgumentParser:
    """The options both model benchmarks take."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tiny", action="store_true", help="small shapes on CPU")
    parser.add_argument("--new-tokens", type=int, default=new_tokens, help=f"caption length (no {stop})")
    parser.add_argument("--segs", type=int, default=4, help="[SEG] masks decoded per caption")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ttft-keep", type=float, default=0.1, help="keep ratio of the time-to-first-token rows")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    return parser
