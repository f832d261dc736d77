"""The runner at small scale: run-dir naming, config errors, atomic writes, resume after SIGKILL.

A randomly initialised tiny_gcg (saved to tmp) stands in for the trained one: these tests check
the plumbing, not the scores. Synthetic data are generated into tmp on first use.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from llama_fixtures import save_random_tiny_gcg
from omegaconf import OmegaConf
from script_helpers import kill_and_resume

from altp.models.tiny_gcg import TinyGCGConfig
from altp.runner import ConfigError, run, run_directory, run_identity, validate, write_json_atomic
from eval.flops import flops_ratio

ROOT = Path(__file__).resolve().parents[1]
CONTRACT_KEYS = {"model", "data", "split", "pruner", "pruner_params", "keep", "visual_tokens", "kept_tokens",
                 "prune_layers", "n_images", "n_failed", "METEOR", "CIDEr", "AP50", "mIoU", "recall",
                 "flops_ratio", "timing", "similarity_model"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A random tiny_gcg checkpoint and a small synthetic dataset, shared by the module."""
    root = tmp_path_factory.mktemp("runner")
    save_random_tiny_gcg(root / "weights")
    return root


def overrides(ws: Path, *extra: str) -> list[str]:
    generate = [] if "data=grandf" in extra else ["data.generate.n_val=6", "data.generate.n_test=2"]
    return [f"model.weights={ws / 'weights'}", f"data.root={ws / 'synthetic'}", f"output_root={ws / 'out'}",
            "model.max_new_tokens=6", "batch_size=2", "progress=false", *generate, *extra]


