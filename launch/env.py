"""Where this process sits in the job: read once, from torchrun, Slurm, or nothing (one process)."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    launcher: str  # torchrun | slurm | single
    job_id: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: 'gpu[07-09,12],cpu1' -> 'gpu07' (what `scontrol show hostnames` gives
    first)."""
    match = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?", nodelist.strip())
    prefix, ranges = match.group(1), match.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def slurm_job_id(environ: dict[str, str] | None = None) -> str | None:
    """This Slurm job's id, stable across requeues; an array task is '<array job>_<task>' (Slurm's %A_%a)."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def read_dist_env(environ: dict[str, str] | None = None) -> DistEnv:
    env = os.environ if environ is None else environ
    job_id = slurm_job_id(env)
    if "TORCHELASTIC_RUN_ID" in env or ("RANK" in env and "WORLD_SIZE" in env):
        return DistEnv(
            rank=int(env["RANK"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            world_size=int(env["WORLD_SIZE"]),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            launcher="torchrun",
            job_id=job_id,
        )
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", 1)) > 1:
        # srun launching one task per process directly (no torchrun).
        nodelist = first_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1"))
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            world_size=int(env["SLURM_NTASKS"]),
            master_addr=env.get("MASTER_ADDR", nodelist),
            master_port=int(env.get("MASTER_PORT", 29500)),
            launcher="slurm",
            job_id=job_id,
        )
    return DistEnv(0, 0, 1, "127.0.0.1", int(env.get("MASTER_PORT", 0)) or _free_port(), "single", job_id)


def export_torch_env(d: DistEnv) -> None:
    """Make torch.distributed's env:// rendezvous see this layout."""
    os.environ.update(
        RANK=str(d.rank),
        LOCAL_RANK=str(d.local_rank),
        WORLD_SIZE=str(d.world_size),
        MASTER_ADDR=d.master_addr,
        MASTER_PORT=str(d.master_port),
    )
