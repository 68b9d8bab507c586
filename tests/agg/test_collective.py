"""Every aggregator across 4 gloo processes: the sharded collective form equals the all-gather reference,
both equal the dense oracle of tests/agg/reference.py, NaN workers are dropped, and bytes are as counted."""

import pytest
import torch

import agg  # noqa: F401  (registers the strategies)
from tests.agg import reference
from tests.helpers import run_distributed
from trainer.registry import AGG
from trainer.strategy import BuildContext

SHAPES = [(13, 7), (5,), (33,), (4, 2, 3)]  # 153 coordinates: with bucket_numel=50, 4 buckets, padded shards
P = 4


def worker_grads(rank: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + rank)
    shared = torch.Generator().manual_seed(7)
    return [torch.randn(s, generator=gen) + 2 * torch.randn(s, generator=shared) for s in SHAPES]


def dense(rank_grads: list[list[torch.Tensor]]) -> torch.Tensor:
    """(n, p) float64 matrix of all workers' flattened gradients."""
    return torch.stack([torch.cat([g.reshape(-1) for g in gs]) for gs in rank_grads], dim=1).double()


CASES = [  # (registry name, config overrides, oracle on the dense (n, p) matrix of good workers)
    ("mean", {}, lambda g: g.mean(dim=1)),
    ("flag", {}, lambda g: reference.flag_svd(g)),
    ("flag", {"normalized": False, "lam": 0.2}, lambda g: reference.flag_svd(g, normalized=False, lam=0.2)),
    ("median", {}, reference.median),
    ("trimmed_mean", {"num_trim": 1}, lambda g: reference.trimmed_mean(g, 1)),
    ("multi_krum", {"num_byzantine": 1}, lambda g: reference.multi_krum(g, 1)),
]


def check_all(rank, world_size):
    for nan_rank in (None, 2):
        check_case(rank, world_size, nan_rank)


def check_case(rank, world_size, nan_rank):
    all_grads = [worker_grads(r) for r in range(world_size)]
    if nan_rank is not None:
        all_grads[nan_rank][1][2] = float("nan")
    good = [r for r in range(world_size) if r != nan_rank]
    g_dense = dense(all_grads)
    ctx = BuildContext("debug", rank=rank, world_size=world_size)
    for name, overrides, oracle in CASES:
        if name == "mean" and nan_rank is not None:
            continue  # the mean propagates NaN by design
        outs = {}
        modes = ["sharded", "allgather"] if name != "mean" else [None]
        for mode in modes:
            cfg = AGG.get(name).config_cls(**overrides, bucket_numel=50, **({"mode": mode} if mode else {}))
            aggregator = AGG.build(name, cfg, ctx)
            grads = [g.clone() for g in all_grads[rank]]
            metrics = aggregator.aggregate(grads, step=0)
            outs[mode] = torch.cat([g.reshape(-1) for g in grads]).double()
            if name != "mean":
                assert metrics["agg/faulty_workers"] == (nan_rank is not None)
            if mode == "sharded":
                n = g_dense.shape[0]
                assert metrics["agg/bytes_sent"] < 2 * n * 4  # about one ring all-reduce (+ p x p statistics)
            if mode == "allgather":
                assert metrics["agg/bytes_sent"] == (world_size - 1) * g_dense.shape[0] * 4
        expected = oracle(g_dense[:, good])
        for mode, out in outs.items():
            assert torch.allclose(out, expected, rtol=1e-4, atol=1e-5), (
                name,
                overrides,
                mode,
                (out - expected).abs().max(),
            )
        if len(outs) == 2:
            assert torch.allclose(outs["sharded"], outs["allgather"], rtol=1e-5, atol=1e-6), (name, overrides)


@pytest.mark.slow
def test_sharded_equals_allgather_equals_dense_oracle():
    """One spawn of 4 processes checks every case: clean, then rank 2 sending a NaN."""
    run_distributed(check_all, P)
