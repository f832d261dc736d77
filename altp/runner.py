"""One run: data -> model (+ pruner in the engine) -> predictions -> GLaMM-protocol metrics.

``run(cfg)`` is what ``python run.py ...`` calls for every (multi)run job:

1. validate the config before anything heavy loads (``altp.validation``; ``ConfigError``: one
   line, field + fix);
2. derive the run directory from the config alone (``altp.run_identity``: every non-default
   setting that changes results is in its name), so a rerun resumes and two configs never
   collide; refuse to reuse a directory made with a different config unless ``overwrite=true``;
3. write the synthetic data on first use and load the split (``altp.data.prepare``), load the
   model once per process and check it against the model interface (``altp.models.loader``);
4. predict every image that has no trusted ``predictions/<id>.json`` (altp.manifest: missing,
   failed before, or not what this run wrote), batch by batch (``altp.predict``,
   ``altp.pipeline``), each file checked as the scorer will read it and written atomically
   (``altp.files``); an image that fails goes to ``errors.jsonl`` (altp.failures) and the run
   goes on (``timing`` / ``errors`` / ``manifest`` records: one file per process, see
   altp.summary);
5. score the predictions (eval.gcg) and write ``metrics.json`` last (then ``logger=wandb`` logs).

Under ``torchrun --nproc_per_node=N`` (altp.distributed) rank 0 claims the directory and lists
the missing predictions, every rank predicts a strided share of them, and rank 0 evaluates once
after all ranks are through. A run killed at any point (any rank) and rerun, with any number
of processes, ends with the same predictions and metrics as an uninterrupted one (timing aside).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from altp import distributed
from altp.data.prepare import ensure_synthetic, prepare_split
from altp.engine import PruningEngine
from altp.errors import ConfigError
from altp.failures import check_clash, discard_unused
from altp.files import append_jsonl, lock_directory, write_json_atomic
from altp.logger import make_logger, sample_figures
from altp.manifest import images_to_predict
from altp.models.loader import load_model
from altp.predict import predict_batch, predict_images, rank_stats
from altp.pruning import build_pruner
from altp.run_identity import (
    MODEL_FIELDS_UNNAMED,
    claim_directory,
    effective_keep,
    model_overrides,
    pruner_name,
    pruner_overrides,
    run_directory,
    run_identity,
    run_variant,
)
from altp.summary import print_summary, summarise
from altp.validation import validate
from eval.gcg import evaluate

# what scripts and tests import from here (the runner's parts live in the modules above)
__all__ = ["CONFIG_DIR", "MODEL_FIELDS_UNNAMED", "ConfigError", "append_jsonl", "claim_directory",
           "effective_keep", "ensure_synthetic", "load_model", "lock_directory", "model_overrides",
           "pick_device", "predict_and_score", "predict_batch", "predict_images", "prepare_split",
           "pruner_name", "pruner_overrides", "rank_stats", "run", "run_directory", "run_identity",
           "run_variant", "validate", "write_json_atomic"]
# the repository's configs folder, for scripts and tests that compose configs; the runner itself
# never reads it (a run's config is composed by Hydra and complete: altp.run_identity)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def pick_device(name: str) -> torch.device:
    """``auto`` = cuda when available, else cpu (cuda:LOCAL_RANK under torchrun)."""
    return distributed.pick_device(name)


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
    split = prepare_split(cfg)
    model = load_model(cfg, device)
    model.begin_run()
    pruner = build_pruner(cfg.pruner)
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
    metrics = summarise(cfg, pruner_name(cfg), pruner, model, split, run_dir, scores, run_variant(cfg),
                        effective_keep(cfg), pruner_overrides(cfg), ranks)
    write_json_atomic(run_dir / "metrics.json", metrics)
    print_summary(metrics, run_dir)
    make_logger(cfg).log_run(cfg, metrics, lambda n: sample_figures(model, engine, split, cfg.max_new_tokens, n))
    return metrics
