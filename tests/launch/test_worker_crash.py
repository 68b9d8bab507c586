"""A worker that dies mid-run must end the whole job, non-zero, within a bounded time (no hang)."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import psutil
import pytest

from tests.helpers import FAST, ROOT, cache_dir, train_command, train_env

pytestmark = pytest.mark.slow


def _steps_logged(path) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.strip() and "train/loss" in json.loads(line))


@pytest.mark.parametrize("sig", [signal.SIGKILL])
def test_killing_one_worker_ends_the_job_within_60s(tmp_path, sig):
    args = [
        *FAST,
        f"run.out_dir={tmp_path / 'runs'}",
        "run.name=crash",
        f"data.cache_dir={cache_dir(tmp_path)}",
        "train.steps=100000",
        "train.save_every=100000",
    ]
    launcher = subprocess.Popen(
        train_command(args, nproc=2),
        cwd=ROOT,
        env=train_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        metrics = tmp_path / "runs" / "crash" / "metrics.jsonl"
        deadline = time.monotonic() + 180
        while _steps_logged(metrics) < 3:
            assert launcher.poll() is None, f"torchrun ended early:\n{launcher.stdout.read()[-4000:]}"
            assert time.monotonic() < deadline, "the run did not start training in 180 s"
            time.sleep(0.2)
        workers = [
            p for p in psutil.Process(launcher.pid).children(recursive=True) if "train.py" in " ".join(p.cmdline())
        ]
        assert len(workers) == 2, [p.cmdline() for p in workers]
        victim, survivor = workers
        killed_at = time.monotonic()
        victim.send_signal(sig)
        rc = launcher.wait(timeout=90)
        elapsed = time.monotonic() - killed_at
        output = launcher.stdout.read()
        print(f"torchrun exited {rc}, {elapsed:.1f} s after a worker got {sig.name}")
        assert rc != 0, output[-3000:]
        assert elapsed < 60, f"the job took {elapsed:.0f} s to end after a worker died"
        assert not survivor.is_running() or survivor.status() == psutil.STATUS_ZOMBIE, (
            "the other worker outlived the job"
        )
    finally:
        if launcher.poll() is None:  # only what this test started
            for p in psutil.Process(launcher.pid).children(recursive=True):
                p.kill()
            launcher.kill()
            launcher.wait()
