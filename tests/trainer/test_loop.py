"""End to end through torchrun and DeepSpeed: ZeRO stages, exact resume, resume after SIGKILL, bad input."""

import os
import signal
import subprocess
import time

import pytest

from tests.helpers import FAST, ROOT, cache_dir, losses_by_step, metrics, run_train, train_command, train_env

pytestmark = pytest.mark.slow

STEPS = 60
RESUME = ["train.zero_stage=2", f"train.steps={STEPS}", "train.save_every=10", "train.keep_last=3"]


def val_losses(records):
    return [r["val/loss"] for r in records if "val/loss" in r]


def logged_once(records) -> bool:
    """After a resume, metrics.jsonl holds each training step exactly once, in order."""
    steps = [r["step"] for r in records if "train/loss" in r]
    return steps == list(range(1, len(steps) + 1))


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_two_processes_train_under_each_zero_stage(tmp_path, stage):
    run_train(tmp_path, [f"train.zero_stage={stage}", "train.steps=12", "train.eval_every=12"], nproc=2)
    records = metrics(tmp_path)
    losses = losses_by_step(records)
    assert sorted(losses) == list(range(1, 13))
    vals = val_losses(records)
    assert vals[-1] < vals[0] - 0.3, vals
    mem = [r for r in records if "mem/optim_state_bytes" in r][-1]
    assert mem["mem/optim_state_bytes"] > 0 and mem["mem/grad_bytes"] > 0
    assert os.path.isdir(tmp_path / "runs" / "run" / "checkpoints" / "step_0000012")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight")
    run_train(tmp, RESUME, nproc=2)
    return losses_by_step(metrics(tmp))


def test_resume_is_bitwise_exact(tmp_path, straight):
    first = run_train(tmp_path, [*RESUME, f"train.stop_at={STEPS // 2}"], nproc=2, check=False)
    # each worker exits 75 (preempted: resume me); torchrun reports it as a failed attempt
    assert first.returncode == 1 and "exitcode  : 75" in first.stderr, first.stderr[-3000:]
    assert max(losses_by_step(metrics(tmp_path))) == STEPS // 2
    second = run_train(tmp_path, RESUME, nproc=2)
    assert "resumed from" in second.stdout and f"step {STEPS // 2}" in second.stdout
    assert losses_by_step(metrics(tmp_path)) == straight  # float equality: bitwise
    assert logged_once(metrics(tmp_path))


def test_resume_after_sigkill_is_bitwise_exact(tmp_path, straight):
    args = [*FAST, *RESUME, f"run.out_dir={tmp_path / 'runs'}", "run.name=run", f"data.cache_dir={cache_dir(tmp_path)}"]
    proc = subprocess.Popen(
        train_command(args, 2),
        cwd=ROOT,
        env=train_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ckpts = tmp_path / "runs" / "run" / "checkpoints"
    deadline = time.time() + 300
    while not (ckpts / "step_0000020").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers, mid-run, no chance to save
    proc.wait()
    done = max(losses_by_step(metrics(tmp_path)))
    assert proc.returncode == -signal.SIGKILL and done < STEPS, "the run finished before it could be killed"
    run_train(tmp_path, RESUME, nproc=2)
    assert losses_by_step(metrics(tmp_path)) == straight
    assert logged_once(metrics(tmp_path))


def test_truncated_checkpoint_falls_back_on_resume(tmp_path):
    run_train(tmp_path, ["train.steps=6", "train.save_every=3", "train.stop_at=6"], check=False)
    newest = tmp_path / "runs" / "run" / "checkpoints" / "step_0000006"
    model_file = next(newest.rglob("*model_states.pt"))
    os.truncate(model_file, model_file.stat().st_size // 2)
    proc = run_train(tmp_path, ["train.steps=8", "train.save_every=3"])
    assert "step_0000006 is corrupt" in proc.stdout + proc.stderr
    assert "resumed from" in proc.stdout and "step_0000003" in proc.stdout


def test_explicit_corrupt_checkpoint_fails_before_work(tmp_path):
    run_train(tmp_path, ["train.steps=2"])
    ckpt = tmp_path / "runs" / "run" / "checkpoints" / "step_0000002"
    os.truncate(next(ckpt.rglob("*model_states.pt")), 5)
    proc = run_train(tmp_path, [f"train.resume={ckpt}"], name="other", check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "truncated" in lines[0] and "train.resume=auto" in lines[0]
    assert not (tmp_path / "runs" / "other" / "metrics.jsonl").exists()
    assert ckpt.exists()  # nothing already saved is touched
