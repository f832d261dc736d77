"""The predict loop's data pipeline: images and image-only pruner work ahead of the model, and
prediction files written behind it.

* ``Loader`` decodes each image (altp.data.grandf.load_checked_image) and, when the pruner declares
  image-only work (``Pruner.prepare``: ALTP's and DDC's SLIC superpixels, token -> region map
  and densities), runs it on the image as the model's encoder sees it (``model.encoder_view``),
  in ``workers`` threads, up to ``depth`` images ahead of the model. Items come out in the
  order of ``ids``, so batches are the same as without prefetching. Threads, not DataLoader
  processes: the work is PIL / NumPy / scikit-image (SciPy's filters and NumPy release the
  GIL), and a forked worker would copy a 7B model's process for nothing.
* ``Writer`` RLE-encodes the masks (COCO compressed RLE, the prediction contract) and writes
  each ``predictions/<id>.json`` atomically, then appends the batch's timing record, in one
  thread behind the model. Kill-safety is as before: a prediction file exists only complete
  (temp file + rename), a batch whose files were not yet written is predicted again on resume,
  and this process's timing / error records have one writer (this thread).

A failure of one image (an unreadable file, ``prepare`` raising) is an ``Item`` with an error:
the runner records it in errors.jsonl and the run goes on. ``prefetch=false`` does all of this
inline, in the main thread, with no ``prepare`` (the pruner then does that work in ``select``):
the same predictions, and the single-request view of the latency.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from altp.data.grandf import encode_mask, load_checked_image


@dataclass
class Item:
    """One image, ready for ``model.predict`` (or its failure)."""

    image_id: str
    image: object = None  # PIL.Image (RGB, decoded)
    prepared: object = None  # the pruner's prepare() state, None when it has none or prefetch is off
    error: dict | None = None  # the errors.jsonl record when loading or preparing failed
    load_s: float = 0.0  # decoding + the encoder view
    prepare_s: float = 0.0  # Pruner.prepare
    wait_s: float = 0.0  # how long the model waited for this item (all of its loading when inline)


def error_record(image_id: str, err: BaseException) -> dict:
    """The errors.jsonl record of a failed image: id, the message's first line, a short traceback."""
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    trace = "".join(traceback.format_exception(type(err), err, err.__traceback__, limit=3))
    return {"image_id": image_id, "error": message, "traceback": trace}


def check_settings(prefetch, workers, torch_threads) -> str | None:
    """One-line problem with ``prefetch`` / ``prefetch_workers`` / ``torch_threads``, or None."""
    if not isinstance(prefetch, bool):
        return f"prefetch={prefetch}: must be true or false"
    if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        return f"prefetch_workers={workers}: must be auto or an integer >= 1"
    if torch_threads not in (None, "auto") and (isinstance(torch_threads, bool) or not isinstance(torch_threads, int)
                                                or torch_threads < 1):
        return f"torch_threads={torch_threads}: must be null, auto or an integer >= 1"
    return None


