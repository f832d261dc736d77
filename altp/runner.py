"""One run: data -> model (+ pruner in the engine) -> predictions -> GLaMM-protocol metrics.

``run(cfg)`` is what ``python run.py ...`` calls for every (multi)run job:

1. validate the config before anything heavy loads (``ConfigError``: one line, field + fix);
2. derive the run directory from the config alone (every non-default setting that changes
   results is in its name), so a rerun resumes and two configs never collide; refuse to reuse a directory made with a different config unless ``overwrite=true``;
3. predict every image that has no ``predictions/<id>.json`` yet, batch by batch, each file
   written atomically; an image that fails goes to ``errors.jsonl`` and the run goes on;
4. score the predictions (eval.gcg) and write ``metrics.json`` last.

A run killed at any point and rerun ends with the same predictions and metrics as an
uninterrupted one (timing aside).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import statistics
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from altp.data import synthetic
from altp.data.grandf import GCGSplit, encode_mask, load_image, load_split
from altp.engine import PruningEngine
from altp.models.tiny_gcg import WEIGHTS_DIR
from eval.flops import flops_ratio
from eval.gcg import evaluate

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
PRUNER_DIR = CONFIG_DIR / "pruner"
_MODEL_CACHE: dict[str, object] = {}  # the basic launcher runs a sweep in one process: load once


class ConfigError(ValueError):
    """A config problem found before anything heavy runs; the message is one line."""


# --- config ------------------------------------------------------------------------------
def pruner_name(cfg: DictConfig) -> str:
    target = cfg.pruner.get("_target_")
    for path in sorted(PRUNER_DIR.glob("*.yaml")):
        if OmegaConf.load(path).get("_target_") == target:
            return path.stem
    raise ConfigError(f"pruner: no configs/pruner/*.yaml has _target_ {target}; add one there")


def pruner_overrides(cfg: DictConfig, name: str) -> dict:
    """The pruner fields that differ from configs/pruner/<name>.yaml (they name the run)."""
    base = OmegaConf.merge(OmegaConf.masked_copy(cfg, ["keep", "seed", "model"]),
                           {"pruner": OmegaConf.load(PRUNER_DIR / f"{name}.yaml")})
    default = OmegaConf.to_container(base.pruner, resolve=True)
    current = OmegaConf.to_container(cfg.pruner, resolve=True)
    return {k: v for k, v in sorted(current.items()) if k not in ("keep", "seed") and default.get(k) != v}


def effective_keep(cfg: DictConfig, name: str) -> float:
    return 1.0 if name == "none" else float(cfg.keep)  # 'none' ignores keep: one run, not one per keep


def validate(cfg: DictConfig) -> None:
    """Everything a user can get wrong on the command line, before models or data load."""
    keep = cfg.get("keep")
    if not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise ConfigError(f"keep={keep}: must be a number in (0, 1], e.g. keep=0.25")
    if cfg.data.split not in synthetic.SPLITS:
        raise ConfigError(f"data.split={cfg.data.split}: must be val or test")
    limit = cfg.data.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"data.limit={limit}: must be a positive integer or null")
    if OmegaConf.is_missing(cfg.data, "root"):
        raise ConfigError(f"data.root is not set: pass data.root=DIR for data={cfg.data.name}")
    if cfg.data.get("generate") is None:
        for field in ("ann_dir", "image_dir"):
            if not Path(cfg.data[field]).is_dir():
                raise ConfigError(f"data.{field}={cfg.data[field]}: folder not found; set data.root "
                                  f"(or data.{field}) to where GranD-f lives")
    for field in cfg.model.get("required_dirs", []):  # weights folders of released checkpoints
        value = None if OmegaConf.is_missing(cfg.model, field) else cfg.model[field]
        if value is None or not Path(value).is_dir():
            raise ConfigError(f"model.{field}={value}: folder not found; {cfg.model.get('download_hint', '')}")
    if cfg.model.name == "tiny_gcg":
        weights = Path(cfg.model.weights or WEIGHTS_DIR)
        missing = [f for f in ("config.json", "model.safetensors") if not (weights / f).is_file()]
        if missing:
            raise ConfigError(f"model.weights={weights}: {', '.join(missing)} missing; use null for the "
                              "packaged weights or train: python scripts/train_tiny_gcg.py --out DIR")
    if cfg.similarity_model is not None and not Path(cfg.similarity_model).is_dir():
        raise ConfigError(f"similarity_model={cfg.similarity_model}: folder not found; give a local "
                          "bert-base-uncased folder or null")
    if cfg.batch_size < 1 or cfg.max_new_tokens < 1:
        raise ConfigError("batch_size and max_new_tokens must be >= 1")
    try:
        pruner = instantiate(cfg.pruner)  # cheap: checks the pruner's own parameters
    except Exception as err:  # noqa: BLE001 - any constructor complaint is a config error
        cause = err.__cause__ or err
        raise ConfigError(f"pruner ({pruner_name(cfg)}): {cause}") from None
    depth = cfg.model.llm.layers
    if any(layer >= depth for layer in pruner.layers):
        raise ConfigError(f"pruner acts at layer(s) {list(pruner.layers)} but {cfg.model.name}'s LLM has "
                          f"{depth} layers (model.llm.layers); choose pruner.layer < {depth}")


def run_variant(cfg: DictConfig, name: str) -> dict:
    """Non-default settings that change results: pruner params, seed, generation, similarity."""
    variant = pruner_overrides(cfg, name)
    if "seed" in cfg.pruner and cfg.seed != 0:
        variant["seed"] = cfg.seed
    if cfg.max_new_tokens != cfg.model.max_new_tokens:
        variant["max_new_tokens"] = cfg.max_new_tokens
    if cfg.similarity != "mean_pool":
        variant["similarity"] = cfg.similarity
    if cfg.similarity_model is not None:
        variant["similarity_model"] = _path_tag(cfg.similarity_model)
    return variant


def run_directory(cfg: DictConfig) -> Path:
    name = pruner_name(cfg)
    params = ",".join(f"{k}={_short(v)}" for k, v in run_variant(cfg, name).items())
    limit = f"-limit{cfg.data.limit}" if cfg.data.get("limit") else ""
    model = cfg.model.name + (f"[weights={_path_tag(cfg.model.weights)}]" if cfg.model.get("weights") else "")
    pruner = f"{name}[{params}]" if params else name
    keep = effective_keep(cfg, name)
    return (Path(cfg.output_root) / "runs" / f"{cfg.data.name}-{cfg.data.split}{limit}" / model
            / pruner / f"keep{keep:g}")


def _path_tag(path: str) -> str:
    """Folder name + a hash of its absolute path: readable, and two folders never collide."""
    resolved = str(Path(path).resolve())
    return f"{Path(resolved).name}-{hashlib.sha1(resolved.encode()).hexdigest()[:6]}"


def _short(value) -> str:
    return "-".join(map(str, value)) if isinstance(value, list) else str(value)


def run_identity(cfg: DictConfig) -> dict:
    """What determines the results; a run directory holds results of exactly one identity."""
    name = pruner_name(cfg)
    return {"model": OmegaConf.to_container(cfg.model, resolve=True),
            "data": OmegaConf.to_container(cfg.data, resolve=True),
            "pruner": name, "pruner_config": OmegaConf.to_container(cfg.pruner, resolve=True),
            "keep": effective_keep(cfg, name), "max_new_tokens": cfg.max_new_tokens,
            "similarity_model": cfg.similarity_model, "similarity": cfg.similarity}


def claim_directory(run_dir: Path, identity: dict, overwrite: bool) -> None:
    path = run_dir / "run_config.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != identity:
            if not overwrite:
                changed = sorted(k for k in identity if previous.get(k) != identity[k])
                raise ConfigError(f"{run_dir} holds results of a different config (changed: "
                                  f"{', '.join(changed)}); rerun with overwrite=true to discard them")
            for sub in ("predictions",):
                for file in (run_dir / sub).glob("*.json"):
                    file.unlink()
            for file in ("errors.jsonl", "timing.jsonl", "metrics.json"):
                (run_dir / file).unlink(missing_ok=True)
    (run_dir / "predictions").mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, identity)


# --- files -------------------------------------------------------------------------------
def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# --- data and model ----------------------------------------------------------------------
def prepare_split(cfg: DictConfig) -> GCGSplit:
    data = cfg.data
    if data.get("generate") is not None:
        ensure_synthetic(Path(data.root), OmegaConf.to_container(data.generate))
    split = load_split(data.ann_dir, data.split, data.image_dir)
    return replace(split, images=split.images[:data.limit]) if data.get("limit") else split


def ensure_synthetic(root: Path, generate: dict) -> None:
    """Write the synthetic dataset on first use; finish one that a killed run left half done."""
    wanted = synthetic.dataset_config(**generate)
    found = synthetic.read_dataset_config(root)
    if found == wanted:
        return
    marker = root / ".generating"  # our own unfinished generation: safe to redo (deterministic)
    if (found is not None or (root / "annotations").exists()) and not marker.exists():
        raise ConfigError(f"data.root={root} holds a different synthetic dataset; delete it or choose "
                          "another data.root")
    print(f"generating synthetic GranD-f into {root} (first use) ...", flush=True)
    root.mkdir(parents=True, exist_ok=True)
    marker.touch()
    synthetic.write_dataset(root, **generate)
    marker.unlink()


def load_model(cfg: DictConfig, device: torch.device):
    key = json.dumps(OmegaConf.to_container(cfg.model, resolve=True), sort_keys=True) + str(device)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        try:
            model = instantiate(cfg.model.loader)
        except InstantiationException as err:  # a broken checkpoint folder is a config error
            if isinstance(err.__cause__, (OSError, ValueError)):
                raise ConfigError(f"model ({cfg.model.name}): {err.__cause__}") from None
            raise
        _MODEL_CACHE[key] = model.to(device)
    return _MODEL_CACHE[key]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# --- the run -----------------------------------------------------------------------------
def predict_batch(model, engine, split: GCGSplit, ids: list[str], cfg, pred_dir: Path) -> dict:
    images = [load_image(split.image_path(i)) for i in ids]
    start = time.perf_counter()
    predictions, out = model.predict(images, engine, cfg.max_new_tokens)
    elapsed = time.perf_counter() - start
    for image_id, prediction in zip(ids, predictions):
        record = {"image_id": image_id, "caption": prediction.caption, "phrases": prediction.phrases,
                  "pred_masks": [encode_mask(m) for m in prediction.masks]}
        write_json_atomic(pred_dir / f"{image_id}.json", record)
    return {"images": ids, "end_to_end": elapsed, **out.timing,
            "tokens_per_layer": out.tokens_per_layer, "visual_per_layer": out.visual_per_layer}


def run(cfg: DictConfig) -> dict:
    validate(cfg)
    name = pruner_name(cfg)
    run_dir = run_directory(cfg)
    identity = run_identity(cfg)
    claim_directory(run_dir, identity, cfg.overwrite)
    if (run_dir / "metrics.json").exists():
        print(f"already done: {run_dir}/metrics.json")
        return json.loads((run_dir / "metrics.json").read_text())

    split = prepare_split(cfg)
    device = pick_device(cfg.device)
    model = load_model(cfg, device)
    if len(model.llm.model.layers) != cfg.model.llm.layers:
        raise ConfigError(f"model.llm.layers={cfg.model.llm.layers} but the loaded LLM has "
                          f"{len(model.llm.model.layers)} layers; set model.llm.layers to match")
    pruner = instantiate(cfg.pruner)
    engine = PruningEngine(model.llm, pruner)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    pred_dir = run_dir / "predictions"
    todo = [img.image_id for img in split if not (pred_dir / f"{img.image_id}.json").exists()]
    bar = tqdm(total=len(split), initial=len(split) - len(todo), desc=run_dir.name,
               disable=not cfg.progress, unit="img")
    for first in range(0, len(todo), cfg.batch_size):
        batch = todo[first:first + cfg.batch_size]
        try:
            record = predict_batch(model, engine, split, batch, cfg, pred_dir)
            append_jsonl(run_dir / "timing.jsonl", record)
        except Exception:  # noqa: BLE001 - retry alone so one bad image cannot sink its batch
            for image_id in batch:
                try:
                    append_jsonl(run_dir / "timing.jsonl",
                                 predict_batch(model, engine, split, [image_id], cfg, pred_dir))
                except Exception as err:  # noqa: BLE001 - recorded, the run goes on
                    append_jsonl(run_dir / "errors.jsonl", {"image_id": image_id, "error": str(err).splitlines()[0]
                                                            if str(err) else type(err).__name__,
                                                            "traceback": traceback.format_exc(limit=3)})
        bar.update(len(batch))
    bar.close()

    scores = evaluate(pred_dir, split, cfg.similarity_model, cfg.similarity)
    metrics = summarise(cfg, name, pruner, model, split, run_dir, scores)
    write_json_atomic(run_dir / "metrics.json", metrics)
    print_summary(metrics, run_dir)
    return metrics


def summarise(cfg, name, pruner, model, split, run_dir: Path, scores: dict) -> dict:
    batches = read_jsonl(run_dir / "timing.jsonl")
    failed = {e["image_id"] for e in read_jsonl(run_dir / "errors.jsonl")}
    failed -= {p.stem for p in (run_dir / "predictions").glob("*.json")}
    n_visual = model.n_visual
    llm = model.llm.config
    kept_tokens = pruner.stage_budgets(n_visual) if pruner.layers else [n_visual]
    schedule = batches[0]["tokens_per_layer"] if batches else []
    # the unpruned prompt length: layer 0 may already run on fewer tokens (K = 0 pruners)
    full = schedule[0] - batches[0]["visual_per_layer"][0] + n_visual if schedule else 0
    return {
        "model": cfg.model.name, "data": cfg.data.name, "split": cfg.data.split, "limit": cfg.data.get("limit"),
        "pruner": name,
        "pruner_params": pruner.describe() | pruner_overrides(cfg, name),
        "variant": run_variant(cfg, name), "keep": effective_keep(cfg, name), "visual_tokens": n_visual,
        "kept_tokens": kept_tokens,
        "prune_layers": list(pruner.layers), "n_images": len(split), "n_failed": len(failed),
        **{k: scores[k] for k in ("METEOR", "CIDEr", "AP50", "mIoU", "recall")},
        "flops_ratio": flops_ratio(schedule, full, llm.hidden_size, llm.intermediate_size) if schedule else None,
        "tokens_per_layer": schedule,
        "visual_per_layer": batches[0]["visual_per_layer"] if batches else [],
        "timing": timing_summary(batches),
        "similarity_model": scores["similarity_model"], "similarity": scores["similarity"],
        "evaluation": {k: v for k, v in scores.items() if k not in ("METEOR", "CIDEr", "AP50", "mIoU", "recall")},
        "model_deviations": getattr(model, "deviations", {}),
        "device": str(model.llm.device), "dtype": str(model.llm.dtype), "batch_size": cfg.batch_size,
        "max_new_tokens": cfg.max_new_tokens, "torch": torch.__version__, "run_dir": str(run_dir),
    }


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def timing_summary(batches: list[dict]) -> dict:
    """Medians over batches (the first is warm-up and dropped when there are more), per image."""
    measured = batches[1:] if len(batches) > 1 else batches
    if not measured:
        return {}

    def median(values):
        return round(1e3 * statistics.median(values), 3)

    per_image = [(b, len(b["images"])) for b in measured]
    if torch.cuda.is_available():  # reset when the run's prediction loop started
        memory = {"peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    else:  # CPU: the process's peak resident set (includes loading and earlier sweep jobs)
        memory = {"peak_process_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    return {
        "pruner_ms_per_image": median([b["pruner"] / n for b, n in per_image]),
        "prefill_ms_per_image": median([b["prefill"] / n for b, n in per_image]),
        "decode_ms_per_token": median([b["decode"] / max(1, b["decode_steps"]) for b, _ in per_image]),
        "end_to_end_ms_per_image": median([b["end_to_end"] / n for b, n in per_image]),
        "batches_measured": len(measured), **memory,
        "note": "per-image values are batch times divided by the batch size; prefill includes the "
                "pruner; decode is per batch step",
    }


def print_summary(metrics: dict, run_dir: Path) -> None:
    keys = ("METEOR", "CIDEr", "AP50", "mIoU", "recall")
    print(f"\n{metrics['model']} | {metrics['pruner']} keep={metrics['keep']:g} | "
          f"{metrics['data']}-{metrics['split']} ({metrics['n_images']} images, {metrics['n_failed']} failed)")
    print("  ".join(f"{k:>7s}" for k in (*keys, "FLOPs")))
    flops = metrics["flops_ratio"]
    values = [f"{100 * metrics[k]:7.1f}" for k in keys] + [f"{100 * flops:6.1f}%" if flops else "    n/a"]
    print("  ".join(values))
    print(f"results: {run_dir}")

