"""Every model config satisfies the model interface (altp.models.base.GCGModel), on tiny random weights.

For each ``configs/model/*.yaml`` (a new model config fails here until it has a tiny setup in
``SETUPS``): the config validates, what its loader builds passes the loader's interface check and
declares the LLM shape it has, ``encoder_view`` and ``predict`` keep their contracts (one
prediction per image, bool masks at the image's size, a ``GenerationOutput``), and ``run`` goes
end to end through the pipeline with a pruner that uses the image (ALTP, with prefetch).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from glamm_fixtures import TINY as GLAMM
from glamm_fixtures import write_clip, write_glamm_checkpoint
from hydra import compose, initialize_config_dir
from omg_fixtures import IMAGE_SIZE as OMG_IMAGE_SIZE
from omg_fixtures import LLM as OMG
from omg_fixtures import make_tiny_omg_llava
from PIL import Image

from altp.data.synthetic import VOCAB, render_scene
from altp.engine import GenerationOutput, PruningEngine
from altp.errors import ConfigError
from altp.models.base import GCGModel, GCGPrediction, LLMShape, interface_problems
from altp.models.loader import load_model
from altp.models.tiny_gcg import TinyGCG, TinyGCGConfig
from altp.pruning import visual_budget
from altp.runner import run, validate
from baselines.fastv import FastV

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted(path.stem for path in (ROOT / "configs" / "model").glob("*.yaml"))
TINY = {"hidden": 32, "layers": 3, "intermediate": 64}


def tiny_gcg(folder: Path) -> list[str]:
    TinyGCG(TinyGCGConfig(vocab=VOCAB, image_size=96, grid=24, pixel_dim=8, token_dim=16, heads=2, mask_dim=8,
                          **TINY)).save(folder)
    return [f"model.weights={folder}", f"model.llm.layers={TINY['layers']}", f"model.llm.hidden={TINY['hidden']}",
            f"model.llm.ffn={TINY['intermediate']}", "model.llm.pdrop_layers=[1,2]"]


def glamm(folder: Path) -> list[str]:
    write_glamm_checkpoint(folder / "glamm")
    write_clip(folder / "clip")
    return ["model=glamm", f"model.checkpoint={folder / 'glamm'}", f"model.clip={folder / 'clip'}",
            f"model.llm.layers={GLAMM['layers']}", f"model.llm.hidden={GLAMM['hidden']}",
            f"model.llm.ffn={GLAMM['ffn']}", "model.llm.pdrop_layers=[1,2,3]"]


def omg_llava(folder: Path) -> list[str]:
    make_tiny_omg_llava(folder)
    return ["model=omg_llava", f"model.root={folder}", f"model.image_size={OMG_IMAGE_SIZE}",
            f"model.llm.layers={OMG['layers']}", f"model.llm.hidden={OMG['hidden']}",
            f"model.llm.ffn={OMG['ffn']}", "model.llm.pdrop_layers=[1,2]"]


SETUPS = {"tiny_gcg": tiny_gcg, "glamm": glamm, "omg_llava": omg_llava}  # model config -> tiny weights


def compose_cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        return compose("config", overrides=list(overrides))


@pytest.fixture(scope="module", params=MODELS)
def setup(request, tmp_path_factory):
    """(model config name, its overrides for tiny random weights, a workspace)."""
    name = request.param
    if name not in SETUPS:
        pytest.fail(f"configs/model/{name}.yaml has no tiny setup: add one to SETUPS in {Path(__file__).name}")
    work = tmp_path_factory.mktemp(name)
    overrides = SETUPS[name](work / "weights")
    common = [f"data.root={work / 'synthetic'}", "data.generate.n_val=2", "data.generate.n_test=1",
              "data.limit=2", f"output_root={work / 'out'}", "model.max_new_tokens=8", "batch_size=2",
              "progress=false", "device=cpu"]
    return name, overrides + common, work


@torch.no_grad()
def test_the_loaded_model_satisfies_the_interface(setup):
    name, overrides, _ = setup
    cfg = compose_cfg(*overrides)
    validate(cfg)
    model = load_model(cfg, torch.device("cpu")).eval()
    assert isinstance(model, GCGModel) and interface_problems(model) == [] and model.name == cfg.model.name == name
    declared = cfg.model.llm
    assert model.llm_shape == LLMShape(declared.layers, declared.hidden, declared.ffn)
    rows, cols = model.grid
    assert model.n_visual == rows * cols and str(model.device) == "cpu" and model.dtype == torch.float32
    json.dumps(model.deviations)  # metrics.json holds it
    model.begin_run()

    images = [Image.fromarray(render_scene(seed, image_size=192).image) for seed in (0, 1)]
    images[1] = images[1].crop((0, 0, 192, 150))  # not square: masks come back at this size
    view = model.encoder_view(images[1])
    assert view.ndim == 3 and view.shape[2] == 3 and view.dtype == np.float32 and 0 <= view.min() <= view.max() <= 1
    predictions, out = model.predict(images, PruningEngine(model.llm, FastV(keep=0.25)), 8)
    assert isinstance(out, GenerationOutput) and len(predictions) == 2
    assert out.kept_grid_index[0].shape == (2, visual_budget(0.25, model.n_visual))
    for prediction, image in zip(predictions, images):
        assert isinstance(prediction, GCGPrediction) and isinstance(prediction.caption, str)
        assert all(isinstance(phrase, str) for phrase in prediction.phrases)
        assert all(m.dtype == bool and m.shape == (image.height, image.width) for m in prediction.masks)


def test_the_runner_runs_it_end_to_end(setup):
    name, overrides, _ = setup
    metrics = run(compose_cfg(*overrides, "pruner=altp", "keep=0.25"))
    assert metrics["model"] == name and metrics["n_images"] == 2 and metrics["n_failed"] == 0
    assert metrics["pruner"] == "altp" and metrics["kept_tokens"] == [visual_budget(0.25, metrics["visual_tokens"])]
    assert metrics["visual_per_layer"][2:] == metrics["kept_tokens"] * (len(metrics["visual_per_layer"]) - 2)
    assert len(list(Path(metrics["run_dir"], "predictions").glob("*.json"))) == 2


def test_a_loader_that_builds_no_model_is_a_config_error(tmp_path):
    cfg = compose_cfg(f"output_root={tmp_path}", "device=cpu", "model.loader._target_=torch.nn.Identity")
    with pytest.raises(ConfigError, match=r"^model \(tiny_gcg\): torch.nn.Identity built a Identity, which does "
                                          r"not satisfy the model interface \(altp.models.base.GCGModel\)"):
        load_model(cfg, torch.device("cpu"))


def test_interface_problems_name_what_is_missing():
    class Half(GCGModel):
        name, grid = "half", (4, 4)

        def encoder_view(self, image):
            return np.zeros((8, 8, 3), np.float32)

    half = Half()
    assert interface_problems(half) == ["predict() not implemented", "no llm (the causal LM the engine runs)"]
    half.llm = torch.nn.Linear(2, 2)
    assert interface_problems(half)[1].startswith("llm is not a LlamaForCausalLM-shaped model")
