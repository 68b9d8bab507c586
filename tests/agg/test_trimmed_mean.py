"""Coordinate-wise trimmed mean: hand-computed cases, the dense oracle, NaN workers dropped, bad config."""

import pytest
import torch

from agg.trimmed_mean import TrimmedMeanAggregator, TrimmedMeanConfig
from tests.agg import reference
from trainer.strategy import BuildContext


def trimmed(p, num_trim=1):
    return TrimmedMeanAggregator(
        TrimmedMeanConfig(mode="allgather", num_trim=num_trim), BuildContext("debug", world_size=p)
    )


def test_hand_computed():
    rows = torch.tensor([[1.0, 10.0], [2.0, -50.0], [4.0, 20.0], [100.0, 30.0], [3.0, 40.0]])  # 5 workers
    out, metrics = trimmed(5).aggregate_matrix(rows)
    # coordinate 0: sorted 1, 2, 3, 4, 100 -> mean(2, 3, 4) = 3; coordinate 1: -50, 10, 20, 30, 40 -> mean(10, 20,
    # 30) = 20
    assert out.tolist() == [3.0, 20.0]
    # survivors: coordinate 0 workers 1, 2, 4; coordinate 1 workers 0, 2, 3
    assert [metrics[f"agg/weight_rank{i}"] for i in range(5)] == pytest.approx([0.5, 0.5, 1.0, 0.5, 0.5])


def test_two_trimmed_each_side():
    rows = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0], [60.0]])
    out, _ = trimmed(6, num_trim=2).aggregate_matrix(rows)
    assert out.tolist() == [3.5]


def test_matches_dense_oracle():
    rows = torch.randn(7, 300, dtype=torch.float64)
    out, _ = trimmed(7, num_trim=2).aggregate_matrix(rows)
    assert torch.allclose(out, reference.trimmed_mean(rows.T, 2))


def test_identical_gradients():
    g = torch.randn(100)
    out, _ = trimmed(4).aggregate_matrix(g.repeat(4, 1))
    assert torch.allclose(out, g)


def test_nan_worker_is_dropped_and_trim_shrinks():
    rows = torch.tensor([[1.0], [float("inf")], [5.0]])
    out, metrics = trimmed(3).aggregate_matrix(rows)  # 2 good workers: nothing left to trim
    assert out.tolist() == [3.0] and metrics["agg/faulty_workers"] == 1


def test_trimming_everything_is_refused():
    with pytest.raises(ValueError, match=r"agg.num_trim=2 trims every value of 4 workers; use at most 1"):
        trimmed(4, num_trim=2)
