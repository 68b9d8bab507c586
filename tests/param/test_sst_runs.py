"""SST in real runs: the engine's per-parameter state reset on ZeRO-1/2's flat partitions, and exact resume across
a resample and a re-SVD with 2 processes (the layer itself: test_sst.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import losses_by_step, metrics, run_distributed, run_train


# --- ZeRO-1/2: the engine's per-parameter reset on flat partitions ---------------------------------------
def _zero_reset_worker(rank, world_size, stages):
    for stage in stages:  # one process pair for both stages: DeepSpeed's ZeRO imports cost ~10 s a process
        _zero_reset_check(rank, world_size, stage)


def _zero_reset_check(rank, world_size, stage):
    import os

    import deepspeed

    os.environ["LOCAL_RANK"] = str(rank)

    from trainer.engine import Ops

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 5, bias=False), nn.Linear(5, 3), nn.Linear(3, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
    config = {
        "train_batch_size": 2 * world_size,
        "train_micro_batch_size_per_gpu": 2,
        "zero_optimization": {"stage": stage},
    }
    ds, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config, dist_init_required=False)
    loss = ds(torch.randn(2, 7)).square().sum()
    ds.backward(loss)
    ds.step()
    zero_opt = ds.optimizer
    fp32 = zero_opt.single_partition_of_fp32_groups[0]
    state = optimizer.state[fp32]
    moments = {k: state[k].clone() for k in ("exp_avg", "exp_avg_sq")}
    target = model[1].weight  # 15 elements: straddles the two ranks' partitions
    Ops(ds, optimizer).reset_optimizer_state([target])
    # Oracle: mark the target with NaN and let DeepSpeed copy model weights into the fp32 partition.
    with torch.no_grad():
        saved = target.detach().clone()
        target.fill_(float("nan"))
        zero_opt._restore_from_bit16_weights()
        mine = torch.isnan(fp32)
        target.copy_(saved)
        zero_opt._restore_from_bit16_weights()
    for key, before in moments.items():
        after = state[key]
        assert bool((before[mine] != 0).all()) and bool((after[mine] == 0).all()), (rank, key)
        assert torch.equal(after[~mine], before[~mine]), (rank, key)
    counts = torch.tensor([int(mine.sum())])
    torch.distributed.all_reduce(counts)
    assert int(counts) == target.numel()


@pytest.mark.slow
def test_zero_reset_zeroes_exactly_the_parameter_slices():
    run_distributed(_zero_reset_worker, 2, (1, 2))


# --- acceptance 5: exact resume across a resample and a re-SVD, 2 processes -------------------------------
SST_RUN = [
    "param=sst",
    "param.rank=8",
    "param.update_every=2",
    "param.resvd_every=2",
    "param.rewarm_steps=2",
    "train.steps=8",
    "train.save_every=5",
    "train.keep_last=3",
    "train.eval_every=4",
]


def model_states(run_dir: Path) -> dict:
    states = torch.load(
        run_dir / "checkpoints" / "step_0000008" / "engine" / "mp_rank_00_model_states.pt",
        map_location="cpu",
        weights_only=False,
    )
    return states["module"]


@pytest.mark.slow
def test_two_process_resume_is_bitwise_exact(tmp_path):
    # Resamples after steps 2, 4, 6, 8; re-SVDs after 4 and 8; the resumed run starts from step 5.
    # ZeRO-1: also covers the fp32 master partitions and the engine's per-slice state reset.
    zero = ["train.zero_stage=1"]
    run_train(tmp_path, SST_RUN + zero, nproc=2, name="straight")
    stop = tmp_path / "runs" / "straight" / "checkpoints" / "step_0000005"
    run_train(tmp_path, SST_RUN + zero + [f"train.resume={stop}"], nproc=2, name="resumed")
    straight, resumed = losses_by_step(metrics(tmp_path, "straight")), losses_by_step(metrics(tmp_path, "resumed"))
    assert sorted(resumed) == [6, 7, 8]
    assert {s: straight[s] for s in resumed} == resumed
    a, b = model_states(tmp_path / "runs" / "straight"), model_states(tmp_path / "runs" / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.0.attn.q_proj.active_idx"], torch.arange(8))
