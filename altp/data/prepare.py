"""The split a run uses: ``data=synthetic`` is written on first use, then the GranD-f layout is loaded.

Parallel jobs of a sweep share one synthetic folder: one of them writes it under a lock while the
others wait; a generation a killed run left half done is redone (it is deterministic), a folder
holding a different synthetic dataset is refused (``ConfigError``).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from altp.data import synthetic
from altp.data.grandf import GCGSplit, load_split
from altp.errors import ConfigError
from altp.files import wait_for_lock


def prepare_split(cfg: DictConfig) -> GCGSplit:
    data = cfg.data
    if data.get("generate") is not None:
        ensure_synthetic(Path(data.root), OmegaConf.to_container(data.generate))
    return load_split(data.ann_dir, data.split, data.image_dir, limit=data.get("limit"))


def ensure_synthetic(root: Path, generate: dict) -> None:
    """Write the synthetic dataset on first use; finish one that a killed run left half done."""
    wanted = synthetic.dataset_config(**generate)
    if synthetic.read_dataset_config(root) == wanted:
        return
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a") as lock:  # parallel jobs of a sweep: one writes, the others wait
        wait_for_lock(lock)
        _generate_synthetic(root, generate, wanted)


def _generate_synthetic(root: Path, generate: dict, wanted: dict) -> None:
    found = synthetic.read_dataset_config(root)
    if found == wanted:
        return
    marker = root / ".generating"  # our own unfinished generation: safe to redo (deterministic)
    if (found is not None or (root / "annotations").exists()) and not marker.exists():
        raise ConfigError(f"data.root={root} holds a different synthetic dataset; delete it or choose "
                          "another data.root")
    print(f"generating synthetic GranD-f into {root} (first use) ...", flush=True)
    marker.touch()
    synthetic.write_dataset(root, **generate)
    marker.unlink()
