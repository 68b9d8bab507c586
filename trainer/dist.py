"""torch.distributed for the trainer: start the process group, and the few collectives the trainer needs.

This module and trainer/engine.py (the DeepSpeed engine) are the only ones in `trainer/` that touch
torch.distributed or DeepSpeed; everything else gets plain values from the functions below. Each collective
is a no-op in a world of one, so every code path is the same in one process.
"""

from __future__ import annotations

import datetime
import os
from contextlib import contextmanager

import deepspeed
import torch
import torch.distributed as dist

from launch.env import DistEnv, export_torch_env
from trainer.config import Config


def pick_device(cfg: Config, env: DistEnv) -> torch.device:
    use_cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA GPU is visible; use train.device=cpu")
    if use_cuda:
        torch.cuda.set_device(env.local_rank)
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")


def set_threads(num_threads: int) -> None:
    if num_threads > 0:
        torch.set_num_threads(num_threads)
        os.environ["OMP_NUM_THREADS"] = str(num_threads)


def process_group_backend(device: torch.device) -> str:
    """The default group's backend per tensor device (torchtitan's `cpu:gloo,cuda:nccl`): on a GPU, NCCL
    serves CUDA tensors and gloo the host-side scalars and objects, which NCCL refuses ("No backend type
    associated with device type cpu"). CPU runs use the same routing syntax with gloo alone."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "cpu:gloo"


def init_distributed(env: DistEnv, device: torch.device, timeout_s: int = 600) -> None:
    """One process gets a world of one so every code path is the same."""
    if dist.is_initialized():
        return
    export_torch_env(env)
    deepspeed.init_distributed(
        dist_backend=process_group_backend(device),
        auto_mpi_discovery=False,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def served_devices(backend: str) -> set[str]:
    """Device types a backend string serves: `cpu:gloo,cuda:nccl` -> {cpu, cuda}; `nccl` -> {cuda}."""
    bare = {"nccl": "cuda", "gloo": "cpu", "mpi": "cpu"}
    return {pair.split(":")[0] if ":" in pair else bare.get(pair, "cpu") for pair in backend.split(",")}


def collective_device() -> torch.device:
    """Where a host-side value must live for a collective on the default group: the CPU when a CPU backend
    serves the group, else the current GPU (a group created with `nccl` alone, e.g. by an outside launcher)."""
    if "cpu" in served_devices(dist.get_backend()):
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def _multi_process() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_max(value: float) -> float:
    if not _multi_process():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_reduce_sum(values: list[float]) -> list[float]:
    if not _multi_process():
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=collective_device())
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj, src: int = 0):
    if not _multi_process():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=collective_device())
    return box[0]


def gather_object(obj, dst: int = 0) -> list | None:
    """Every rank's `obj` on rank `dst` (None elsewhere); a one-item list in a single process."""
    if not _multi_process():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def all_gather_object(obj) -> list:
    if not _multi_process():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


_kept = 0  # > 0 while a caller keeps one process group across runs (one_process_group)


@contextmanager
def one_process_group():
    """One process group for every run inside (the jobs of a `-m` sweep), destroyed on exit. A second
    rendezvous in one process hangs under torchrun, whose agent's store keeps the first one's keys."""
    global _kept
    _kept += 1
    try:
        yield
    finally:
        _kept -= 1
        destroy()


def destroy() -> None:
    if dist.is_initialized() and not _kept:
        dist.destroy_process_group()
