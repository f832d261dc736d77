"""logger=wandb: an offline wandb run holds the config, metrics, schedule, timing and figures;
without wandb the run completes with one warning. Nothing leaves the machine (offline mode).
"""

import json
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from llama_fixtures import save_random_tiny_gcg
from PIL import Image

from altp import logger
from altp.runner import run
from altp.sweep import STATUS_FILE, SweepReport

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("wandb")
    save_random_tiny_gcg(root / "weights")
    return root


def overrides(ws: Path, *extra: str) -> list[str]:
    return [f"model.weights={ws / 'weights'}", f"data.root={ws / 'synthetic'}", f"output_root={ws / 'out'}",
            "data.generate.n_val=8", "data.generate.n_test=2", "model.max_new_tokens=6", "batch_size=2",
            "progress=false", "pruner=fastv", "keep=0.25", *extra]


def compose_cfg(*args: str, hydra: bool = False):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        return compose("config", overrides=list(args), return_hydra_config=hydra)


def read_offline_run(run_dir: Path) -> dict:
    """The records of an offline run's .wandb file (LevelDB-log framing of protobuf Records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    block, pos, buf, raw = 32768, 7, b"", []  # 7 bytes of file header, then 32 KiB blocks of chunks
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a record is complete
            raw.append(buf)
            buf = b""
    out = {"summary": {}, "history": {}, "config": {}}
    for chunk in raw:
        record = pb.Record()
        record.ParseFromString(chunk)
        kind = record.WhichOneof("record_type")
        items = {"summary": ("summary", "update"), "history": ("history", "item"), "config": ("config", "update"),
                 "run": ("run", "config", "update")}.get(kind, ())
        node = record
        for name in items:
            node = getattr(node, name)
        for item in node if items else []:
            key = item.key or "/".join(item.nested_key)
            out["config" if kind == "run" else kind][key] = json.loads(item.value_json)
    return out


@pytest.fixture(scope="module")
def logged(workspace):
    cfg = compose_cfg(*overrides(workspace, "logger=wandb", "logger.images=2", f"logger.dir={workspace / 'wb'}"))
    metrics = run(cfg)
    runs = sorted((workspace / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    return metrics, runs[0]


def test_offline_run_holds_config_metrics_schedule_timing_and_figures(logged):
    metrics, run_dir = logged
    deadline = time.time() + 60  # wandb's service process may still be flushing the run file
    while "METEOR" not in (records := read_offline_run(run_dir))["summary"] and time.time() < deadline:
        time.sleep(0.5)
    summary = records["summary"]
    for key in ("METEOR", "CIDEr", "AP50", "mIoU", "recall", "flops_ratio", "n_images"):
        assert summary[key] == pytest.approx(metrics[key]), key
    assert summary["timing/end_to_end_ms_per_image"] == pytest.approx(metrics["timing"]["end_to_end_ms_per_image"])
    assert summary["evaluation/n_missing"] == metrics["evaluation"]["n_missing"]
    assert summary["tokens_per_layer"] == metrics["tokens_per_layer"]
    assert summary["token_schedule/_type"] == "table-file" and summary["kept_tokens/count"] == 2
    config = {k: v["value"] if isinstance(v, dict) and "value" in v else v for k, v in records["config"].items()}
    assert config["pruner"]["_target_"].endswith("FastV") and config["logger"]["mode"] == "offline"
    assert config["run_dir"] == metrics["run_dir"]
    schedule = json.loads(next((run_dir / "files" / "media" / "table").glob("token_schedule_*.json")).read_text())
    assert [row[1] for row in schedule["data"]] == metrics["tokens_per_layer"]
    assert len(list((run_dir / "files" / "media" / "images").glob("*.png"))) == 2


def test_sweep_end_logs_the_tables_of_its_runs(workspace, logged, tmp_path):
    metrics, _ = logged
    job_dir = tmp_path / "sweep" / "0"
    job_dir.mkdir(parents=True)
    (job_dir / STATUS_FILE).write_text(json.dumps({"job": 0, "overrides": ["pruner=fastv"], "status": "completed",
                                                   "run_dir": metrics["run_dir"], "error": None}))
    cfg = compose_cfg(*overrides(workspace, "logger=wandb", f"logger.dir={tmp_path / 'wb'}",
                                 f"hydra.sweep.dir={tmp_path / 'sweep'}"), hydra=True)
    SweepReport().on_multirun_end(cfg)
    assert json.loads((tmp_path / "sweep" / "sweep_report.json").read_text())["completed"] == 1
    run_dir = next((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    table1 = json.loads(next((run_dir / "files" / "media" / "table").glob("table1_*.json")).read_text())
    assert table1["columns"][:3] == ["section", "group", "Method"]
    fastv = [row for row in table1["data"] if row[2] == "FastV" and row[4] != "—"]
    assert len(fastv) == 1 and fastv[0][4] == f"{100 * metrics['METEOR']:.1f}"
    assert fastv[0][0].startswith("tiny_gcg") and fastv[0][0].endswith(" on synthetic") and fastv[0][1].startswith("Retain 144 tokens")  # its keep group


def test_without_wandb_the_run_completes_with_one_warning(workspace, monkeypatch, recwarn):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    monkeypatch.setattr(logger, "_WARNED", False)
    cfg = compose_cfg(*overrides(workspace, "logger=wandb", f"output_root={workspace / 'nowandb'}",
                                 f"logger.dir={workspace / 'nowandb_wb'}"))
    metrics = run(cfg)
    assert (Path(metrics["run_dir"]) / "metrics.json").exists() and metrics["n_images"] == 8
    assert run(cfg) == metrics  # a second run (already done) logs again: no second warning
    warned = [w for w in recwarn if "wandb" in str(w.message)]
    assert len(warned) == 1 and "cannot be imported" in str(warned[0].message)
    assert not (workspace / "nowandb_wb" / "wandb").exists()


def test_logger_none_and_the_figure():
    assert not logger.make_logger(compose_cfg()).enabled
    original = Image.fromarray(np.full((40, 60, 3), 200, dtype=np.uint8))

    class Prediction:
        masks = [np.ones((40, 60), dtype=bool)]

    figure = logger.kept_token_figure(original, np.array([0, 3]), 4, Prediction())
    assert figure.shape[0] == 40 and figure.shape[2] == 3 and figure.dtype == np.uint8
    assert figure[0, 0].tolist() == [200] * 3 and figure[0, 59].mean() < 100  # cell 1 pruned: darkened
