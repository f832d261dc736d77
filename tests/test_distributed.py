"""torchrun: ranks split a run's images, rank 0 evaluates; the results equal one process's.

A random tiny_gcg on 8 synthetic images (gloo backend, CPU). The single-process reference runs
in this process; the torchrun runs are subprocesses (``python -m torch.distributed.run``).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from llama_fixtures import save_random_tiny_gcg

from altp import distributed
from altp.runner import prepare_split, run
from altp.summary import timing_summary

ROOT = Path(__file__).resolve().parents[1]
VOLATILE = {"timing", "run_dir"}  # timing aside; the run directory differs by output_root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    save_random_tiny_gcg(root / "weights")
    return root


def overrides(ws: Path, output: str) -> list[str]:
    return [f"model.weights={ws / 'weights'}", f"data.root={ws / 'synthetic'}", f"output_root={ws / output}",
            "data.generate.n_val=8", "data.generate.n_test=2", "model.max_new_tokens=6", "batch_size=2",
            "progress=false", "pruner=fastv", "keep=0.25"]


@pytest.fixture(scope="module")
def reference(workspace):
    """One process, in this process: metrics and the predictions folder."""
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose("config", overrides=overrides(workspace, "single"))
    metrics = run(cfg)
    return metrics, Path(metrics["run_dir"])


def torchrun(ws: Path, output: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "run.py",
           *overrides(ws, output)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, **popen)


def assert_same_results(reference, run_dir: Path) -> None:
    ref_metrics, ref_dir = reference
    ref_preds = sorted(p.name for p in (ref_dir / "predictions").glob("*.json"))
    assert sorted(p.name for p in (run_dir / "predictions").glob("*.json")) == ref_preds
    for name in ref_preds:
        assert (run_dir / "predictions" / name).read_text() == (ref_dir / "predictions" / name).read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics.keys() == ref_metrics.keys()
    for key in metrics.keys() - VOLATILE:
        ours, theirs = metrics[key], ref_metrics[key]
        if key == "evaluation":  # eval_seconds: timing
            ours, theirs = ({k: v for k, v in d.items() if k != "eval_seconds"} for d in (ours, theirs))
        assert ours == theirs, key


def test_shard_is_strided_without_duplicates():
    items = list(range(11))
    shards = [distributed.shard(items, distributed.Dist(rank=r, world=3)) for r in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(sum(shards, [])) == items  # every item once, no padding duplicates


def test_single_process_needs_no_process_group(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info, device = distributed.setup("cpu")
    assert info == distributed.Dist(0, 1, 0) and device == torch.device("cpu")
    assert not torch.distributed.is_initialized()
    assert distributed.rank0_first(info, lambda: 7) == 7 and distributed.gather(info, "x") == ["x"]
    assert distributed.rank_tag() == ""
    for var, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(var, value)
    assert distributed.rank_tag() == "_rank1"
    assert distributed.pick_device("cuda") == torch.device("cuda:1")  # under torchrun: cuda:LOCAL_RANK


def test_timing_aggregates_every_rank():
    def batch(n, seconds):
        return {"images": ["x"] * n, "pruner": 0.0, "prefill": seconds, "decode": seconds, "decode_steps": 1,
                "end_to_end": seconds}

    # two rank files: each file's first batch is its warm-up and is dropped
    per_file = [[batch(2, 9.0), batch(2, 0.2), batch(2, 0.4)], [batch(2, 9.0), batch(2, 0.6)]]
    ranks = [{"rank": 0, "images": 6, "wall_s": 2.0, "peak_process_rss_mib": 100.0},
             {"rank": 1, "images": 4, "wall_s": 4.0, "peak_process_rss_mib": 120.0}]
    timing = timing_summary(per_file, ranks)
    assert timing["batches_measured"] == 3 and timing["end_to_end_ms_per_image"] == 200.0
    assert timing["ranks"] == 2 and timing["predict_wall_s"] == 4.0 and timing["images_per_s"] == 2.5
    assert timing["peak_process_rss_mib"] == 120.0 and timing["per_rank"] == ranks


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(workspace, reference):
    proc = torchrun(workspace, "torchrun", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    run_dir = next((workspace / "torchrun").glob("runs/**/metrics.json")).parent
    assert_same_results(reference, run_dir)
    assert sorted(p.name for p in run_dir.glob("timing*.jsonl")) == ["timing.rank0.jsonl", "timing.rank1.jsonl"]
    timing = json.loads((run_dir / "metrics.json").read_text())["timing"]
    assert timing["ranks"] == 2 and [r["images"] for r in timing["per_rank"]] == [4, 4]
    assert out.count("results: ") == 1  # rank 0 evaluates and reports once
    # Hydra's log folders: one per rank
    assert sorted(p.name[-6:] for p in (workspace / "torchrun" / "hydra").iterdir()) == ["_rank0", "_rank1"]


def _rank_pid(parent: int, rank: int) -> int | None:
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and f"\0RANK={rank}\0".encode() in b"\0" + (proc / "environ").read_bytes():
                return int(proc.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


@pytest.mark.slow
def test_torchrun_resumes_after_a_rank_is_killed(workspace, reference):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        split = prepare_split(compose("config", overrides=overrides(workspace, "killed")))
    rank1_images = [img.image_id for img in split][1::2]
    proc = torchrun(workspace, "killed", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid, deadline = None, time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        pid = pid or _rank_pid(proc.pid, 1)
        done = list((workspace / "killed").glob("runs/**/predictions/*.json"))
        if pid and any(p.stem in rank1_images for p in done):
            os.kill(pid, signal.SIGKILL)  # rank 1 dies after its first batch; torchrun stops rank 0
            break
        time.sleep(0.005)
    assert proc.wait(timeout=300) != 0
    assert not list((workspace / "killed").glob("runs/**/metrics.json"))
    assert len(list((workspace / "killed").glob("runs/**/predictions/*.json"))) < 8
    rerun = torchrun(workspace, "killed", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, out
    assert_same_results(reference, next((workspace / "killed").glob("runs/**/metrics.json")).parent)
