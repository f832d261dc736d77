"""Bad inputs: each is one line + exit 2 before any run directory exists, or one image's recorded
failure while the run finishes; reruns repair what was fixed (README "Failures and exit codes").

A randomly initialised tiny_gcg stands in for the trained one (plumbing, not scores).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from llama_fixtures import save_random_tiny_gcg

from altp import runner
from altp.cli_checks import check_command_line, sweep_jobs
from altp.data.grandf import GranDfError
from altp.data.synthetic import write_split
from altp.errors import ConfigError
from altp.failures import EXIT_BUSY, EXIT_CONFIG
from altp.files import lock_directory

ROOT = Path(__file__).resolve().parents[1]
SCORES = ("METEOR", "CIDEr", "AP50", "mIoU", "recall")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_random_tiny_gcg(tmp_path_factory.mktemp("failures") / "weights")


def args(weights: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """Four synthetic images (one batch per image: equal to a clean run whatever is retried)."""
    generate = [] if "data=grandf" in extra else ["data.generate.n_val=4", "data.generate.n_test=1"]
    return [f"model.weights={weights}", f"data.root={data}", f"output_root={out}", "model.max_new_tokens=6",
            "batch_size=1", "progress=false", *generate, *extra]


def compose_cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        return compose("config", overrides=list(overrides))


def cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)


def assert_one_line(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(needle in lines[0] for needle in needles), lines[0]


# --- config mistakes: one line, exit 2 ------------------------------------------------------
@pytest.mark.parametrize("override,needle", [
    ("batch_size=abc", "batch_size=abc: must be a positive integer"),
    ("max_new_tokens=0", "max_new_tokens=0"),
    ("device=banana", "device=banana: not a torch device"),
    pytest.param("device=cuda", "cannot use CUDA", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="this torch has CUDA")),
])
def test_bad_settings_are_config_errors(weights, tmp_path, override, needle):
    with pytest.raises(ConfigError, match=needle):
        runner.validate(compose_cfg(*args(weights, tmp_path / "data", tmp_path / "out", override)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has CUDA")
def test_cuda_on_cpu_torch_is_one_line_and_leaves_no_run_directory(tmp_path):
    assert_one_line(cli("device=cuda", f"output_root={tmp_path}", "progress=false"), EXIT_CONFIG,
                    "config error: device=cuda")
    assert not (tmp_path / "runs").exists()


def test_sweep_checks_every_job_before_the_first_starts(capsys):
    with pytest.raises(SystemExit) as stop:
        check_command_line(["-m", "pruner=fastv", "keep=0.1,1.5"], ROOT / "configs")
    assert stop.value.code == EXIT_CONFIG
    line, = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("config error: sweep job 1 (keep=1.5): keep=1.5") and "no job was started" in line
    with pytest.raises(SystemExit):  # a preset's own grid is checked too, the command line overriding it
        check_command_line(["sweep=table1", "data.split=train"], ROOT / "configs")
    # the jobs Hydra's basic sweeper will launch, in its order
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        jobs, multirun = sweep_jobs(["sweep=table1", "keep=0.1"])
        assert multirun and len(jobs) == 8 * 2 and all("keep=0.1" in job for job in jobs)
        assert sweep_jobs(["pruner=fastv"]) == ([["pruner=fastv"]], False)


# --- ground truth: one line naming the file, no run directory -------------------------------
@pytest.fixture
def grandf(tmp_path) -> tuple[Path, list[str]]:
    """A GranD-f-layout folder (6 images) and the overrides that point data=grandf at it."""
    root = tmp_path / "gf"
    write_split(root, "val", 6, seed=0)
    return root, ["data=grandf", f"data.root={root}", f"data.ann_dir={root}/annotations/val_test",
                  f"data.image_dir={root}/images/val_test"]


def edit_gt(root: Path, kind: str, change) -> None:
    path = root / "annotations" / "val_test" / f"val_gcg_coco_{kind}_gt.json"
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


def test_layout_without_json_names_the_missing_file(weights, grandf, tmp_path):
    root, data = grandf
    for path in (root / "annotations" / "val_test").glob("*.json"):
        path.unlink()
    with pytest.raises(ConfigError, match=r"data\.ann_dir=.*val_gcg_coco_caption_gt\.json not found \(it holds no"):
        runner.validate(compose_cfg(*args(weights, root, tmp_path / "out", *data)))


@pytest.mark.parametrize("case,needle", [
    ("truncated", r"val_gcg_coco_mask_gt\.json: invalid JSON"),
    ("rle_size", r"mask 0 has RLE size \[8, 8\] but the image is 192x192"),
    ("label_count", r"has 0 masks but val_gcg_coco_caption_gt\.json lists \d+ labels"),
])
def test_bad_ground_truth_stops_before_the_run_directory(weights, grandf, tmp_path, case, needle):
    root, data = grandf
    mask_path = root / "annotations" / "val_test" / "val_gcg_coco_mask_gt.json"
    if case == "truncated":
        text = mask_path.read_text()
        mask_path.write_text(text[:len(text) // 2])
    elif case == "rle_size":
        edit_gt(root, "mask", lambda gt: gt["annotations"][0]["segmentation"].update(size=[8, 8]))
    else:  # the first image loses all its masks
        edit_gt(root, "mask", lambda gt: gt.update(annotations=[
            a for a in gt["annotations"] if a["image_id"] != gt["images"][0]["id"]]))
    cfg = compose_cfg(*args(weights, root, tmp_path / "out", *data))
    with pytest.raises(GranDfError, match=needle):
        runner.run(cfg)
    assert not (tmp_path / "out" / "runs").exists()


def test_bad_ground_truth_is_one_line_exit_2(grandf, tmp_path):
    root, data = grandf
    mask_path = root / "annotations" / "val_test" / "val_gcg_coco_mask_gt.json"
    mask_path.write_text(mask_path.read_text()[:100])
    assert_one_line(cli(*data, f"output_root={tmp_path}", "progress=false"), EXIT_CONFIG,
                    "data error:", "val_gcg_coco_mask_gt.json: invalid JSON")


def test_limit_checks_only_the_images_it_uses(weights, grandf, tmp_path):
    root, data = grandf
    missing = sorted((root / "images" / "val_test").iterdir())[5]
    missing.unlink()
    assert len(runner.prepare_split(compose_cfg(*args(weights, root, tmp_path, *data, "data.limit=4")))) == 4
    with pytest.raises(GranDfError, match=f"no image file for image {missing.stem}"):
        runner.prepare_split(compose_cfg(*args(weights, root, tmp_path, *data)))


def test_corrupt_checkpoint_is_one_line_and_leaves_no_run_directory(weights, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((weights / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not safetensors")  # passes the preflight's file check
    cfg = compose_cfg(*args(weights, tmp_path / "data", tmp_path / "out"), f"model.weights={broken}")
    with pytest.raises(ConfigError, match=rf"model \(tiny_gcg\): SafetensorError: .*\(loading directory={broken}\)"):
        runner.run(cfg)
    assert not list((tmp_path / "out" / "runs").glob("*"))


# --- held run directories ------------------------------------------------------------------
def test_held_directory_busy_exit_3_and_a_different_config_clashes(weights, tmp_path):
    base = args(weights, tmp_path / "data", tmp_path / "out", "data.limit=1")
    run_dir = Path(runner.run(compose_cfg(*base))["run_dir"])
    lock = lock_directory(run_dir)  # another process producing this directory
    try:
        assert "skipped" in runner.run(compose_cfg(*base))
        with pytest.raises(ConfigError, match=r"being produced by another process with a different config \(changed: "
                                              "max_new_tokens"):
            runner.run(compose_cfg(*base, "model.max_new_tokens=5"))
        proc = cli(*base)
        assert proc.returncode == EXIT_BUSY and proc.stdout.startswith("skipped: another process"), proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        lock.close()
