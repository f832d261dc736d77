"""A run's identity and its directory, from the composed config alone.

* The pruner and the model are named by their config's ``name`` field (``configs/pruner/fastv.yaml``
  says ``name: fastv``), so two presets of one class are two names, and nothing here reads the
  repository's ``configs/`` folder.
* A run directory names every non-default setting that changes results: the pruner and model
  fields that differ from their preset. The presets come with the composed config:
  ``configs/config.yaml`` has Hydra compose the chosen ``model`` and ``pruner`` a second time,
  unchanged by command-line overrides, under ``_preset`` (a config built another way, without
  ``_preset``, names no fields; a directory holding another config's results is still refused).
* ``run_identity`` (``run_config.json``) is what determines the results; ``claim_directory``
  refuses a directory that holds results of another identity unless ``overwrite=true``.

Runs of the configs as they were before the ``name`` fields existed keep their directory and
identity (the ``name`` field is not part of ``pruner_config``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from altp.errors import ConfigError
from altp.files import write_json_atomic
from altp.manifest import run_files
from altp.pruning import build_pruner
from altp.summary import record_files

PRESETS = "_preset"  # the composed config's copy of the chosen presets (configs/config.yaml)
# model fields that never change results (or are named elsewhere): left out of the run's name
MODEL_FIELDS_UNNAMED = {"name", "loader", "preflight", "fingerprint", "required_dirs", "download_hint",
                        "batch_size", "max_new_tokens", "llm"}
PRUNER_FIELDS_UNNAMED = {"name", "keep", "seed"}  # named as the pruner / keep<k> / seed=


def pruner_name(cfg: DictConfig) -> str:
    name = cfg.pruner.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError("pruner: the pruner config has no name field; add one (e.g. name: fastv in "
                          "configs/pruner/fastv.yaml): it names the run")
    return name


def preset(cfg: DictConfig, group: str) -> DictConfig | None:
    """The ``model`` or ``pruner`` preset as its file says (``_preset``), or None."""
    presets = cfg.get(PRESETS)
    return None if presets is None else presets.get(group)


def effective_keep(cfg: DictConfig) -> float:
    """``keep``, or 1.0 for a pruner whose kept tokens do not depend on it (``none``, PDrop's
    fixed schedule): one run, not one per keep."""
    return float(cfg.keep) if build_pruner(cfg.pruner).uses_keep else 1.0


def pruner_overrides(cfg: DictConfig) -> dict:
    """The pruner fields that differ from its preset (they name the run)."""
    base = preset(cfg, "pruner")
    if base is None:
        return {}
    default = OmegaConf.to_container(base, resolve=True)
    current = OmegaConf.to_container(cfg.pruner, resolve=True)
    return {k: v for k, v in sorted(current.items()) if k not in PRUNER_FIELDS_UNNAMED and default.get(k) != v}


def model_overrides(cfg: DictConfig) -> dict:
    """Model settings that differ from the model's preset (``model.retry_questions=true``, other
    weights...): they name the run. Mandatory fields (``???``, the download folders) are not
    named: a run directory holding another checkpoint's results is refused instead."""
    base = preset(cfg, "model")
    if base is None:
        return {}
    default = OmegaConf.to_container(base, resolve=False)
    current = OmegaConf.to_container(cfg.model, resolve=False)  # interpolations stay as written
    named = {}
    for key, value in current.items():
        if key in MODEL_FIELDS_UNNAMED or key not in default or default[key] == "???":
            continue
        if value != default[key]:
            is_path = isinstance(value, str) and ("/" in value or Path(value).exists())
            named[key] = _path_tag(str(cfg.model[key])) if is_path else value
    return named


def run_variant(cfg: DictConfig) -> dict:
    """Non-default settings that change results: pruner params, seed, generation, similarity."""
    variant = pruner_overrides(cfg)
    if "seed" in cfg.pruner and cfg.seed != 0:
        variant["seed"] = cfg.seed
    if cfg.max_new_tokens != cfg.model.max_new_tokens:
        variant["max_new_tokens"] = cfg.max_new_tokens
    if cfg.similarity != "mean_pool":
        variant["similarity"] = cfg.similarity
    if cfg.similarity_model is not None:
        variant["similarity_model"] = _path_tag(cfg.similarity_model)
    return variant


def run_directory(cfg: DictConfig) -> Path:
    """``<output_root>/runs/<data>-<split>[-limit<n>]/<model>[<settings>]/<pruner>[<params>]/keep<k>``."""
    name = pruner_name(cfg)
    params = ",".join(f"{k}={_short(v)}" for k, v in run_variant(cfg).items())
    limit = f"-limit{cfg.data.limit}" if cfg.data.get("limit") else ""
    settings = ",".join(f"{k}={_short(v)}" for k, v in model_overrides(cfg).items())
    model = cfg.model.name + (f"[{settings}]" if settings else "")
    pruner = f"{name}[{params}]" if params else name
    return (Path(cfg.output_root) / "runs" / f"{cfg.data.name}-{cfg.data.split}{limit}" / model
            / pruner / f"keep{effective_keep(cfg):g}")


def _path_tag(path: str) -> str:
    """Folder name + a hash of its absolute path: readable, and two folders never collide."""
    resolved = str(Path(path).resolve())
    return f"{Path(resolved).name}-{hashlib.sha1(resolved.encode()).hexdigest()[:6]}"


def _short(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()  # as typed on the command line
    return "-".join(map(str, value)) if isinstance(value, list) else str(value)


def model_identity(cfg: DictConfig) -> dict:
    """What is loaded and how: name, loader and, where cheap to hash, the weights' content (batch
    size, hints, file checks and declared shapes change no result)."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    identity = {k: model[k] for k in ("name", "loader")}
    if cfg.model.get("fingerprint") is not None:
        identity["weights"] = instantiate(cfg.model.fingerprint)
    return identity


def run_identity(cfg: DictConfig) -> dict:
    """What determines the results; a run directory holds results of exactly one identity."""
    keep = effective_keep(cfg)
    pruner = OmegaConf.to_container(cfg.pruner, resolve=True)
    pruner.pop("name", None)  # it is "pruner" below
    if not build_pruner(cfg.pruner).uses_keep:
        pruner.pop("keep", None)  # unused: every keep is this one run
    return {"model": model_identity(cfg),
            "data": OmegaConf.to_container(cfg.data, resolve=True),
            "pruner": pruner_name(cfg), "pruner_config": pruner,
            "keep": keep, "max_new_tokens": cfg.max_new_tokens,
            "similarity_model": cfg.similarity_model, "similarity": cfg.similarity}


def claim_directory(run_dir: Path, identity: dict, overwrite: bool) -> None:
    """Make ``run_dir`` this identity's (``run_config.json``); results of another identity are
    refused, or discarded with ``overwrite``."""
    path = run_dir / "run_config.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != identity:
            if not overwrite:
                changed = sorted(k for k in identity if previous.get(k) != identity[k])
                raise ConfigError(f"{run_dir} holds results of a different config (changed: "
                                  f"{', '.join(changed)}); rerun with overwrite=true to discard them")
            for file in [*(run_dir / "predictions").glob("*.json"), *record_files(run_dir, "errors"),
                         *record_files(run_dir, "timing"), *run_files(run_dir), run_dir / "metrics.json"]:
                file.unlink(missing_ok=True)
    (run_dir / "predictions").mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, identity)
