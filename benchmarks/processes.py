"""Processes for benchmarks and tests: train.py started as a user starts it (one process or torchrun), and
functions run in gloo process groups."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(overrides: list[str], nproc: int = 1) -> list[str]:
    """train.py with these Hydra overrides: directly for one process, under torchrun for more."""
    if nproc == 1:
        return [sys.executable, str(ROOT / "train.py"), *overrides]
    torchrun = f"-m torch.distributed.run --nproc_per_node={nproc} --master_port={free_port()} --max-restarts=0"
    return [sys.executable, *torchrun.split(), str(ROOT / "train.py"), *overrides]


def train_env(threads: int = 1) -> dict:
    """This process's environment for a train.py child: its threads, no process group of ours to join."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true"}
    for key in ("SLURM_JOB_ID", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def run_train(overrides: list[str], nproc: int = 1, threads: int = 1):
    """train.py to its end, started as a user would: (the CompletedProcess, its wall seconds)."""
    command, start = train_command(overrides, nproc), time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=train_env(threads), capture_output=True, text=True)
    return proc, time.perf_counter() - start


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _gloo_worker(rank, world_size, port, fn, args):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
        dist.barrier()  # no rank tears gloo down while a peer is still using it
    finally:
        dist.destroy_process_group()


def run_distributed(fn, world_size: int, *args) -> None:
    """Run fn(rank, world_size, *args) in world_size gloo processes (fn must be importable)."""
    import torch.multiprocessing as mp

    mp.start_processes(
        _gloo_worker, args=(world_size, free_port(), fn, args), nprocs=world_size, join=True, start_method="spawn"
    )
