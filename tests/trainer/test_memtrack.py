"""trainer/memtrack.py: the tracked step files every tensor as torch's MemTracker does, with two corrections."""

import pytest
from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

from optim import lowbit, projectors
from tools import memory
from trainer import memtrack

SMALL = [
    "data.seq_len=32",
    "train.micro_batch_size=2",
    "train.global_batch_size=4",
    "model.vocab_size=1024",
    "train.device=cpu",
]


@pytest.fixture(autouse=True)
def _fresh_caches(monkeypatch):
    monkeypatch.setattr(projectors, "_CACHE", {})
    monkeypatch.setattr(lowbit, "_MAP_CACHE", {})


def tracked(overrides, tracker, steps=2):
    cfg = memory.load_config([*SMALL, *overrides])
    job = memtrack.build(cfg, 1024, memory.target_precision(cfg)[0], real=True, steps=steps)
    return job, memtrack.track_steps(job, tracker)


@pytest.mark.parametrize("config", [["param=sst"], ["optim=dct_adamw", "optim.step_in_backward=true"]])
def test_peak_tracker_counts_as_memtracker(config):
    """PeakTracker drops MemTracker's per-module peaks; the run's peak is the same. (It files DeepSpeed's all-reduce
    buffer as a temporary, where MemTracker says activation.)"""
    (_, (stock, stock_step)), (_, (ours, our_step)) = (
        tracked(config, MemTracker()),
        tracked(config, memtrack.PeakTracker()),
    )
    merged = {_MemRefType.ACT, _MemRefType.TEMP}
    assert stock_step == our_step and stock["Total"] == ours["Total"] > 0
    assert {k: v for k, v in stock.items() if k not in merged} == {k: v for k, v in ours.items() if k not in merged}
    assert sum(stock[k] for k in merged) == sum(ours[k] for k in merged)


def test_step_in_backward_counts_its_update_as_optimizer_state():
    """Updates made in gradient hooks count as optimizer work, new moments included, not as backward temporaries."""
    job, (snap, _) = tracked(["train.global_batch_size=2", "optim.step_in_backward=true"], memtrack.PeakTracker(), 1)
    moments = sum(t.numel() * t.element_size() for s in job.optimizer.state.values() for t in s.values())
    assert snap[_MemRefType.OPT] >= moments > 0


def test_allreduce_buffer_is_a_temporary_of_one_bucket():
    """DeepSpeed ZeRO-0 flattens the gradients for its all-reduce at the boundary, a bucket at a time."""
    job, _ = tracked([], memtrack.PeakTracker(), 1)
    for p in job.model.parameters():
        p.grad = p.detach().clone()
    grads = [p.grad for p in job.model.parameters()]
    tracker = memtrack.PeakTracker()
    tracker.track_external(job.model)  # parameters and their gradients
    with tracker:
        job.marks.tracker = tracker
        with job.marks.temporaries():
            memtrack.allreduce_buckets(job.model, bucket_numel=100_000)
    peak = tracker.get_tracker_snapshot("peak")
    (snap,) = peak.values()
    largest_bucket = 4 * max(g.numel() for g in grads) + 4 * 100_000  # a bucket closes once it passes bucket_numel
    assert 0 < snap[_MemRefType.TEMP] <= largest_bucket and snap[_MemRefType.ACT] == 0
