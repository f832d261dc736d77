"""Launchers (configs/launcher): local, joblib, slurm via submitit (submitit_local here).

The sweeps run as subprocesses of ``python run.py -m ...`` on a random tiny_gcg and 8 synthetic
images: a 2-job submitit_local sweep whose runs ``make tables`` (eval.tables) sees, and a joblib
sweep with a failing job that the others outlive and the sweep report names.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from llama_fixtures import save_random_tiny_gcg

from altp.runner import lock_directory, prepare_split, run, run_directory

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("launchers")
    save_random_tiny_gcg(root / "weights")
    prepare_split(compose_cfg(*overrides(root)))  # the synthetic data, once, before parallel jobs
    return root


def overrides(ws: Path, *extra: str) -> list[str]:
    return [f"model.weights={ws / 'weights'}", f"data.root={ws / 'synthetic'}", f"output_root={ws / 'out'}",
            "data.generate.n_val=8", "data.generate.n_test=2", "model.max_new_tokens=6", "batch_size=2",
            "progress=false", *extra]


def compose_cfg(*args: str, hydra: bool = False):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        return compose("config", overrides=list(args), return_hydra_config=hydra)


def sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("name,target", [("local", "BasicLauncher"), ("joblib", "JoblibLauncher"),
                                         ("slurm", "SlurmLauncher"), ("submitit_local", "LocalLauncher")])
def test_launcher_configs_select_the_hydra_plugin(name, target):
    cfg = compose_cfg(f"launcher={name}", hydra=True)
    assert cfg.hydra.launcher._target_.endswith(target) and cfg.launcher.name == name


def test_slurm_fields_reach_submitit():
    cfg = compose_cfg("launcher=slurm", "launcher.partition=gpu", "launcher.gpus_per_task=2",
                      "launcher.timeout_min=90", "launcher.array_parallelism=4", hydra=True)
    launcher = cfg.hydra.launcher
    assert (launcher.partition, launcher.gpus_per_task, launcher.timeout_min, launcher.array_parallelism) == (
        "gpu", 2, 90, 4)


def test_a_busy_run_directory_is_skipped(workspace):
    cfg = compose_cfg(*overrides(workspace, "pruner=fastv", "keep=0.5"))
    lock = lock_directory(run_directory(cfg))  # another job of a parallel sweep works on it
    try:
        assert lock_directory(run_directory(cfg)) is None
        result = run(cfg)
    finally:
        lock.close()
    assert "skipped" in result and not (run_directory(cfg) / "metrics.json").exists()


@pytest.mark.slow
def test_submitit_local_sweep_then_tables(workspace):
    proc = sweep("launcher=submitit_local", "pruner=none,fastv", "keep=0.25", *overrides(workspace))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(next((workspace / "out" / "hydra").glob("*/sweep_report.json")).read_text())
    assert report["jobs"] == 2 and report["completed"] == 2
    tables = subprocess.run([sys.executable, "-m", "eval.tables", "--runs", str(workspace / "out" / "runs"),
                             "--out", str(workspace / "tables")], cwd=ROOT, capture_output=True, text=True)
    assert tables.returncode == 0 and tables.stdout.startswith("2 runs"), tables.stdout + tables.stderr
    lines = (workspace / "tables" / "table1.md").read_text().splitlines()[2:]  # below the header
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines if "**" not in line]
    assert [row[0] for row in cells if row[2] != "—"] == ["Unpruned", "FastV"]  # val METEOR of both runs


@pytest.mark.slow
def test_joblib_sweep_outlives_a_failing_job_and_names_it(workspace):
    # a config mistake stops the sweep before any job (tests/test_failures.py); what fails inside a
    # job is what no check can see beforehand: here, weights whose file is corrupt
    broken = workspace / "broken_weights"
    broken.mkdir(exist_ok=True)
    (broken / "config.json").write_text((workspace / "weights" / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    args = overrides(workspace, f"output_root={workspace / 'joblib'}")
    args[0] = f"model.weights={broken},{workspace / 'weights'}"
    proc = sweep("launcher=joblib", "launcher.n_jobs=2", "pruner=fastv", "keep=0.25", *args)
    assert proc.returncode == 1
    assert "FAILED job 0" in proc.stderr and "broken_weights" in proc.stderr
    assert len(list((workspace / "joblib").glob("runs/**/metrics.json"))) == 1
    report = json.loads(next((workspace / "joblib" / "hydra").glob("*/sweep_report.json")).read_text())
    assert (report["completed"], report["failed"]) == (1, 1)
    assert any("broken_weights" in o for o in report["failed_jobs"][0]["overrides"])
