"""One run: data -> model (+ pruner in the engine) -> predictions -> GLaMM-protocol metrics.

``run(cfg)`` is what ``python run.py ...`` calls for every (multi)run job:

1. validate the config before anything heavy loads (``ConfigError``: one line, field + fix);
2. derive the run directory from the config alone (every non-default setting that changes
   results is in its name), so a rerun resumes and two configs never collide; refuse to reuse a directory made with a different config unless ``overwrite=true``;
3. predict every image that has no trusted ``predictions/<id>.json`` (altp.manifest: missing,
   failed before, or not what this run wrote), batch by batch, each file checked as the scorer
   will read it and written atomically; an image that fails goes to ``errors.jsonl``
   (altp.failures) and the run goes on (``timing`` / ``errors`` / ``manifest`` records: one file
   per process, see altp.summary);
4. score the predictions (eval.gcg) and write ``metrics.json`` last (then ``logger=wandb`` logs).

Under ``torchrun --nproc_per_node=N`` (altp.distributed) rank 0 claims the directory and lists
the missing predictions, every rank predicts a strided share of them, and rank 0 evaluates once
after all ranks are through. A run killed at any point (any rank) and rerun, with any number
of processes, ends with the same predictions and metrics as an uninterrupted one (timing aside).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import resource
import time
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from altp import distributed, pipeline
from altp.config_checks import check_settings
from altp.data import synthetic
from altp.data.grandf import GCGSplit, load_split
from altp.engine import PruningEngine
from altp.errors import ConfigError
from altp.failures import (
    CHECKPOINT_ERRORS,
    check_clash,
    checkpoint_problem,
    discard_unused,
)
from altp.files import append_jsonl, lock_directory, write_json_atomic
from altp.logger import make_logger, sample_figures
from altp.manifest import images_to_predict, run_files, write_prediction
from altp.summary import print_summary, record_file, record_files, summarise
from eval.gcg import evaluate

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
PRUNER_DIR = CONFIG_DIR / "pruner"
MODEL_DIR = CONFIG_DIR / "model"
# model fields that never change results (or are named elsewhere): left out of the run's name
MODEL_FIELDS_UNNAMED = {"name", "loader", "preflight", "fingerprint", "required_dirs", "download_hint",
                        "batch_size", "max_new_tokens", "llm"}
_MODEL_CACHE: dict[str, object] = {}  # the basic launcher runs a sweep in one process: load once


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
    preflight = cfg.model.get("preflight")  # the model's own cheap check of its files
    problem = instantiate(preflight) if preflight is not None else None
    if problem:
        raise ConfigError(problem)
    if cfg.similarity_model is not None and not Path(cfg.similarity_model).is_dir():
        raise ConfigError(f"similarity_model={cfg.similarity_model}: folder not found; give a local "
                          "bert-base-uncased folder or null")
    check_settings(cfg)  # batch_size / max_new_tokens types, the device, the GT files
    problem = pipeline.check_settings(cfg.get("prefetch"), cfg.get("prefetch_workers"), cfg.get("torch_threads"))
    if problem:
        raise ConfigError(problem)
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


def model_overrides(cfg: DictConfig) -> dict:
    """Model settings that differ from configs/model/<name>.yaml (``model.retry_questions=true``,
    other weights...): they name the run. Mandatory fields (``???``, the download folders) are
    not named: a run directory holding another checkpoint's results is refused instead."""
    path = MODEL_DIR / f"{cfg.model.name}.yaml"
    if not path.is_file():
        return {}
    default = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    current = OmegaConf.to_container(cfg.model, resolve=False)  # interpolations stay as written
    named = {}
    for key, value in current.items():
        if key in MODEL_FIELDS_UNNAMED or key not in default or default[key] == "???":
            continue
        if value != default[key]:
            is_path = isinstance(value, str) and ("/" in value or Path(value).exists())
            named[key] = _path_tag(str(cfg.model[key])) if is_path else value
    return named


def run_directory(cfg: DictConfig) -> Path:
    name = pruner_name(cfg)
    params = ",".join(f"{k}={_short(v)}" for k, v in run_variant(cfg, name).items())
    limit = f"-limit{cfg.data.limit}" if cfg.data.get("limit") else ""
    settings = ",".join(f"{k}={_short(v)}" for k, v in model_overrides(cfg).items())
    model = cfg.model.name + (f"[{settings}]" if settings else "")
    pruner = f"{name}[{params}]" if params else name
    keep = effective_keep(cfg, name)
    return (Path(cfg.output_root) / "runs" / f"{cfg.data.name}-{cfg.data.split}{limit}" / model
            / pruner / f"keep{keep:g}")


def _path_tag(path: str) -> str:
    """Folder name + a hash of its absolute path: readable, and two folders never collide."""
    resolved = str(Path(path).resolve())
    return f"{Path(resolved).name}-{hashlib.sha1(resolved.encode()).hexdigest()[:6]}"


