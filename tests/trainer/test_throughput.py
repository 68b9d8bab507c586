"""MFU: the FLOPs formula against a hand count, the peak table, and what the progress line shows."""

import pytest
import torch

from models import Llama, shape_for
from trainer.throughput import ThroughputMeter, flops_per_token, peak_tflops


def test_flops_per_token_of_the_debug_model_by_hand():
    # debug: hidden 64, intermediate 176, 2 layers, 4 heads of 16; vocab 512, context 32.
    per_layer = 4 * 64 * 64 + 3 * 64 * 176 + 2 * 64  # 16384 + 33792 + 128 = 50304
    n = 2 * per_layer + 64 + 512 * 64  # + final norm + lm_head = 133440
    assert n == 133440
    # attention: 12 L H Q T = 12 * 2 * 4 * 16 * 32 = 49152
    assert flops_per_token(shape_for("debug"), 512, 32) == 6 * 133440 + 49152 == 849792


def test_n_is_the_model_parameters_without_the_input_embedding():
    model = Llama(shape_for("20m"), vocab_size=1000, max_seq_len=8)
    n = sum(p.numel() for p in model.parameters()) - model.embed.weight.numel()
    shape = shape_for("20m")
    attention = 12 * shape.num_layers * shape.hidden * 128  # H x Q = hidden
    assert flops_per_token(shape, 1000, 128) == 6 * n + attention


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40S", 362.0),
        ("Some GPU", None),
        (None, None),
    ],
)
def test_peak_table_by_gpu_name(name, peak):
    assert peak_tflops(name) == peak


def test_mfu_absent_on_cpu_unless_a_peak_is_set():
    model = Llama(shape_for("debug"), vocab_size=512, max_seq_len=32)
    metrics = {"train/tokens_per_s": 1000.0}
    plain = ThroughputMeter(model, 32, 2, torch.device("cpu"))(metrics)
    assert "train/mfu" not in plain and plain["mem/peak_bytes"] > 0
    meter = ThroughputMeter(model, 32, 2, torch.device("cpu"), peak_tflops_override=0.5)
    assert meter(metrics)["train/mfu"] == pytest.approx(1000.0 * 849792 / (2 * 0.5e12))


@pytest.mark.slow
def test_every_logged_step_of_a_run_has_mfu_and_peak_memory(tmp_path):
    from tests.helpers import metrics, run_train

    proc = run_train(tmp_path, ["train.steps=4", "train.log_every=2", "train.peak_tflops=0.001"])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("step ") and "tok/s" in line]
    assert len(lines) == 2 and all("mfu " in line and "peak_mem " in line for line in lines), proc.stdout
    steps = [r for r in metrics(tmp_path) if "train/loss" in r]
    assert len(steps) == 4 and all(r["train/mfu"] > 0 and r["mem/peak_bytes"] > 0 for r in steps)
