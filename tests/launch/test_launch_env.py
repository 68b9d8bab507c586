"""read_dist_env: one reading of torchrun's, Slurm's or no launcher's environment."""

from __future__ import annotations

import pytest

from launch.env import DistEnv, export_torch_env, first_host, read_dist_env, slurm_job_id


def test_torchrun():
    env = {
        "TORCHELASTIC_RUN_ID": "x",
        "RANK": "5",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "8",
        "MASTER_ADDR": "n1",
        "MASTER_PORT": "1234",
        "SLURM_JOB_ID": "77",
        "SLURM_PROCID": "2",
        "SLURM_NTASKS": "4",
    }
    # torchrun under Slurm: torchrun's ranks win (Slurm's task id counts nodes, not processes).
    assert read_dist_env(env) == DistEnv(5, 1, 8, "n1", 1234, "torchrun", "77")


def test_srun_one_task_per_process():
    env = {
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "4",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_JOB_ID": "9",
        "MASTER_PORT": "2222",
    }
    assert read_dist_env(env) == DistEnv(3, 1, 4, "gpu07", 2222, "slurm", "9")


def test_single_process_even_inside_a_one_task_job():
    d = read_dist_env(
        {
            "SLURM_PROCID": "0",
            "SLURM_NTASKS": "1",
            "SLURM_ARRAY_JOB_ID": "5",
            "SLURM_ARRAY_TASK_ID": "2",
            "SLURM_JOB_ID": "6",
        }
    )
    assert (d.rank, d.world_size, d.launcher, d.job_id, d.is_main) == (0, 1, "single", "5_2", True)  # Slurm's %A_%a
    assert d.master_port > 0


@pytest.mark.parametrize(
    "nodelist, host",
    [
        ("vm", "vm"),
        ("node[01-04]", "node01"),
        ("gpu[07-09,12],cpu1", "gpu07"),
        ("a1,b2", "a1"),
        ("n[3]", "n3"),
    ],
)
def test_first_host(nodelist, host):
    assert first_host(nodelist) == host


def test_export_torch_env(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")  # recorded, so teardown restores (or removes) what export sets
        monkeypatch.delenv(key)
    export_torch_env(DistEnv(1, 0, 2, "h", 3, "slurm"))
    import os

    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == (
        "1",
        "2",
        "h",
        "3",
    )


def test_slurm_job_id():
    assert slurm_job_id({}) is None
    assert slurm_job_id({"SLURM_JOB_ID": "7"}) == "7"
    assert slurm_job_id({"SLURM_JOB_ID": "8", "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "1"}) == "7_1"