def thread_counts(workers, torch_threads, cores: int | None = None) -> tuple[int, int | None]:
    """(loader threads, torch intra-op threads or None = torch's default) from the config.

    ``auto`` workers: one per 4 cores, at least 1 and at most 4 (1 on a 2-core machine: one
    SLIC at a time overlaps the model; more would take cores from torch's own threads, which
    on a CPU model are the critical path). ``auto`` torch threads: the cores the workers leave,
    so the two never oversubscribe the machine (on a GPU it only concerns the host side).
    """
    cores = cores or os.cpu_count() or 1
    n_workers = max(1, min(4, cores // 4)) if workers == "auto" else int(workers)
    if torch_threads == "auto":
        return n_workers, max(1, cores - n_workers)
    return n_workers, None if torch_threads is None else int(torch_threads)


def _load(split, image_id: str, model, pruner, prepare: bool) -> Item:
    item = Item(image_id)
    start = time.perf_counter()
    try:
        item.image = load_checked_image(split, image_id)  # refused when not the GT's size
        view = model.encoder_view(item.image) if prepare else None
        item.load_s = time.perf_counter() - start
        if prepare:
            start = time.perf_counter()
            item.prepared = pruner.prepare(view, tuple(model.grid))
            item.prepare_s = time.perf_counter() - start
    except Exception as err:  # noqa: BLE001 - one bad image is a recorded failure, not a dead run
        item.image, item.error = None, error_record(image_id, err)
    return item


class Loader:
    """Items of ``ids`` in order; ``prefetch``: loaded and prepared by a thread pool ahead."""

    def __init__(self, split, ids: list[str], model, pruner, prefetch: bool, workers: int = 1,
                 depth: int = 4):
        self.split, self.ids, self.model, self.pruner = split, ids, model, pruner
        self.prepare = prefetch and pruner.prepares_images
        self.workers, self.depth = max(1, workers), max(1, depth)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="altp-load") if prefetch else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def batches(self, size: int) -> Iterator[list[Item]]:
        items = self._items()
        while batch := list(islice(items, size)):
            yield batch

    def _items(self) -> Iterator[Item]:
        if self._pool is None:
            for image_id in self.ids:
                start = time.perf_counter()
                item = _load(self.split, image_id, self.model, self.pruner, False)
                item.wait_s = time.perf_counter() - start
                yield item
            return
        pending, upcoming = deque(), iter(self.ids)

        def submit():
            for image_id in upcoming:
                pending.append(self._pool.submit(_load, self.split, image_id, self.model, self.pruner,
                                                 self.prepare))
                if len(pending) >= self.depth:
                    return

        submit()
        while pending:
            start = time.perf_counter()
            item = pending.popleft().result()
            item.wait_s = time.perf_counter() - start
            submit()
            yield item


class Writer:
    """Encodes and writes predictions, appends timing and error records; threaded or inline.

    ``write_json(path, obj)`` must be atomic and ``append(path, record)`` durable (the runner's
    write_json_atomic / append_jsonl). ``close`` (the context's exit) writes everything queued.
    """

    _STOP = object()

    def __init__(self, pred_dir: Path, timing: Path, errors: Path, write_json: Callable,
                 append: Callable, threaded: bool, depth: int = 4):
        self.pred_dir, self.timing, self.errors = pred_dir, timing, errors
        self.write_json, self.append = write_json, append
        self.failure: BaseException | None = None
        self._queue: queue.Queue | None = queue.Queue(depth) if threaded else None
        self._thread = threading.Thread(target=self._run, name="altp-write", daemon=True) if threaded else None
        if self._thread is not None:
            self._thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def predictions(self, ids: list[str], predictions: list, record: dict) -> None:
        """One batch: its prediction files, then its timing record (with ``write`` seconds)."""
        self._put(("batch", ids, predictions, record))

    def error(self, record: dict) -> None:
        self._put(("error", record))

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(self._STOP)
            self._thread.join()
        self._raise()

    def _put(self, job) -> None:
        self._raise()
        if self._queue is None:
            self._do(job)
        else:
            self._queue.put(job)  # blocks when `depth` batches wait: bounded memory

    def _raise(self) -> None:
        if self.failure is not None:
            raise RuntimeError(f"prediction writer failed: {self.failure}") from self.failure

    def _run(self) -> None:
        while (job := self._queue.get()) is not self._STOP:
            if self.failure is None:
                try:
                    self._do(job)
                except BaseException as err:  # noqa: BLE001 - a records file failed: the main thread stops
                    self.failure = err

    def _do(self, job) -> None:
        if job[0] == "error":
            self.append(self.errors, job[1])
            return
        _, ids, predictions, record = job
        start = time.perf_counter()
        for image_id, prediction in zip(ids, predictions):
            try:
                self.write_json(self.pred_dir / f"{image_id}.json", {
                    "image_id": image_id, "caption": prediction.caption, "phrases": prediction.phrases,
                    "pred_masks": [encode_mask(m) for m in prediction.masks]})
            except Exception as err:  # noqa: BLE001 - that image has no prediction: recorded
                self.append(self.errors, error_record(image_id, err))
        self.append(self.timing, record | {"write": time.perf_counter() - start})
