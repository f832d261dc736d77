"""metrics.json of a finished run: scores, token schedule, FLOPs and timing over all ranks.

A run directory holds per-process record files: ``timing.jsonl`` / ``errors.jsonl`` for a
single process, ``timing.rank<r>.jsonl`` / ``errors.rank<r>.jsonl`` for torchrun rank r (one
writer per file: no interleaved appends, also on network file systems). Readers take them all.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch

from eval.flops import flops_ratio
from eval.similarity import PROTOCOL_MODEL

SCORES = ("METEOR", "CIDEr", "AP50", "mIoU", "recall")


def record_file(run_dir: Path, stem: str, rank: int, world: int) -> Path:
    return run_dir / (f"{stem}.jsonl" if world == 1 else f"{stem}.rank{rank}.jsonl")


def record_files(run_dir: Path, stem: str) -> list[Path]:
    return sorted(run_dir.glob(f"{stem}.jsonl")) + sorted(run_dir.glob(f"{stem}.rank*.jsonl"))


def read_jsonl(path: Path) -> list[dict]:
    """The file's records; a line torn by a kill mid-write (always the last one) is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def summarise(cfg, name: str, pruner, model, split, run_dir: Path, scores: dict, variant: dict,
              keep: float, overrides: dict, ranks: list[dict]) -> dict:
    per_file = [read_jsonl(path) for path in record_files(run_dir, "timing")]
    batches = [b for records in per_file for b in records]
    failed = {e["image_id"] for path in record_files(run_dir, "errors") for e in read_jsonl(path)}
    failed -= {p.stem for p in (run_dir / "predictions").glob("*.json")}
    n_visual = model.n_visual  # the model interface (altp.models.base.GCGModel)
    llm = model.llm_shape
    kept_tokens = pruner.stage_budgets(n_visual) if pruner.layers else [n_visual]
    schedule = batches[0]["tokens_per_layer"] if batches else []
    # the unpruned prompt length: layer 0 may already run on fewer tokens (K = 0 pruners)
    full = schedule[0] - batches[0]["visual_per_layer"][0] + n_visual if schedule else 0
    return {
        "model": cfg.model.name, "data": cfg.data.name, "split": cfg.data.split, "limit": cfg.data.get("limit"),
        "pruner": name, "pruner_params": pruner.describe() | overrides,
        "variant": variant, "keep": keep, "visual_tokens": n_visual,
        "kept_tokens": kept_tokens,
        "prune_layers": list(pruner.layers), "n_images": len(split), "n_failed": len(failed),
        **{k: scores[k] for k in SCORES},
        "flops_ratio": flops_ratio(schedule, full, llm.hidden, llm.ffn) if schedule else None,
        "tokens_per_layer": schedule,
        "visual_per_layer": batches[0]["visual_per_layer"] if batches else [],
        "timing": timing_summary(per_file, ranks),
        "similarity_model": scores["similarity_model"], "similarity": scores["similarity"],
        "evaluation": {k: v for k, v in scores.items() if k not in SCORES},
        "model_deviations": model.deviations,
        "device": str(model.device), "dtype": str(model.dtype), "batch_size": cfg.batch_size,
        "max_new_tokens": cfg.max_new_tokens, "torch": torch.__version__, "run_dir": str(run_dir),
    }


def timing_summary(per_file: list[list[dict]], ranks: list[dict]) -> dict:
    """Per-image medians over the batches of every rank, plus this invocation's wall clock.

    ``per_file``: the batch records of each timing file (one per process that ever predicted
    here); the first batch of each file is its process's warm-up and is dropped when the file
    has more. ``ranks``: one entry per rank of the invocation that finished the run (images it
    predicted, its prediction-loop seconds, its peak memory).
    """
    measured = [b for records in per_file for b in (records[1:] if len(records) > 1 else records)]
    if not measured:
        return {}

    def median(values):
        return round(1e3 * statistics.median(values), 3)

    per_image = [(b, len(b["images"])) for b in measured]
    memory_key = "peak_gpu_memory_mib" if any("peak_gpu_memory_mib" in r for r in ranks) else "peak_process_rss_mib"
    peaks = [r[memory_key] for r in ranks if memory_key in r]
    wall = max((r["wall_s"] for r in ranks), default=0.0)
    predicted = sum(r["images"] for r in ranks)
    return {
        "pruner_ms_per_image": median([b["pruner"] / n for b, n in per_image]),
        "prefill_ms_per_image": median([b["prefill"] / n for b, n in per_image]),
        "decode_ms_per_token": median([b["decode"] / max(1, b["decode_steps"]) for b, _ in per_image]),
        "end_to_end_ms_per_image": median([b["end_to_end"] / n for b, n in per_image]),
        **latency_views(per_image),
        "batches_measured": len(measured),
        **({memory_key: max(peaks)} if peaks else {}),
        "ranks": len(ranks),
        "images_predicted_now": predicted,
        "predict_wall_s": round(wall, 3),
        "images_per_s": round(predicted / wall, 3) if wall > 0 and predicted else None,
        "per_rank": ranks,
        "note": "per-image values are batch times divided by the batch size, medians over the batches "
                "of all ranks (each process's first batch dropped as warm-up); prefill includes the "
                "pruner; decode is per batch step. ranks / images_predicted_now / predict_wall_s / "
                "images_per_s / per_rank describe the invocation that finished the run: wall = the "
                "slowest rank's prediction loop; peak memory = the largest over ranks (GPU: since the "
                "loop started; CPU: the process's peak resident set). images_per_s is the throughput "
                "(with prefetch: loading, prepare and writing overlap the model). pruner_ms_per_image is "
                "the pruner's critical-path part (inside prefill); engine_ms_per_image = prefill + "
                "decode without it; load / prepare / write = decoding + the encoder view, the pruner's "
                "image-only prepare(), mask encoding + prediction files; off_critical_path_ms_per_image "
                "= their sum when prefetch ran them in threads (0 inline); loader_wait_ms_per_image = how "
                "long the model waited for loaded images (with prefetch: the part the loader did not hide); "
                "single_request_ms_per_image = load + prepare + end to end + write, all counted serially "
                "(what one request costs)",
    }


