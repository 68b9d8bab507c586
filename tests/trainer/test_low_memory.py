"""The low-memory modes end to end through train.py and DeepSpeed: pure bf16, 8-bit states, the step inside
backward. Refused combinations stop with one line and exit code 2 before any work."""

import subprocess

import pytest

import train
from tests.helpers import ROOT, compose, losses_by_step, metrics, run_train, train_command, train_env

LOW = ["train.precision=pure_bf16", "optim.state_dtype=int8", "optim.step_in_backward=true"]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["optim.step_in_backward=true", "agg=median"],
            r"agg=median .* needs every worker's whole gradient; use agg=mean",
        ),
        (["optim.step_in_backward=true", "agg=flag"], r"agg=flag .*use agg=mean or optim.step_in_backward=false"),
        (["optim.step_in_backward=true", "faults.byzantine_ranks=[1]"], r"fault injection"),
        (["optim.step_in_backward=true", "train.zero_stage=2"], r"step_in_backward=true needs train.zero_stage=0"),
        (["optim.step_in_backward=true", "train.grad_clip=1.0"], r"cannot clip; set train.grad_clip=0"),
        (
            ["optim=dct_adamw", "optim.step_in_backward=true", "optim.zero=1"],
            r"set optim.zero=0 or optim.step_in_backward=false",
        ),
        (
            ["optim=galore_torch", "optim.state_dtype=int8"],
            r"optim=galore_torch keeps fp32 states .* optim=galore_adamw",
        ),
        (["optim=galore_torch", "optim.step_in_backward=true"], r"use optim=galore_adamw"),
        (["optim.state_dtype=int4"], r"optim.state_dtype='int4' is not one of fp32, bf16, int8"),
        (["optim.state_dtype=int8", "train.zero_stage=1"], r"optim.state_dtype=int8 needs train.zero_stage=0"),
        (["train.precision=pure_bf16", "train.zero_stage=2"], r"pure_bf16 needs train.zero_stage=0"),
        (["train.precision=bf16"], r"train.precision=bf16 is ambiguous; use amp_bf16 .* or pure_bf16"),
        (
            ["train.activation_checkpointing=some"],
            r"train.activation_checkpointing: 'some' is not none, full or selective",
        ),
    ],
)
def test_refused_combinations_name_the_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        train.load_config(compose(overrides))


def test_refusal_is_one_line_exit_2_before_any_work(tmp_path):
    args = [f"run.out_dir={tmp_path}", "run.name=x", "optim.step_in_backward=true", "agg=median"]
    proc = subprocess.run(train_command(args), cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "agg=mean" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()  # no run directory made


@pytest.mark.slow
def test_step_in_backward_through_deepspeed_gives_the_same_losses(tmp_path):
    """World size 1, 4 micro-batches a step: the hooks step once, at the boundary, exactly as DeepSpeed's step does."""
    common = ["train.steps=8", "train.eval_every=8", "param=sltrain"]
    run_train(tmp_path, common, name="plain")
    run_train(tmp_path, [*common, "optim.step_in_backward=true"], name="sib")
    plain, sib = metrics(tmp_path, "plain"), metrics(tmp_path, "sib")
    assert losses_by_step(sib) == losses_by_step(plain)  # bitwise
    assert [r["val/loss"] for r in sib if "val/loss" in r] == [r["val/loss"] for r in plain if "val/loss" in r]
    assert all(r["train/grad_norm"] > 0 for r in sib if "train/grad_norm" in r)


@pytest.mark.slow
def test_resume_is_bitwise_with_step_in_backward_and_int8_states(tmp_path):
    common = [*LOW, "train.steps=12", "train.save_every=4", "train.eval_every=12"]
    run_train(tmp_path, common, name="straight")
    first = run_train(tmp_path, [*common, "train.stop_at=6"], name="resumed", check=False)
    assert first.returncode == 75, first.stderr[-2000:]
    second = run_train(tmp_path, common, name="resumed")
    assert "resumed from" in second.stdout
    assert losses_by_step(metrics(tmp_path, "resumed")) == losses_by_step(metrics(tmp_path, "straight"))


@pytest.mark.slow
def test_two_processes_train_with_step_in_backward(tmp_path):
    run_train(
        tmp_path, [*LOW, "train.steps=16", "train.eval_every=16", "train.global_batch_size=4"], nproc=2
    )  # no accumulation
    records = metrics(tmp_path)
    vals = [r["val/loss"] for r in records if "val/loss" in r]
    assert vals[-1] < vals[0] - 0.3, vals
    mem = [r for r in records if "mem/grad_bytes" in r][-1]
    assert 0 < mem["mem/grad_bytes"] < mem["mem/param_bytes"] / 2  # one parameter's gradient at a time
