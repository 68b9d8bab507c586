"""trainer/memory.py: the fake-tensor estimate equals the same count over real CPU tensors, to the byte."""

import json
import subprocess
import sys

import pytest

from models import shape_for
from optim import lowbit, projectors
from tests.helpers import ROOT, train_env
from tools import memory

# Accumulation 2, so the count covers a gradient that lives across micro-batches.
SMALL = ["data.seq_len=32", "train.micro_batch_size=2", "train.global_batch_size=4", "model.vocab_size=1024"]
LOW = ["train.precision=pure_bf16", "optim.state_dtype=int8", "optim.step_in_backward=true"]
CONFIGS = [
    ["param=full", "optim=adamw"],
    ["train.precision=amp_bf16"],
    ["param=sltrain"],
    ["param=sst"],
    ["param=full", "optim=dct_adamw"],
    [*LOW, "train.global_batch_size=2"],  # accumulation 1: no whole gradient ever exists
    ["param=sltrain", *LOW, "train.activation_checkpointing=selective"],
    ["param=sst", "optim.step_in_backward=true", "optim.state_dtype=bf16", "train.activation_checkpointing=full"],
    ["optim=dct_adamw", *LOW, "train.activation_checkpointing=full"],
]


@pytest.fixture(autouse=True)
def _fresh_caches(monkeypatch):
    # A DCT basis or 8-bit map cached by an earlier test in this process would not be counted by a real run (it
    # exists before the tracker starts); a fresh process, like the trainer's, creates and counts it in step 1.
    monkeypatch.setattr(projectors, "_CACHE", {})
    monkeypatch.setattr(lowbit, "_MAP_CACHE", {})


@pytest.mark.parametrize("size", ["debug", "20m"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "+".join(c))
def test_fake_peak_equals_real_peak(size, config):
    overrides = [*SMALL, f"model.size={size}", *config]
    fake, real = memory.estimate(overrides), memory.estimate(overrides, real=True)
    assert fake.fake and not real.fake
    assert fake.bytes == real.bytes  # every kind at the moment of the peak, and the total
    assert fake.peak_step == real.peak_step
    assert fake.bytes["total"] == sum(v for k, v in fake.bytes.items() if k != "total")
    assert fake.bytes["gradients"] > 0 and fake.bytes["optimizer_state"] > 0


def test_fake_run_caches_no_fake_basis():
    memory.estimate([*SMALL, "optim=dct_adamw"])
    assert projectors._CACHE == {}  # a later real run must not get a basis without values


def test_weights_are_four_bytes_per_fp32_parameter():
    est = memory.estimate([*SMALL, "model.size=20m", "train.device=cpu"])
    assert est.precision == "fp32"
    shape = shape_for("20m")
    rotary = 2 * 4 * 1024 * (shape.hidden // shape.num_heads // 2)  # cos and sin tables, max_seq_len 1024
    assert est.bytes["weights"] == 4 * est.num_params + rotary


def test_auto_device_estimates_the_gpu_job():
    est = memory.estimate([*SMALL])
    assert est.precision == "amp_bf16" and "GPU" in est.target and est.vocab_size == 1024
    assert memory.estimate([*SMALL[:3]]).vocab_size == memory.LLAMA_VOCAB


@pytest.mark.parametrize(
    "text, expected",
    [
        ("24GiB", 24 * 2**30),
        ("16GB", 16 * 10**9),
        ("1.5TiB", int(1.5 * 2**40)),
        ("123", 123),
        ("512 MiB", 512 * 2**20),
        ("2gb", 2 * 10**9),
        ("100B", 100),
    ],
)
def test_parse_bytes(text, expected):
    assert memory.parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "12XB", "-1GB", "1e9", "24 GiB extra"])
def test_parse_bytes_refuses(text):
    with pytest.raises(ValueError, match="--budget"):
        memory.parse_bytes(text)


@pytest.mark.parametrize("budget, verdict", [("1MiB", "DOES NOT FIT"), ("1TiB", "FITS")])
def test_budget_verdict(tmp_path, capsys, budget, verdict):
    out = tmp_path / "est.json"
    assert memory.main([*SMALL, "--budget", budget, "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith(f"{verdict}: peak ")
    record = json.loads(out.read_text())
    assert record["fits"] == (verdict == "FITS") and record["overrides"] == SMALL
    assert record["budget"] == memory.parse_bytes(budget) and record["bytes"]["total"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["train.nope=1"], "train.nope"),
        (["param=nope"], "nope"),
        (["model.size=5m"], "model.size"),
        (["train.zero_stage=1"], "train.zero_stage=0"),
        (["--budget", "lots"], "--budget"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "tools.memory", *args],
        cwd=ROOT,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert proc.stdout == ""
