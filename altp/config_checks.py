"""Config checks that need more than the config's own values: types Hydra lets through, the
device this torch can use, and the ground-truth files a GranD-f folder must hold.

Each raises :class:`ConfigError` with one line naming the field and the fix, so ``run.py`` can
answer before any run directory exists (``device=cuda`` on a CPU-only torch used to fail inside
the run with an AssertionError, after the directory was claimed).
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from altp import distributed
from altp.errors import ConfigError

GT_FILES = ("{split}_gcg_coco_caption_gt.json", "{split}_gcg_coco_mask_gt.json")


def check_settings(cfg: DictConfig) -> None:
    """batch_size / max_new_tokens, the device, the GranD-f annotation files."""
    for field in ("batch_size", "max_new_tokens"):
        positive_int(field, cfg[field])
    check_device(cfg.device)
    if cfg.data.get("generate") is None:  # synthetic data are written on first use
        check_gt_files(Path(cfg.data.ann_dir), cfg.data.split)


def positive_int(field: str, value) -> None:
    # a command-line value Hydra cannot type stays a string (batch_size=abc)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{field}={value}: must be a positive integer, e.g. {field}=4")


def check_device(name) -> None:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` (or another torch device this build can use)."""
    if name == "auto":
        return
    try:
        device = distributed.pick_device(str(name))  # under torchrun: cuda -> cuda:LOCAL_RANK
    except RuntimeError:
        raise ConfigError(f"device={name}: not a torch device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
            raise ConfigError(f"device={name}: this torch {torch.__version__} ({build}) cannot use CUDA; "
                              "use device=cpu or device=auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device={name}: only {count} CUDA device(s) visible; use cuda:0..cuda:{count - 1}")
        return
    backend = getattr(torch, device.type, None)  # mps, xpu, ...: available only on some builds
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise ConfigError(f"device={name}: not available in this torch {torch.__version__}; "
                          "use auto, cpu or cuda")


def check_gt_files(ann_dir: Path, split: str) -> None:
    """The two GT files of the split, so a folder with the right layout but no JSON is one line."""
    for pattern in GT_FILES:
        path = ann_dir / pattern.format(split=split)
        if not path.is_file():
            found = sorted(p.name for p in ann_dir.glob("*.json"))[:4] if ann_dir.is_dir() else []
            listing = f"it holds {', '.join(found)}" if found else "it holds no .json file"
            raise ConfigError(f"data.ann_dir={ann_dir}: {path.name} not found ({listing}); put the "
                              "GranD-f annotations/val_test files there (HF dataset MBZUAI/GranD-f)")