def _short(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()  # as typed on the command line
    return "-".join(map(str, value)) if isinstance(value, list) else str(value)


def run_identity(cfg: DictConfig) -> dict:
    """What determines the results; a run directory holds results of exactly one identity."""
    name = pruner_name(cfg)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    # what is loaded and how; batch size, hints, file checks and declared shapes change no result
    identity = {k: model[k] for k in ("name", "loader")}
    if cfg.model.get("fingerprint") is not None:  # the weights' content, where cheap to hash
        identity["weights"] = instantiate(cfg.model.fingerprint)
    return {"model": identity,
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
            for file in [*(run_dir / "predictions").glob("*.json"), *record_files(run_dir, "errors"),
                         *record_files(run_dir, "timing"), *run_files(run_dir), run_dir / "metrics.json"]:
                file.unlink(missing_ok=True)
    (run_dir / "predictions").mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, identity)


# --- data and model ----------------------------------------------------------------------
def prepare_split(cfg: DictConfig) -> GCGSplit:
    data = cfg.data
    if data.get("generate") is not None:
        ensure_synthetic(Path(data.root), OmegaConf.to_container(data.generate))
    return load_split(data.ann_dir, data.split, data.image_dir, limit=data.get("limit"))


def ensure_synthetic(root: Path, generate: dict) -> None:
    """Write the synthetic dataset on first use; finish one that a killed run left half done."""
    wanted = synthetic.dataset_config(**generate)
    if synthetic.read_dataset_config(root) == wanted:
        return
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a") as lock:  # parallel jobs of a sweep: one writes, the others wait
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:
            pass
        _generate_synthetic(root, generate, wanted)


def _generate_synthetic(root: Path, generate: dict, wanted: dict) -> None:
    found = synthetic.read_dataset_config(root)
    if found == wanted:
        return
    marker = root / ".generating"  # our own unfinished generation: safe to redo (deterministic)
    if (found is not None or (root / "annotations").exists()) and not marker.exists():
        raise ConfigError(f"data.root={root} holds a different synthetic dataset; delete it or choose "
                          "another data.root")
    print(f"generating synthetic GranD-f into {root} (first use) ...", flush=True)
    marker.touch()
    synthetic.write_dataset(root, **generate)
    marker.unlink()


def load_model(cfg: DictConfig, device: torch.device):
    key = json.dumps(run_identity(cfg)["model"], sort_keys=True) + str(device)  # incl. the weights' content
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        try:
            model = instantiate(cfg.model.loader)
        except InstantiationException as err:  # a broken checkpoint folder is a config error
            if isinstance(err.__cause__, CHECKPOINT_ERRORS):
                raise ConfigError(f"model ({cfg.model.name}): {checkpoint_problem(err.__cause__, cfg.model.loader)}") from None
            raise
        _MODEL_CACHE[key] = model.to(device)
    return _MODEL_CACHE[key]


def pick_device(name: str) -> torch.device:
    """``auto`` = cuda when available, else cpu (cuda:LOCAL_RANK under torchrun)."""
    return distributed.pick_device(name)


# --- the run -----------------------------------------------------------------------------
def predict_batch(model, engine, items: list[pipeline.Item], cfg, writer: pipeline.Writer) -> None:
    """One model call on loaded items; the writer encodes and writes the predictions."""
    ids = [item.image_id for item in items]
    start = time.perf_counter()
    predictions, out = model.predict([item.image for item in items], engine, cfg.max_new_tokens,
                                     prepared=[item.prepared for item in items])
    elapsed = time.perf_counter() - start
    writer.predictions(ids, predictions, {
        "images": ids, "end_to_end": elapsed, **out.timing,
        "tokens_per_layer": out.tokens_per_layer, "visual_per_layer": out.visual_per_layer,
        "load": sum(item.load_s for item in items), "prepare": sum(item.prepare_s for item in items),
        "wait": sum(item.wait_s for item in items), "prefetch": bool(cfg.prefetch)})


def run(cfg: DictConfig) -> dict:
    """One run; under torchrun each rank predicts a strided share and rank 0 evaluates."""
    validate(cfg)
    info, device = distributed.setup(cfg.device)
    run_dir = run_directory(cfg)
    held = {}

    def start():  # rank 0 only, before any rank touches the run directory
        split = prepare_split(cfg)  # first: bad ground truth leaves no directory; synthetic: written on first use
        held["fresh"] = not run_dir.exists()
        held["lock"] = lock_directory(run_dir)
        if held["lock"] is None:
            check_clash(run_dir, run_identity(cfg))
            return "busy", []
        claim_directory(run_dir, run_identity(cfg), cfg.overwrite)
        todo = images_to_predict(run_dir, split)  # missing, failed, or not what this run wrote
        if todo:  # metrics.json no longer describes the predictions: a kill now must not leave it "done"
            (run_dir / "metrics.json").unlink(missing_ok=True)
        return ("done" if (run_dir / "metrics.json").exists() else "todo"), todo

    try:
        state, todo = distributed.rank0_first(info, start)
        if state == "busy":
            print(f"skipped: another process is producing {run_dir} (its .lock is held)")
            return {"skipped": "another process holds the run directory's lock", "run_dir": str(run_dir)}
        if state == "done":
            metrics = json.loads((run_dir / "metrics.json").read_text())
            if info.is_main:
                print(f"already done: {run_dir}/metrics.json")
                make_logger(cfg).log_run(cfg, metrics)
            return metrics
        return predict_and_score(cfg, info, device, run_dir, todo)
    except BaseException:
        if held.get("fresh") and held.get("lock") is not None:
            discard_unused(run_dir)  # a failed start leaves no folder holding only run_config.json
        raise
    finally:
        if held.get("lock") is not None:
            held["lock"].close()


def predict_and_score(cfg: DictConfig, info: distributed.Dist, device: torch.device, run_dir: Path,
                      todo: list[str]) -> dict:
    name = pruner_name(cfg)
    split = prepare_split(cfg)
    model = load_model(cfg, device)
    if len(model.llm.model.layers) != cfg.model.llm.layers:
        raise ConfigError(f"model.llm.layers={cfg.model.llm.layers} but the loaded LLM has "
                          f"{len(model.llm.model.layers)} layers; set model.llm.layers to match")
    pruner = instantiate(cfg.pruner)
    engine = PruningEngine(model.llm, pruner)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    mine = distributed.shard(todo, info)
    start = time.perf_counter()
    predict_images(model, engine, split, mine, cfg, run_dir, info, done=len(split) - len(todo))
    ranks = distributed.gather(info, rank_stats(info, len(mine), time.perf_counter() - start, device))
    if not info.is_main:  # rank 0 evaluates once, with every rank's predictions on disk
        return {"rank": info.rank, "images_predicted": len(mine), "run_dir": str(run_dir)}

    scores = evaluate(run_dir / "predictions", split, cfg.similarity_model, cfg.similarity)
    metrics = summarise(cfg, name, pruner, model, split, run_dir, scores, run_variant(cfg, name),
                        effective_keep(cfg, name), pruner_overrides(cfg, name), ranks)
    write_json_atomic(run_dir / "metrics.json", metrics)
    print_summary(metrics, run_dir)
    make_logger(cfg).log_run(cfg, metrics, lambda n: sample_figures(model, engine, split, cfg.max_new_tokens, n))
    return metrics


def predict_images(model, engine, split: GCGSplit, ids: list[str], cfg, run_dir: Path,
                   info: distributed.Dist, done: int) -> None:
    """Predict ``ids`` batch by batch; this process's timing / error records go to its own files.

    ``prefetch``: images are decoded and the pruner's image-only work is done in loader threads
    ahead of the model, files are written by a writer thread behind it (altp.pipeline)."""
    pred_dir = run_dir / "predictions"
    timing = record_file(run_dir, "timing", info.rank, info.world)
    errors = record_file(run_dir, "errors", info.rank, info.world)
    if info.world == 1:
        bar = tqdm(total=len(split), initial=done, desc=run_dir.name, disable=not cfg.progress, unit="img")
    else:  # rank 0's share stands for the whole
        bar = tqdm(total=len(ids), desc=f"{run_dir.name} rank0/{info.world}", unit="img",
                   disable=not cfg.progress or not info.is_main)
    workers, threads = pipeline.thread_counts(cfg.prefetch_workers, cfg.torch_threads)
    if threads is not None:
        torch.set_num_threads(threads)
    def write(path: Path, record: dict) -> None:  # checked as the scorer will, hashed in the manifest
        write_prediction(path.parent, record, split.by_id(record["image_id"]))

    with pipeline.Writer(pred_dir, timing, errors, write, append_jsonl, cfg.prefetch) as writer, \
            pipeline.Loader(split, ids, model, engine.pruner, cfg.prefetch, workers,
                            depth=2 * max(cfg.batch_size, workers)) as loader:
        for batch in loader.batches(cfg.batch_size):
            for item in batch:
                if item.error is not None:  # unreadable image or failed prepare: recorded
                    writer.error(item.error)
            loaded = [item for item in batch if item.error is None]
            try:
                if loaded:
                    predict_batch(model, engine, loaded, cfg, writer)
            except Exception:  # noqa: BLE001 - retry alone so one bad image cannot sink its batch
                for item in loaded:
                    try:
                        predict_batch(model, engine, [item], cfg, writer)
                    except Exception as err:  # noqa: BLE001 - recorded, the run goes on
                        writer.error(pipeline.error_record(item.image_id, err))
            bar.update(len(batch))
    bar.close()


def rank_stats(info: distributed.Dist, images: int, wall: float, device: torch.device) -> dict:
    stats = {"rank": info.rank, "images": images, "wall_s": round(wall, 3)}
    if device.type == "cuda":  # reset when the prediction loop started
        stats["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    else:  # the process's peak resident set (includes loading and earlier sweep jobs)
        stats["peak_process_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return stats
