"""The predict loop's pipeline (altp.pipeline): loader threads, the async writer, both latency views.

* the loader gives items in order, batch by batch, with ``prepare`` states equal to the inline
  ones, every time (threads finish in any order);
* an unreadable image and a ``prepare`` that raises are items with an error, the others load;
* the writer writes every queued prediction before ``close`` and records a failed write;
* ``prefetch=true`` and ``false`` give byte-identical ALTP prediction files, also after a SIGKILL
  of a prefetching run and its resume (slow).
"""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from script_helpers import kill_and_resume
from test_runner import ROOT, compose_cfg, overrides, workspace  # noqa: F401 - workspace: the fixture

from altp.altp import ALTP
from altp.data.synthetic import render_scene
from altp.pipeline import Loader, Writer, check_settings, thread_counts
from altp.runner import ConfigError, append_jsonl, run, validate, write_json_atomic
from altp.summary import latency_views

GRID, SIZE = (24, 24), 96


class Split:
    def __init__(self, folder: Path):
        self.folder = folder

    def image_path(self, image_id: str) -> Path:
        return self.folder / f"{image_id}.png"

    def by_id(self, image_id: str) -> SimpleNamespace:  # the GT size the loader checks against
        width, height = Image.open(self.image_path(image_id)).size
        return SimpleNamespace(width=width, height=height)


class Model:
    """What the loader reads of a model: its token grid and what its encoder sees."""

    grid = GRID

    @staticmethod
    def encoder_view(image):
        return np.asarray(image, np.float32) / 255


class StrictALTP(ALTP):
    def prepare(self, image, grid):
        if image.shape != (SIZE, SIZE, 3):
            raise ValueError(f"unexpected size {image.shape}")
        return super().prepare(image, grid)


def write_images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"img{i}" for i in range(n)]
    for i, image_id in enumerate(ids):
        Image.fromarray(render_scene(i, image_size=SIZE).image).save(folder / f"{image_id}.png")
    return ids


def test_loader_is_ordered_and_prepares_as_inline(tmp_path):
    ids, split, pruner = write_images(tmp_path, 7), Split(tmp_path), ALTP(keep=0.1)
    for _ in range(2):  # threads finish in any order: the same items every time
        with Loader(split, ids, Model, pruner, prefetch=True, workers=2, depth=3) as loader:
            batches = list(loader.batches(3))
        assert [[item.image_id for item in b] for b in batches] == [ids[:3], ids[3:6], ids[6:]]
        for item in (item for b in batches for item in b):
            expected = pruner.prepare(Model.encoder_view(Image.open(split.image_path(item.image_id))), GRID)
            assert item.error is None and item.prepare_s > 0
            np.testing.assert_array_equal(item.prepared.token_region, expected.token_region)
            np.testing.assert_array_equal(item.prepared.density, expected.density)
    with Loader(split, ids, Model, pruner, prefetch=False) as loader:  # inline: select prepares
        assert all(item.prepared is None and item.image is not None for b in loader.batches(2) for item in b)


def test_bad_image_and_failing_prepare_are_recorded_items(tmp_path):
    ids, split = write_images(tmp_path, 5), Split(tmp_path)
    split.image_path(ids[1]).write_bytes(b"not a png")
    Image.new("RGB", (40, 30)).save(split.image_path(ids[3]))  # prepare refuses this size
    with Loader(split, ids, Model, StrictALTP(keep=0.1), prefetch=True, workers=2, depth=2) as loader:
        items = [item for b in loader.batches(2) for item in b]
    assert [item.image_id for item in items] == ids
    failed = {item.image_id: item.error for item in items if item.error is not None}
    assert set(failed) == {ids[1], ids[3]}
    assert "cannot read the image" in failed[ids[1]]["error"] and "unexpected size" in failed[ids[3]]["error"]
    assert all(item.prepared is not None for item in items if item.error is None)


class Prediction:
    def __init__(self, caption):
        self.caption, self.phrases = caption, [caption]
        self.masks = [np.eye(4, dtype=bool)]


