"""Theoretical LLM prefill FLOPs of a per-layer token schedule (paper Eq. 5, generalised).

Per decoder layer with n tokens, hidden size d and FFN size m (FastV Eq. 5, PyramidDrop §3.1):

    f(n) = 4 n d^2 + 2 n^2 d + 2 n d m

and a schedule's ratio to the unpruned model is  sum_l f(n_l) / (L * f(n_full)).  n counts the
text tokens as well as the visual ones (text is never pruned): with ~36 text tokens this
reproduces the quoted 20/33/55 % for FastV K=2 on LLaVA-1.5-7B / GLaMM
(docs/upstream/pruning_methods.md §3.2). Like the references, the formula counts two FFN matrices
and ignores the vision encoder, the LM head and the pruners' own overhead.

    python -m eval.flops --hidden 4096 --ffn 11008 --layers 32 --visual 576 --text 36 \
        --schedule fastv --layer 2 --keep-tokens 57                          # -> 0.201
    python -m eval.flops ... --schedule pdrop --layers-list 8 16 24 --lambda 0.5   # -> 0.495
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence


def layer_flops(n: int, d: int, m: int) -> int:
    """FLOPs of one decoder layer on n tokens: QKVO projections, QK^T and AV, two FFN matrices."""
    return 4 * n * d**2 + 2 * n**2 * d + 2 * n * d * m


def flops_ratio(tokens_per_layer: Sequence[int], full_tokens: int, d: int, m: int) -> float:
    """sum_l f(n_l) / (L * f(full_tokens)) for the tokens each of the L layers processed."""
    total = sum(layer_flops(n, d, m) for n in tokens_per_layer)
    return total / (len(tokens_per_layer) * layer_flops(full_tokens, d, m))


def multi_stage_schedule(n_layers: int, visual: int, text: int,
                         stages: Sequence[tuple[int, int]]) -> list[int]:
    """Tokens per layer when, from each stage's layer on, only its count of visual tokens is left.

    ``stages`` are (layer, visual count) pairs with increasing layers; layer K means the input
    of layer K is pruned (layers < K see every token), as in the pruning engine.
    """
    counts, current, stage = [], visual, 0
    for layer in range(n_layers):
        if stage < len(stages) and stages[stage][0] == layer:
            current = stages[stage][1]
            stage += 1
        counts.append(current + text)
    if stage != len(stages):
        raise ValueError(f"stages {list(stages)} are not increasing layers below {n_layers}")
    return counts


def single_stage_schedule(n_layers: int, visual: int, text: int, layer: int,
                          keep_tokens: int) -> list[int]:
    """FastV-style schedule: every token before ``layer``, ``keep_tokens`` visual ones after."""
    return multi_stage_schedule(n_layers, visual, text, [(layer, keep_tokens)])


def geometric_counts(visual: int, lam: float, n_stages: int) -> list[int]:
    """PyramidDrop's stage counts: stage s keeps int(N * lam^s) of the ORIGINAL N (at least 1)."""
    return [max(1, int(visual * lam**s)) for s in range(1, n_stages + 1)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.flops", description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=4096, help="hidden size d")
    parser.add_argument("--ffn", type=int, default=11008, help="FFN intermediate size m")
    parser.add_argument("--layers", type=int, default=32, help="decoder layers L")
    parser.add_argument("--visual", type=int, default=576, help="visual tokens before pruning")
    parser.add_argument("--text", type=int, default=0, help="non-visual prompt tokens (never pruned)")
    parser.add_argument("--schedule", choices=["fastv", "pdrop"], default="fastv")
    parser.add_argument("--layer", type=int, default=2, help="fastv: pruning layer K")
    parser.add_argument("--keep-tokens", type=int, help="fastv: visual tokens kept from layer K on")
    parser.add_argument("--layers-list", type=int, nargs="+", default=[8, 16, 24],
                        help="pdrop: layers at whose input each stage drops tokens")
    parser.add_argument("--lambda", dest="lam", type=float, default=0.5,
                        help="pdrop: stage s keeps int(visual * lambda^s)")
    parser.add_argument("--json", action="store_true", help="also print the per-layer schedule")
    args = parser.parse_args(argv)

    if args.schedule == "fastv":
        if args.keep_tokens is None:
            parser.error("--schedule fastv needs --keep-tokens")
        stages = [(args.layer, args.keep_tokens)]
    else:
        counts = geometric_counts(args.visual, args.lam, len(args.layers_list))
        stages = list(zip(args.layers_list, counts))
    tokens = multi_stage_schedule(args.layers, args.visual, args.text, stages)
    ratio = flops_ratio(tokens, args.visual + args.text, args.hidden, args.ffn)
    if args.json:
        print(json.dumps({"flops_ratio": round(ratio, 6), "stages": stages,
                          "tokens_per_layer": tokens,
                          "mean_visual_tokens": sum(tokens) / len(tokens) - args.text}))
    else:
        print(f"{ratio:.3f}")


if __name__ == "__main__":
    main()
