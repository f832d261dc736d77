"""Experiment logging: ``logger=none`` (default) or ``logger=wandb``.

wandb logs, per run: the resolved config, every metric of metrics.json (flattened with "/"),
the per-layer token schedule (table + line plot), timing (incl. a per-rank table) and
``logger.images`` kept-token figures; after a sweep, the paper tables of the sweep's runs.
It runs offline by default (``<output_root>/wandb``; ``wandb sync`` uploads later), so nothing
leaves the machine unless ``logger.mode=online``. wandb never makes a run fail: when it cannot
be imported or started, or a call fails, one warning is issued and the run goes on unlogged.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from altp.run_identity import PRESETS

_WARNED = False
PALETTE = np.array([(0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16),
                    (0.58, 0.4, 0.74), (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.09, 0.75, 0.81)])


def warn_once(message: str) -> None:
    """One warning per process, however many runs of a sweep hit the same problem."""
    global _WARNED
    if not _WARNED:
        _WARNED = True
        warnings.warn(message, RuntimeWarning, stacklevel=3)


class NullLogger:
    """``logger=none``: logs nothing."""

    enabled = False

    def log_run(self, cfg: DictConfig, metrics: dict, figures: Callable[[int], list] | None = None) -> None:
        pass

    def log_tables(self, tables: dict[str, tuple[list[str], list]], name: str) -> None:
        pass


class WandbLogger(NullLogger):
    enabled = True

    def __init__(self, settings: DictConfig):
        self.settings = settings
        self.n_images = int(settings.get("images", 0) or 0)

    def _start(self, **kwargs):
        """A wandb run, or None (after one warning) when wandb is missing or cannot start."""
        try:
            import wandb
        except Exception as err:  # noqa: BLE001 - ImportError, or a broken install
            warn_once(f"logger=wandb: wandb cannot be imported ({type(err).__name__}: {err}); "
                      "the run goes on without wandb logging")
            return None
        s = self.settings
        try:
            Path(s.dir).mkdir(parents=True, exist_ok=True)
            return wandb.init(project=s.project, entity=s.get("entity"), mode=s.mode, dir=str(s.dir),
                              tags=list(s.get("tags") or []), reinit="finish_previous",
                              settings=wandb.Settings(console="off", silent=True), **kwargs)
        except Exception as err:  # noqa: BLE001 - no login, no network, bad mode, ...
            warn_once(f"logger=wandb: wandb.init failed ({type(err).__name__}: {err}); "
                      "the run goes on without wandb logging")
            return None

    def log_run(self, cfg: DictConfig, metrics: dict, figures: Callable[[int], list] | None = None) -> None:
        try:
            config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        except Exception:  # noqa: BLE001 - the unresolved config is still worth having
            config = OmegaConf.to_container(cfg, resolve=False)
        config.pop(PRESETS, None)  # the presets as written (altp.run_identity), not settings
        run = self._start(name=run_name(metrics), group=self.settings.get("group") or sweep_group(),
                          job_type="run", config={**config, "run_dir": metrics.get("run_dir")})
        if run is None:
            return
        try:
            import wandb

            flat = flatten({k: v for k, v in metrics.items() if k != "timing"})
            flat |= flatten({"timing": {k: v for k, v in metrics.get("timing", {}).items() if k != "per_rank"}})
            run.summary.update(flat)
            logged = {k: v for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            schedule = wandb.Table(columns=["layer", "tokens", "visual_tokens"],
                                   data=[[i, t, v] for i, (t, v) in enumerate(
                                       zip(metrics.get("tokens_per_layer", []), metrics.get("visual_per_layer", [])))])
            logged["token_schedule"] = schedule
            logged["token_schedule_plot"] = wandb.plot.line(schedule, "layer", "visual_tokens",
                                                            title="visual tokens per LLM layer (prefill)")
            per_rank = metrics.get("timing", {}).get("per_rank") or []
            if per_rank:
                columns = sorted({k for r in per_rank for k in r})
                logged["timing/per_rank"] = wandb.Table(columns=columns,
                                                        data=[[r.get(c) for c in columns] for r in per_rank])
            if figures is not None and self.n_images > 0:
                logged["kept_tokens"] = [wandb.Image(array, caption=caption)
                                         for array, caption in figures(self.n_images)]
            run.log(logged)
        except Exception as err:  # noqa: BLE001 - logging must never end a run
            warn_once(f"logger=wandb: logging failed ({type(err).__name__}: {err}); the run goes on")
        finally:
            _finish(run)

    def log_tables(self, tables: dict[str, tuple[list[str], list]], name: str) -> None:
        """The sweep's paper tables (eval.tables rows), one wandb.Table each, in a run of their own."""
        run = self._start(name=f"tables-{name}", group=self.settings.get("group") or name, job_type="tables")
        if run is None:
            return
        try:
            import wandb

            logged = {}
            for key, (columns, rows) in tables.items():
                data, section, group = [], "", ""
                for label, cells in rows:
                    if not cells:  # a heading row: a section ("<model> on <data>") or a keep group under it
                        section, group = (label, "") if " on " in label else (section, label)
                        continue
                    data.append([section, group, label, *cells])  # wandb tables have no heading rows
                logged[key] = wandb.Table(columns=["section", "group", *columns], data=data)
            run.log(logged)
        except Exception as err:  # noqa: BLE001
            warn_once(f"logger=wandb: logging the sweep tables failed ({type(err).__name__}: {err})")
        finally:
            _finish(run)


