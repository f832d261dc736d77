"""Everything a user can get wrong on the command line, checked before models or data load.

``validate(cfg)`` raises :class:`ConfigError` with one line naming the field and the fix
(``run.py`` prints it and exits 2; a sweep checks every job's config before the first starts).
"""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from altp import pipeline
from altp.config_checks import check_settings
from altp.data import synthetic
from altp.errors import ConfigError
from altp.pruning import build_pruner
from altp.run_identity import pruner_name


def validate(cfg: DictConfig) -> None:
    keep = cfg.get("keep")
    if not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise ConfigError(f"keep={keep}: must be a number in (0, 1], e.g. keep=0.25")
    if cfg.data.split not in synthetic.SPLITS:
        raise ConfigError(f"data.split={cfg.data.split}: must be val or test")
    limit = cfg.data.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"data.limit={limit}: must be a positive integer or null")
    if OmegaConf.is_missing(cfg.data, "root"):
        raise ConfigError(f"data.root is not set: pass data.root=DIR for data={cfg.data.name}")
    if cfg.data.get("generate") is None:
        for field in ("ann_dir", "image_dir"):
            if not Path(cfg.data[field]).is_dir():
                raise ConfigError(f"data.{field}={cfg.data[field]}: folder not found; set data.root "
                                  f"(or data.{field}) to where GranD-f lives")
    for field in cfg.model.get("required_dirs", []):  # weights folders of released checkpoints
        value = None if OmegaConf.is_missing(cfg.model, field) else cfg.model[field]
        if value is None or not Path(value).is_dir():
            raise ConfigError(f"model.{field}={value}: folder not found; {cfg.model.get('download_hint', '')}")
    preflight = cfg.model.get("preflight")  # the model's own cheap check of its files
    problem = instantiate(preflight) if preflight is not None else None
    if problem:
        raise ConfigError(problem)
    if cfg.similarity_model is not None and not Path(cfg.similarity_model).is_dir():
        raise ConfigError(f"similarity_model={cfg.similarity_model}: folder not found; give a local "
                          "bert-base-uncased folder or null")
    check_settings(cfg)  # batch_size / max_new_tokens types, the device, the GT files
    problem = pipeline.check_settings(cfg.get("prefetch"), cfg.get("prefetch_workers"), cfg.get("torch_threads"))
    if problem:
        raise ConfigError(problem)
    name = pruner_name(cfg)
    try:
        pruner = build_pruner(cfg.pruner)  # cheap: checks the pruner's own parameters
    except Exception as err:  # noqa: BLE001 - any constructor complaint is a config error
        cause = err.__cause__ or err
        raise ConfigError(f"pruner ({name}): {cause}") from None
    depth = cfg.model.llm.layers
    if any(layer >= depth for layer in pruner.layers):
        raise ConfigError(f"pruner acts at layer(s) {list(pruner.layers)} but {cfg.model.name}'s LLM has "
                          f"{depth} layers (model.llm.layers); choose pruner.layer < {depth}")
