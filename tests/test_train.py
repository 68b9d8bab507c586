"""train.py end to end on one GPU (`gpu` marker): 20 steps in amp_bf16 per strategy, finite and decreasing loss.

Skipped without CUDA. `train.compile=true` rides along once (full rank), since it is meant for GPUs.
"""

import math

import pytest
import torch

from tests.helpers import metrics, run_train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GPU = [
    "train.device=cuda",
    "train.precision=amp_bf16",
    "model.size=20m",
    "data.seq_len=128",
    "train.steps=20",
    "train.global_batch_size=16",
    "train.micro_batch_size=8",
    "train.log_every=5",
    "train.eval_every=20",
    "train.save_every=20",
    "train.warmup_fraction=0.1",
]
CASES = {
    "full": ["param=full"],
    "sltrain": ["param=sltrain"],
    "sst": ["param=sst", "param.rank=32", "param.update_every=5", "param.rewarm_steps=2"],  # resamples at 5, 10, 15
    "dct_adamw": ["optim=dct_adamw"],
    "full_compiled": ["param=full", "train.compile=true"],
}


@pytest.mark.parametrize("case", CASES)
def test_twenty_bf16_steps_on_one_gpu(tmp_path, case):
    proc = run_train(tmp_path, [*GPU, *CASES[case]])
    losses = [r["train/loss"] for r in metrics(tmp_path) if "train/loss" in r]
    assert len(losses) == 20 and all(math.isfinite(x) for x in losses), losses
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1, losses
    lines = [line for line in proc.stdout.splitlines() if line.startswith("step ") and "tok/s" in line]
    assert len(lines) == 4 and all("peak_mem" in line for line in lines), proc.stdout
    from trainer.throughput import peak_tflops

    if peak_tflops(torch.cuda.get_device_name()):
        assert all("mfu" in line for line in lines), proc.stdout
