"""Render slurm/train.sbatch for a job shape and submit it.

The script's body is used as is; only its #SBATCH header is replaced by one built from a SlurmJob,
so a rendered script and `sbatch --nodes=... slurm/train.sbatch` run exactly the same code.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "slurm" / "train.sbatch"
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # Slurm's forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S


@dataclass
class SlurmJob:
    nodes: int = 1
    gpus_per_node: int = 8
    """GPUs requested per node (0: a CPU-only job)."""
    nproc_per_node: int | None = None
    """Training processes per node; None: one per GPU (1 on a CPU-only job)."""
    cpus_per_task: int | None = None
    """CPUs for each node's task (all its processes together); None: 8 per process."""
    partition: str | None = None
    time: str = "01:00:00"
    """Slurm's time limit: M, H:M:S, D-H:M:S ..."""
    job_name: str = "slimtrain"
    account: str | None = None
    qos: str | None = None
    mem: str | None = None
    """Memory per node (Slurm units, e.g. 500G; '0' asks for all of it); None: the partition's default."""
    exclusive: bool = False
    preempt_lead_s: int = 300
    """Seconds before the time limit at which Slurm asks the job to checkpoint and requeue."""
    output: str = "%x-%j.out"
    env: dict[str, str] = field(default_factory=dict)
    """More environment for the job (e.g. MAX_REQUEUES, NCCL_DEBUG), added to --export."""
    extra: list[str] = field(default_factory=list)
    """More sbatch options, verbatim (e.g. --constraint=h100)."""

    def __post_init__(self):
        if self.nodes < 1:
            raise ValueError(f"--nodes={self.nodes}: need at least 1 node")
        if self.gpus_per_node < 0:
            raise ValueError(f"--gpus-per-node={self.gpus_per_node}: must be 0 (CPU only) or more")
        if self.nproc_per_node is not None and self.nproc_per_node < 1:
            raise ValueError(f"--nproc-per-node={self.nproc_per_node}: must be at least 1")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise ValueError(f"--cpus-per-task={self.cpus_per_task}: must be at least 1")
        if not _TIME.match(self.time):
            raise ValueError(f"--time={self.time!r} is not a Slurm time limit; use e.g. 01:00:00 or 2-00:00:00")
        if self.preempt_lead_s < 0:
            raise ValueError(f"--preempt-lead={self.preempt_lead_s}: must be 0 (no signal) or more seconds")
        for key, value in self.env.items():
            if not re.fullmatch(r"[A-Za-z_]\w*", key) or "," in str(value):
                raise ValueError(f"--env {key}={value}: names are letters, digits and _; values cannot hold a comma")
        if not re.fullmatch(r"[\w.+-]+", self.job_name):
            raise ValueError(f"--job-name={self.job_name!r}: use letters, digits and ._+- only")

    @property
    def procs_per_node(self) -> int:
        return self.nproc_per_node or max(1, self.gpus_per_node)

    def sbatch_options(self) -> list[str]:
        cpus = self.cpus_per_task or 8 * self.procs_per_node
        opts = [f"--job-name={self.job_name}", f"--nodes={self.nodes}", "--ntasks-per-node=1"]
        if self.gpus_per_node:
            opts.append(f"--gpus-per-node={self.gpus_per_node}")
        opts += [f"--cpus-per-task={cpus}", f"--time={self.time}"]
        opts += [
            f"--{name}={value}"
            for name, value in (
                ("partition", self.partition),
                ("account", self.account),
                ("qos", self.qos),
                ("mem", self.mem),
            )
            if value is not None
        ]
        if self.exclusive:
            opts.append("--exclusive")
        opts += [f"--output={self.output}", "--open-mode=append", "--requeue"]
        if self.preempt_lead_s:
            opts.append(f"--signal=B:USR1@{self.preempt_lead_s}")
        # The script then runs from anywhere: it finds the repository and its process count here.
        env = {"SLIMTRAIN_ROOT": str(ROOT), "NPROC_PER_NODE": str(self.procs_per_node), **self.env}
        opts.append("--export=" + ",".join(["ALL", *(f"{k}={v}" for k, v in env.items())]))
        return opts + list(self.extra)


def template_parts(text: str) -> tuple[list[str], list[str]]:
    """(comment lines above the #SBATCH block, everything after it)."""
    lines = text.splitlines()
    sbatch = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
    if not sbatch:
        raise ValueError(f"{TEMPLATE} has no #SBATCH lines")
    return lines[1 : sbatch[0]], lines[sbatch[-1] + 1 :]


def render(job: SlurmJob, template: str | None = None) -> str:
    """The batch script for this job: the template's body under a header for this job shape."""
    head, body = template_parts(template if template is not None else TEMPLATE.read_text())
    header = ["#!/bin/bash", f"# Rendered by `python -m launch submit` from slurm/{TEMPLATE.name}.", *head]
    return "\n".join(header + [f"#SBATCH {opt}" for opt in job.sbatch_options()] + body) + "\n"


def submit(
    job: SlurmJob,
    overrides: list[str],
    script_dir: str | os.PathLike = "runs/launch",
    env: dict[str, str] | None = None,
) -> tuple[str, Path]:
    """Write the rendered script under script_dir and sbatch it; returns (job id, script path)."""
    script_dir = Path(script_dir)
    script_dir.mkdir(parents=True, exist_ok=True)
    path = script_dir / f"{job.job_name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.sbatch"
    path.write_text(render(job))
    proc = subprocess.run(["sbatch", "--parsable", str(path), *overrides], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0], path


def sbatch_command(path: str | os.PathLike, overrides: list[str]) -> str:
    return shlex.join(["sbatch", str(path), *overrides])


def job_from_dict(values: dict) -> SlurmJob:
    known = {f.name for f in fields(SlurmJob)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown launch setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return SlurmJob(**values)
