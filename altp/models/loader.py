"""Build the model a config describes (``model.loader``), check it against the interface, keep it.

What the loader builds must be an :class:`altp.models.base.GCGModel` whose LLM has the declared
number of layers (``model.llm.layers``, which the pruner layers were checked against); otherwise
one ``ConfigError`` line names the model config. Hydra's basic launcher runs a sweep's jobs in one
process, so the last model stays loaded (keyed by its identity, the weights' content included)
and each run starts it with ``begin_run()``.
"""

from __future__ import annotations

import json

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from altp.errors import ConfigError
from altp.failures import CHECKPOINT_ERRORS, checkpoint_problem
from altp.models.base import GCGModel, interface_problems
from altp.run_identity import model_identity

_MODEL_CACHE: dict[str, GCGModel] = {}


def load_model(cfg: DictConfig, device: torch.device) -> GCGModel:
    """The model of ``cfg.model`` on ``device`` (loaded once per process and identity)."""
    key = json.dumps(model_identity(cfg), sort_keys=True) + str(device)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        try:
            model = instantiate(cfg.model.loader)
        except InstantiationException as err:  # a broken checkpoint folder is a config error
            if isinstance(err.__cause__, CHECKPOINT_ERRORS):
                raise ConfigError(f"model ({cfg.model.name}): {checkpoint_problem(err.__cause__, cfg.model.loader)}") from None
            raise
        check_interface(model, cfg)
        _MODEL_CACHE[key] = model.to(device)
    model = _MODEL_CACHE[key]
    layers = model.llm_shape.layers  # checked every run: the declared shape is not in the key
    if layers != cfg.model.llm.layers:
        raise ConfigError(f"model.llm.layers={cfg.model.llm.layers} but the loaded LLM has {layers} layers; "
                          "set model.llm.layers to match")
    return model


def check_interface(model, cfg: DictConfig) -> None:
    """``ConfigError`` naming the model config unless ``model`` satisfies the interface."""
    problems = interface_problems(model)
    if problems:
        raise ConfigError(f"model ({cfg.model.name}): {cfg.model.loader.get('_target_')} built a "
                          f"{type(model).__name__}, which does not satisfy the model interface "
                          f"(altp.models.base.GCGModel): {'; '.join(problems)}")