def compose_cfg(*args: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        return compose("config", overrides=list(args))


def test_run_directory_names_the_config(workspace):
    base = Path(str(workspace / "out")) / "runs" / "synthetic-val" / "tiny_gcg[weights=weights-{}]".format(
        hashlib.sha1(str((workspace / "weights").resolve()).encode()).hexdigest()[:6])
    assert run_directory(compose_cfg(*overrides(workspace))) == base / "none" / "keep1"
    assert run_directory(compose_cfg(*overrides(workspace, "keep=0.1"))) == base / "none" / "keep1"
    assert run_directory(compose_cfg(*overrides(workspace, "pruner=altp", "keep=0.1"))) == base / "altp" / "keep0.1"
    named = run_directory(compose_cfg(*overrides(workspace, "pruner=altp", "keep=0.25",
                                                 "pruner.n_segments=7", "data.limit=3")))
    assert named.parts[-4:] == ("synthetic-val-limit3", base.name, "altp[n_segments=7]", "keep0.25")
    seeded = run_directory(compose_cfg(*overrides(workspace, "pruner=random", "keep=0.1", "seed=3")))
    assert seeded.parts[-2:] == ("random[seed=3]", "keep0.1")
    assert run_directory(compose_cfg(*overrides(workspace, "seed=3"))).parts[-2] == "none"  # none has no seed
    # non-default model settings that change results name the model; batch size does not
    omg = compose_cfg("model=omg_llava", f"model.root={workspace}", "model.retry_questions=true", "model.batch_size=1")
    assert run_directory(omg).parts[-3] == "omg_llava[retry_questions=true]"
    glamm = compose_cfg("model=glamm", "model.checkpoint=a", "model.clip=b")
    assert run_directory(glamm).parts[-3] == "glamm"  # the mandatory download folders are not named


def test_presets_are_named_by_their_name_field_without_reading_configs(workspace, tmp_path, monkeypatch):
    """Two presets of one class are two runs, each named by its config's ``name``, with the fields
    that differ from that preset; a preset that exists only in another config folder works too."""
    configs = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", configs)
    fastv = (configs / "pruner" / "fastv.yaml").read_text()
    (configs / "pruner" / "fastv_k3.yaml").write_text(
        fastv.replace("name: fastv ", "name: fastv_k3 ").replace("layer: 2", "layer: 3"))
    with initialize_config_dir(version_base="1.3", config_dir=str(configs)):
        k3, k3_at_4 = (compose("config", overrides=overrides(workspace, "pruner=fastv_k3", "keep=0.1", *extra))
                       for extra in ([], ["pruner.layer=4"]))
    at_3 = compose_cfg(*overrides(workspace, "pruner=fastv", "keep=0.1", "pruner.layer=3"))
    monkeypatch.setattr(OmegaConf, "load", lambda *a, **k: pytest.fail("a config file was read"))
    assert run_directory(k3).parts[-2:] == ("fastv_k3", "keep0.1")
    assert run_directory(k3_at_4).parts[-2] == "fastv_k3[layer=4]"
    assert run_directory(at_3).parts[-2] == "fastv[layer=3]"
    assert run_identity(k3)["pruner"] == "fastv_k3" and run_identity(at_3)["pruner"] == "fastv"
    assert run_identity(k3)["pruner_config"] == run_identity(at_3)["pruner_config"]  # the name is "pruner"


def test_a_pruner_that_ignores_keep_is_one_run(workspace):
    fixed = [compose_cfg(*overrides(workspace, "pruner=pdrop", "pruner.schedule=fixed", f"keep={keep}"))
             for keep in (0.1, 0.25)]
    assert run_directory(fixed[0]) == run_directory(fixed[1])
    assert run_directory(fixed[0]).parts[-2:] == ("pdrop[schedule=fixed]", "keep1")
    assert run_identity(fixed[0]) == run_identity(fixed[1]) and run_identity(fixed[0])["keep"] == 1.0
    matched = [compose_cfg(*overrides(workspace, "pruner=pdrop", f"keep={keep}")) for keep in (0.1, 0.25)]
    assert run_directory(matched[0]) != run_directory(matched[1])


@pytest.mark.parametrize("extra,field", [(["keep=1.5"], "keep"), (["data.split=train"], "data.split"),
                                         (["data=grandf", "data.root=/nonexistent"], "data.ann_dir"),
                                         (["data.limit=0"], "data.limit"),
                                         (["pruner=altp", "pruner.alpha=-1"], "pruner")])
def test_validate_names_the_field(workspace, extra, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate(compose_cfg(*overrides(workspace, *extra)))


def test_layer_beyond_the_llm_is_a_config_error(workspace):
    with pytest.raises(ConfigError, match="model.llm.layers"):
        validate(compose_cfg(*overrides(workspace, "pruner=fastv", "pruner.layer=16")))


def test_missing_weights_named(workspace):
    with pytest.raises(ConfigError, match="model.weights"):
        validate(compose_cfg(*overrides(workspace), f"model.weights={workspace / 'nothing'}"))


@pytest.mark.parametrize("args", [["pruner=nope"], ["pruner.nope=1"], ["keep=0"], ["-m", "pruner=fastv,nope"]])
def test_cli_config_errors_are_one_line_exit_2(args):
    proc = subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error:") and "Traceback" not in proc.stderr


def test_end_to_end_resume_and_refusal(workspace):
    cfg = compose_cfg(*overrides(workspace, "pruner=fastv", "keep=0.25"))
    metrics = run(cfg)
    assert CONTRACT_KEYS <= metrics.keys()
    run_dir = Path(metrics["run_dir"])
    predictions = sorted((run_dir / "predictions").glob("*.json"))
    assert len(predictions) == 6 and metrics["n_images"] == 6 and metrics["n_failed"] == 0
    record = json.loads(predictions[0].read_text())
    assert set(record) == {"image_id", "caption", "phrases", "pred_masks"}
    assert metrics["kept_tokens"] == [144] and metrics["prune_layers"] == [2]
    assert metrics["tokens_per_layer"][2] < metrics["tokens_per_layer"][1]
    assert not list(run_dir.glob("**/.*.tmp"))
    # a rerun of the same config does nothing new, also with settings that change no result
    assert run(cfg) == metrics
    assert run(compose_cfg(*overrides(workspace, "pruner=fastv", "keep=0.25", "model.batch_size=3",
                                      "model.llm.pdrop_layers=[1,2,3]"))) == metrics
    # a changed model default lands in the same directory: refused, then discarded on request
    changed = compose_cfg(*overrides(workspace, "pruner=fastv", "keep=0.25", "model.max_new_tokens=5"))
    assert run_directory(changed) == run_dir
    with pytest.raises(ConfigError, match="max_new_tokens"):
        run(changed)
    changed = compose_cfg(*overrides(workspace, "pruner=fastv", "keep=0.25", "model.max_new_tokens=5",
                                     "overwrite=true"))
    assert run(changed)["max_new_tokens"] == 5


def test_retrained_weights_in_the_same_folder_are_not_taken_for_the_old(tmp_path):
    weights = save_random_tiny_gcg(tmp_path / "weights", seed=1)
    args = [f"model.weights={weights}", f"output_root={tmp_path}", "data.generate.n_val=1", "data.generate.n_test=1",
            "model.max_new_tokens=2", "progress=false"]
    run(compose_cfg(*args))
    save_random_tiny_gcg(weights, seed=2)  # same folder, same config, other weights
    with pytest.raises(ConfigError, match=r"changed: model"):
        run(compose_cfg(*args))


def test_flops_of_a_pruner_before_the_llm(workspace):
    metrics = run(compose_cfg(*overrides(workspace, "pruner=divprune", "keep=0.25", "data.limit=2")))
    assert metrics["n_images"] == 2 and metrics["prune_layers"] == [0]
    layers = len(metrics["visual_per_layer"])
    assert metrics["visual_per_layer"] == [144] * layers and layers == TinyGCGConfig().layers
    # the reference is the unpruned prompt, not layer 0's (already pruned) input
    text = metrics["tokens_per_layer"][0] - 144
    assert metrics["flops_ratio"] == pytest.approx(flops_ratio([text + 144] * layers, text + 576, 128, 384))


def test_corrupt_image_is_recorded_and_the_run_goes_on(workspace, tmp_path):
    data = tmp_path / "synthetic"
    cfg = compose_cfg(*overrides(workspace, f"data.root={data}", f"output_root={tmp_path / 'out'}"))
    validate(cfg)
    from altp.runner import prepare_split
    split = prepare_split(cfg)
    split.image_path(split.images[1].image_id).write_bytes(b"not a jpeg")
    metrics = run(cfg)
    errors = (Path(metrics["run_dir"]) / "errors.jsonl").read_text().splitlines()
    assert metrics["n_failed"] == 1 and len(errors) == 1
    assert json.loads(errors[0])["image_id"] == split.images[1].image_id
    assert metrics["evaluation"]["n_missing"] == 1


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"a": 1})

    def broken(*_):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_same_metrics(workspace, tmp_path):
    args = overrides(workspace, "pruner=altp", "keep=0.1", "data.generate.n_val=12", "data.limit=12",
                     f"data.root={tmp_path / 'data'}", "batch_size=1")
    a_dir, b_dir = kill_and_resume(args, tmp_path)
    a = json.loads((a_dir / "metrics.json").read_text())
    b = json.loads((b_dir / "metrics.json").read_text())
    for key in ("METEOR", "CIDEr", "AP50", "mIoU", "recall", "n_images", "n_failed", "flops_ratio"):
        assert a[key] == b[key], key
