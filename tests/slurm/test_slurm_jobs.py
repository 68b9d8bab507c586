"""The project's batch script on a real local Slurm: a job completes; a preempted job checkpoints,
requeues itself, resumes and ends bitwise where an uninterrupted run ends; a job spans two nodes
(network namespaces) that meet through the rendezvous on the first."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import FAST, ROOT, cache_dir, losses_by_step, run_train

pytestmark = pytest.mark.slow

JOB_TIMEOUT = 150  # seconds for one job to finish on an idle 2-core machine (normally ~20)
ONE_NODE_LOSSES: dict[int, float] = {}  # the 6-step run of the first test, to compare the two-node run with


def job_overrides(tmp_path, steps: int) -> list[str]:
    return [*FAST, f"data.cache_dir={cache_dir(tmp_path)}", f"train.steps={steps}", "train.log_every=50"]


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def job_log(slurm, job_id: str, workdir: Path) -> str:
    logs = sorted(workdir.glob(f"*-{job_id}.out"))
    text = logs[0].read_text(errors="replace")[-6000:] if logs else "(no job log)"
    return f"--- job {job_id} log\n{text}\n{slurm.logs()}"


def wait_job(slurm, job_id: str, workdir: Path, states=("COMPLETED",), timeout: float = JOB_TIMEOUT) -> str:
    """Wait until the job reaches a final state; assert it is one of `states`."""
    final = {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
    }
    try:
        state = slurm.wait_for(
            lambda: (s := slurm.job_field(job_id, "JobState")) in final and s, timeout, f"job {job_id} to end"
        )
    except TimeoutError:
        slurm.run("scancel", job_id, check=False)
        raise AssertionError(f"job {job_id} did not end in {timeout} s\n{job_log(slurm, job_id, workdir)}") from None
    assert state in states, f"job {job_id} ended {state}\n{job_log(slurm, job_id, workdir)}"
    return state


def test_batch_script_runs_to_completion(slurm, tmp_path):
    """sbatch slurm/train.sbatch as a user would, with the job shape given on the command line."""
    steps = 6
    proc = slurm.run(
        "sbatch",
        "--parsable",
        f"--chdir={tmp_path}",
        "--gpus-per-node=0",
        "--cpus-per-task=2",
        "--export=ALL,NPROC_PER_NODE=2",
        str(ROOT / "slurm" / "train.sbatch"),
        *job_overrides(tmp_path, steps),
        cwd=ROOT,
    )
    job_id = proc.stdout.strip().split(";")[0]
    wait_job(slurm, job_id, tmp_path)
    assert slurm.job_field(job_id, "ExitCode") == "0:0"
    log = (tmp_path / f"slimtrain-{job_id}.out").read_text()  # %x-%j.out
    assert "2 process(es)" in log and "training exited 0" in log
    records = read_metrics(tmp_path / "runs" / f"slurm-{job_id}" / "metrics.jsonl")  # run dir from the job id
    assert sorted(losses_by_step(records)) == list(range(1, steps + 1))
    ONE_NODE_LOSSES.update(losses_by_step(records))
    assert (tmp_path / "runs" / f"slurm-{job_id}" / "checkpoints" / f"step_{steps:07d}").is_dir()


def submit_preempt_job(slurm, tmp_path, workdir, steps: int) -> str:
    """`python -m launch submit` as a user types it; returns the job id."""
    submit = [
        sys.executable,
        "-m",
        "launch",
        "submit",
        "--nodes",
        "1",
        "--gpus-per-node",
        "0",
        "--nproc-per-node",
        "2",
        "--cpus-per-task",
        "2",
        "--time",
        "30:00",
        "--job-name",
        "preempt",
        "--script-dir",
        str(tmp_path / "scripts"),
        f"--sbatch-arg=--chdir={workdir}",
        "--",
        *job_overrides(tmp_path, steps),
        "train.save_every=1000",
    ]
    proc = subprocess.run(submit, cwd=ROOT, env=slurm.env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()[2]


def release_requeued(slurm, job_id: str, workdir) -> None:
    """Wait for the requeue, then start the job again at once."""
    # Slurm holds a requeued batch job back for ~2 minutes (its BeginTime); release it at once.
    slurm.wait_for(
        lambda: slurm.job_field(job_id, "Restarts") == "1" and slurm.job_field(job_id, "JobState") == "PENDING",
        60,
        f"job {job_id} to requeue\n{job_log(slurm, job_id, workdir)}",
    )
    # Release it only once the node has finished cleaning up the first run: a launch that arrives while slurmd is
    # still killing the old step is refused ("already killed, do not launch batch job") and the job FAILs.
    slurm.wait_for(slurm.nodes_idle, 60, f"the node to be idle after job {job_id}'s first run")
    time.sleep(2)
    slurm.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")


def uninterrupted_losses(tmp_path, steps: int) -> dict:
    reference = run_train(
        tmp_path, [f"train.steps={steps}", "train.log_every=50", "train.save_every=1000"], nproc=2, name="reference"
    )
    assert reference.returncode == 0
    return losses_by_step(read_metrics(tmp_path / "runs" / "reference" / "metrics.jsonl"))


def test_preempted_job_requeues_and_resumes_exactly(slurm, tmp_path):
    """Submitted through `python -m launch submit`; SIGUSR1 to the batch shell is what --signal=B:USR1@lead
    sends before the time limit. The requeued job must end with the uninterrupted run's losses, bitwise."""
    steps, stop_after = 120, 15
    workdir = tmp_path / "job"
    workdir.mkdir()
    job_id = submit_preempt_job(slurm, tmp_path, workdir, steps)
    metrics_path = workdir / "runs" / f"slurm-{job_id}" / "metrics.jsonl"

    slurm.wait_for(
        lambda: (
            len(read_metrics(metrics_path)) > stop_after
            or slurm.job_field(job_id, "JobState") not in ("RUNNING", "PENDING")
        ),
        JOB_TIMEOUT,
        "the job to train a few steps",
    )
    assert slurm.job_field(job_id, "JobState") == "RUNNING", job_log(slurm, job_id, workdir)
    slurm.run("scancel", "--batch", "--signal=USR1", job_id)
    release_requeued(slurm, job_id, workdir)
    wait_job(slurm, job_id, workdir)

    log = (workdir / f"preempt-{job_id}.out").read_text()  # both runs, appended
    assert "SIGUSR1 received" in log and "requeueing" in log, log[-3000:]
    stopped_at = int(log.split("stopping at step ")[1].split()[0])
    assert stopped_at < steps and f"resumed from runs/slurm-{job_id}/checkpoints/step_{stopped_at:07d}" in log, log[
        -3000:
    ]

    resumed = losses_by_step(read_metrics(metrics_path))
    uninterrupted = uninterrupted_losses(tmp_path, steps)
    assert sorted(resumed) == list(range(1, steps + 1))
    assert resumed == uninterrupted  # bitwise, every step


