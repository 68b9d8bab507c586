"""Where this process sits in the job: read once, from torchrun, Slurm, or nothing (one process)."""
from __future__ import annotations

import os
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


def read_dist_env(environ: dict[str, str] | None = None) -> DistEnv:
    env = os.environ if environ is None else environ
    job_id = env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID")
    if "TORCHELASTIC_RUN_ID" in env or ("RANK" in env and "WORLD_SIZE" in env):
        return DistEnv(
            rank=int(env["RANK"]), local_rank=int(env.get("LOCAL_RANK", 0)), world_size=int(env["WORLD_SIZE"]),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"), master_port=int(env.get("MASTER_PORT", 29500)),
            launcher="torchrun", job_id=job_id,
        )
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", 1)) > 1:
        # srun launching one task per process directly (no torchrun).
        nodelist = env.get("SLURM_JOB_NODELIST", "127.0.0.1").split(",")[0].split("[")[0]
        return DistEnv(
            rank=int(env["SLURM_PROCID"]), local_rank=int(env.get("SLURM_LOCALID", 0)),
            world_size=int(env["SLURM_NTASKS"]), master_addr=env.get("MASTER_ADDR", nodelist),
            master_port=int(env.get("MASTER_PORT", 29500)), launcher="slurm", job_id=job_id,
        )
    return DistEnv(0, 0, 1, "127.0.0.1", int(env.get("MASTER_PORT", 0)) or _free_port(), "single", job_id)


def export_torch_env(d: DistEnv) -> None:
    """Make torch.distributed's env:// rendezvous see this layout."""
    os.environ.update(
        RANK=str(d.rank), LOCAL_RANK=str(d.local_rank), WORLD_SIZE=str(d.world_size),
        MASTER_ADDR=d.master_addr, MASTER_PORT=str(d.master_port),
    )