def test_writer_writes_everything_queued_and_records_a_failed_write(tmp_path):
    def write_json(path, obj):
        if path.stem == "b":
            raise OSError("disk full")
        write_json_atomic(path, obj)

    timing, errors = tmp_path / "timing.jsonl", tmp_path / "errors.jsonl"
    with Writer(tmp_path, timing, errors, write_json, append_jsonl, threaded=True, depth=1) as writer:
        for batch in (["a", "b"], ["c"]):
            writer.predictions(batch, [Prediction(i) for i in batch], {"images": batch})
        writer.error({"image_id": "d", "error": "bad"})
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == ["a", "c"]
    assert json.loads((tmp_path / "a.json").read_text())["pred_masks"][0]["size"] == [4, 4]
    records = [json.loads(line) for line in timing.read_text().splitlines()]
    assert [r["images"] for r in records] == [["a", "b"], ["c"]] and all(r["write"] >= 0 for r in records)
    assert [json.loads(line)["image_id"] for line in errors.read_text().splitlines()] == ["b", "d"]

    def broken_append(path, record):
        raise OSError("read-only file system")

    writer = Writer(tmp_path, timing, errors, write_json_atomic, broken_append, threaded=True)
    writer.predictions(["e"], [Prediction("e")], {"images": ["e"]})
    with pytest.raises(RuntimeError, match="read-only"):
        writer.close()


def test_thread_counts_and_settings(workspace):  # noqa: F811
    assert thread_counts("auto", "auto", cores=2) == (1, 1)
    assert thread_counts("auto", "auto", cores=16) == (4, 12)
    assert thread_counts(3, None, cores=2) == (3, None) and thread_counts("auto", 2, cores=8) == (2, 2)
    assert check_settings(True, "auto", "auto") is None and check_settings(False, 2, None) is None
    for bad, field in (((1, "auto", None), "prefetch"), ((True, 0, None), "prefetch_workers"),
                       ((True, "auto", "many"), "torch_threads")):
        assert check_settings(*bad).startswith(field + "=")
    with pytest.raises(ConfigError, match="prefetch_workers"):
        validate(compose_cfg(*overrides(workspace, "prefetch_workers=0")))


def test_latency_views_by_hand():
    def record(prefetch, **parts):
        return {"prefill": 0.05, "decode": 0.03, "pruner": 0.01, "end_to_end": 0.1, "prefetch": prefetch, **parts}

    views = latency_views([(record(True, load=0.004, prepare=0.03, write=0.002, wait=0.001), 2)] * 3)
    assert views["prefetch"] is True and views["engine_ms_per_image"] == 35.0
    assert views["prepare_ms_per_image"] == 15.0 and views["off_critical_path_ms_per_image"] == 18.0
    assert views["single_request_ms_per_image"] == 68.0  # (0.036 + 0.1) / 2
    assert views["loader_wait_ms_per_image"] == 0.5
    old = latency_views([(record(False), 1), ({"prefill": 0.05, "decode": 0.03, "pruner": 0.0, "end_to_end": 0.1}, 1)])
    assert old["prefetch"] is False and old["off_critical_path_ms_per_image"] == 0.0
    assert latency_views([(record(True), 1), (record(False), 1)])["prefetch"] == "mixed"


def prediction_bytes(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "predictions").glob("*.json"))}


def test_prefetch_on_and_off_give_byte_identical_altp_predictions(workspace, tmp_path):  # noqa: F811
    args = overrides(workspace, "pruner=altp", "keep=0.1", "batch_size=2")
    on = run(compose_cfg(*args, f"output_root={tmp_path / 'on'}", "prefetch=true"))
    off = run(compose_cfg(*args, f"output_root={tmp_path / 'off'}", "prefetch=false"))
    assert len(prediction_bytes(Path(on["run_dir"]))) == 6
    assert prediction_bytes(Path(on["run_dir"])) == prediction_bytes(Path(off["run_dir"]))
    assert on["timing"]["prefetch"] is True and on["timing"]["prepare_ms_per_image"] > 0
    assert off["timing"]["prefetch"] is False and off["timing"]["prepare_ms_per_image"] == 0
    assert off["timing"]["off_critical_path_ms_per_image"] == 0
    for timing in (on["timing"], off["timing"]):
        assert timing["single_request_ms_per_image"] >= timing["end_to_end_ms_per_image"]


@pytest.mark.slow
def test_sigkill_of_a_prefetching_run_resumes_to_the_inline_predictions(workspace, tmp_path):  # noqa: F811
    args = overrides(workspace, "pruner=altp", "keep=0.1", "data.generate.n_val=12", "data.limit=12",
                     f"data.root={tmp_path / 'data'}", "batch_size=1")
    a, b = kill_and_resume(args, tmp_path, reference=("prefetch=false",), killed=("prefetch=true",))
    assert len(prediction_bytes(a)) == 12 and prediction_bytes(a) == prediction_bytes(b)
    assert json.loads((b / "metrics.json").read_text())["n_failed"] == 0