def test_two_nodes_meet_through_the_rendezvous(slurm_two_nodes, tmp_path):
    """One process on each of two nodes (separate network namespaces and addresses): the c10d rendezvous
    on the first node's address and the gloo traffic cross between them; the run equals a one-node run."""
    slurm, steps = slurm_two_nodes, 6
    proc = slurm.run(
        "sbatch",
        "--parsable",
        f"--chdir={tmp_path}",
        "--nodes=2",
        "--gpus-per-node=0",
        "--cpus-per-task=2",
        "--export=ALL,NPROC_PER_NODE=1",
        str(ROOT / "slurm" / "train.sbatch"),
        *job_overrides(tmp_path, steps),
        cwd=ROOT,
    )
    job_id = proc.stdout.strip().split(";")[0]
    wait_job(slurm, job_id, tmp_path)
    assert slurm.job_field(job_id, "NodeList") == "n[1-2]"
    log = (tmp_path / f"slimtrain-{job_id}.out").read_text()
    assert "2 node(s) x 1 process(es), rendezvous 10.77.0.1:" in log and "2 process(es) on cpu" in log, log[-3000:]
    losses = losses_by_step(read_metrics(tmp_path / "runs" / f"slurm-{job_id}" / "metrics.jsonl"))
    assert sorted(losses) == list(range(1, steps + 1))
    if ONE_NODE_LOSSES:  # same world size, same batches: the same numbers, whichever node a rank is on
        assert losses == ONE_NODE_LOSSES