def latency_views(per_image: list[tuple[dict, int]]) -> dict:
    """Both latency views from the batch records: the engine's own time with the pruner part
    separate, the work off the critical path, and one request with everything serial.

    Records written before the pipeline existed (no ``load`` / ``prepare`` / ``write``) count
    those parts as 0 and as inline.
    """
    def ms(values):
        return round(1e3 * statistics.median(values), 3)

    def part(b, key):
        return b.get(key, 0.0)

    flags = {bool(b.get("prefetch", False)) for b, _ in per_image}
    image_only = [(part(b, "load") + part(b, "prepare") + part(b, "write")) / n for b, n in per_image]
    return {
        "prefetch": flags.pop() if len(flags) == 1 else "mixed",
        "engine_ms_per_image": ms([(b["prefill"] + b["decode"] - b["pruner"]) / n for b, n in per_image]),
        "load_ms_per_image": ms([part(b, "load") / n for b, n in per_image]),
        "prepare_ms_per_image": ms([part(b, "prepare") / n for b, n in per_image]),
        "write_ms_per_image": ms([part(b, "write") / n for b, n in per_image]),
        "loader_wait_ms_per_image": ms([part(b, "wait") / n for b, n in per_image]),
        "off_critical_path_ms_per_image": ms([v if b.get("prefetch") else 0.0
                                              for v, (b, _) in zip(image_only, per_image)]),
        "single_request_ms_per_image": ms([v + b["end_to_end"] / n for v, (b, n) in zip(image_only, per_image)]),
    }


def print_summary(metrics: dict, run_dir: Path) -> None:
    print(f"\n{metrics['model']} | {metrics['pruner']} keep={metrics['keep']:g} | "
          f"{metrics['data']}-{metrics['split']} ({metrics['n_images']} images, {metrics['n_failed']} failed)")
    print("  ".join(f"{k:>7s}" for k in (*SCORES, "FLOPs")))
    flops = metrics["flops_ratio"]
    values = [f"{100 * metrics[k]:7.1f}" for k in SCORES] + [f"{100 * flops:6.1f}%" if flops else "    n/a"]
    print("  ".join(values))
    print("scores x100 (metrics.json holds fractions); CIDEr is pycocoevalcap's score x100; "
          "FLOPs: LLM prefill, % of unpruned")
    model = metrics["similarity_model"]
    protocol = "" if model.startswith(f"{PROTOCOL_MODEL}:") else \
        f"; the protocol's is {PROTOCOL_MODEL} (similarity_model=PATH), so recall is not comparable to papers"
    print(f"recall text similarity: {model}, {metrics['similarity']}{protocol}")
    timing = metrics.get("timing") or {}
    if "single_request_ms_per_image" in timing:
        mode = "on" if timing["prefetch"] is True else "off" if timing["prefetch"] is False else "mixed"
        rate = timing["images_per_s"]
        print(f"ms/image: pruner {timing['pruner_ms_per_image']:.1f} on the critical path + "
              f"{timing['prepare_ms_per_image']:.1f} prepare, engine {timing['engine_ms_per_image']:.1f}, "
              f"load {timing['load_ms_per_image']:.1f}, write {timing['write_ms_per_image']:.1f} "
              f"({timing['off_critical_path_ms_per_image']:.1f} off the critical path, prefetch {mode})")
        print(f"latency: single request {timing['single_request_ms_per_image']:.1f} ms/image | "
              f"throughput {rate if rate is not None else float('nan'):.2f} images/s")
    print(f"results: {run_dir}")