def _finish(run) -> None:
    try:
        run.finish()
    except Exception as err:  # noqa: BLE001
        warn_once(f"logger=wandb: wandb.finish failed ({type(err).__name__}: {err})")


def make_logger(cfg: DictConfig) -> NullLogger:
    settings = cfg.get("logger")
    if settings is None or settings.get("name", "none") == "none":
        return NullLogger()
    if settings.name == "wandb":
        return WandbLogger(settings)
    raise ValueError(f"logger={settings.name}: unknown (none | wandb)")


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}/")
        elif value is not None:
            out[f"{prefix}{key}"] = value
    return out


def run_name(metrics: dict) -> str:
    """The run directory below <output_root>/runs: data-split/model/pruner/keep."""
    parts = Path(str(metrics.get("run_dir", "run"))).parts
    return "/".join(parts[parts.index("runs") + 1:] if "runs" in parts else parts[-4:])


def sweep_group() -> str | None:
    """In a Hydra multirun: the sweep folder's name, so a sweep's runs form one wandb group."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return Path(HydraConfig.get().sweep.dir).name
    except Exception:  # noqa: BLE001 - a group is a nicety
        pass
    return None


# --- figures ---------------------------------------------------------------------------------
def kept_token_figure(original, kept: np.ndarray | None, n_visual: int, prediction) -> np.ndarray:
    """[image with pruned grid cells darkened | predicted masks], HxWx3 uint8."""
    image = np.asarray(original.convert("RGB"), dtype=np.float32) / 255.0
    h, w = image.shape[:2]
    left = image
    if kept is not None:
        side = int(round(math.sqrt(n_visual)))
        grid = np.zeros(side * side, dtype=bool)
        grid[kept] = True
        cells = grid.reshape(side, side)[(np.arange(h) * side // h)[:, None], (np.arange(w) * side // w)[None, :]]
        left = image * np.where(cells, 1.0, 0.25)[..., None]
    right = image.copy()
    for i, mask in enumerate(prediction.masks):
        mask = np.asarray(mask, dtype=bool)
        right[mask] = 0.45 * right[mask] + 0.55 * PALETTE[i % len(PALETTE)]
    gap = np.ones((h, max(4, w // 50), 3), dtype=np.float32)
    return (np.concatenate([left, gap, right], axis=1) * 255).round().astype(np.uint8)


def sample_figures(model, engine, split, max_new_tokens: int, n: int) -> list[tuple[np.ndarray, str]]:
    """Kept-token figures of the split's first ``n`` images (one extra forward pass each)."""
    from altp.data.grandf import load_image

    figures = []
    for gt in split.images[:n]:
        original = load_image(split.image_path(gt.image_id))
        with torch.inference_mode():
            predictions, out = model.predict([original], engine, max_new_tokens)
        kept = out.kept_grid_index[-1][0].cpu().numpy() if out.kept_grid_index else None
        n_kept = len(kept) if kept is not None else model.n_visual
        caption = (f"{gt.image_id}: kept {n_kept}/{model.n_visual} visual tokens (pruned dark) | "
                   f"{predictions[0].caption}")
        figures.append((kept_token_figure(original, kept, model.n_visual, predictions[0]), caption))
    return figures
