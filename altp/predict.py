"""The predict loop of one run: batches of images through ``model.predict``, files behind it.

Images come from the data pipeline's loader (``altp.pipeline.Loader``: decoded, and the pruner's
image-only work done ahead of the model with ``prefetch``), predictions go to its writer (checked
as the scorer will read them and written atomically, ``altp.manifest``). A batch that fails is
retried image by image, so one bad image cannot sink its batch; an image that still fails is a
record in this process's ``errors`` file and the loop goes on.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import torch
from tqdm import tqdm

from altp import distributed, pipeline
from altp.data.grandf import GCGSplit
from altp.files import append_jsonl
from altp.manifest import write_prediction
from altp.models.base import GCGModel
from altp.summary import record_file


def predict_batch(model: GCGModel, engine, items: list[pipeline.Item], cfg, writer: pipeline.Writer) -> None:
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


def predict_images(model: GCGModel, engine, split: GCGSplit, ids: list[str], cfg, run_dir: Path,
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
