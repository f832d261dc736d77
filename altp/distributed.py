"""torchrun support: one run's images split across processes, rank 0 evaluates.

``torchrun --nproc_per_node=N run.py ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; a plain
``python run.py`` is rank 0 of 1 and never touches torch.distributed. With WORLD_SIZE > 1 the
process group is initialised once per process (gloo on CPU, nccl on CUDA with device
``cuda:LOCAL_RANK``). Only objects travel between ranks (decisions of rank 0, per-rank timing);
the predictions themselves go through the shared run directory.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

T = TypeVar("T")
# Ranks wait for each other at the start (rank 0 claims the directory) and after prediction
# (the slowest shard): generous, since a resumed run's shards can be uneven.
TIMEOUT = timedelta(hours=4)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    env = os.environ
    return Dist(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def rank_tag() -> str:
    """'' for one process, '_rank<r>' under torchrun: keeps each rank's Hydra log folder apart."""
    info = from_env()
    return f"_rank{info.rank}" if info.world > 1 else ""


if not OmegaConf.has_resolver("rank_tag"):  # used by hydra.run.dir / hydra.sweep.dir in config.yaml
    OmegaConf.register_new_resolver("rank_tag", rank_tag)


def pick_device(name: str, info: Dist | None = None) -> torch.device:
    """``auto`` = cuda when available, else cpu; under torchrun ``cuda`` means cuda:LOCAL_RANK."""
    info = info or from_env()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and info.world > 1:
        return torch.device(f"cuda:{info.local_rank}")
    return torch.device(name)


def setup(device_name: str) -> tuple[Dist, torch.device]:
    """This process's rank and device; joins the process group on first use when WORLD_SIZE > 1."""
    info = from_env()
    device = pick_device(device_name, info)
    if info.world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
        else:
            dist.init_process_group("gloo", timeout=TIMEOUT)
        atexit.register(_shutdown)
    return info, device


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(items: list[T], info: Dist) -> list[T]:
    """Strided: rank r takes items r, r + N, r + 2N, ...; every item exactly once, no padding."""
    return items[info.rank::info.world]


def rank0_first(info: Dist, fn: Callable[[], T]) -> T:
    """Rank 0 runs ``fn``; every rank gets its result, or raises the exception rank 0 raised."""
    if info.world == 1:
        return fn()
    box: list = [None]
    if info.is_main:
        try:
            box[0] = ("ok", fn())
        except Exception as err:  # noqa: BLE001 - handed to every rank, then raised everywhere
            box[0] = ("error", err)
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return value


def gather(info: Dist, obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order; also a barrier: returns when all ranks got here."""
    if info.world == 1:
        return [obj]
    out: list = [None] * info.world
    dist.all_gather_object(out, obj)
    return out
