"""Coordinate-wise median: hand-computed cases, the dense oracle, NaN workers dropped."""

import pytest
import torch

from agg.median import MedianAggregator, MedianConfig
from tests.agg import reference
from trainer.strategy import BuildContext


def median(p):
    return MedianAggregator(MedianConfig(mode="allgather"), BuildContext("debug", world_size=p))


def test_hand_computed_odd_and_even():
    rows = torch.tensor([[1.0, 9.0, -2.0], [3.0, 0.0, 5.0], [2.0, 4.0, 100.0]])  # 3 workers x 3 coordinates
    out, metrics = median(3).aggregate_matrix(rows)
    assert out.tolist() == [2.0, 4.0, 5.0]
    # worker 2 is the middle value in coordinates 0 and 1, worker 1 in coordinate 2
    assert [metrics[f"agg/weight_rank{i}"] for i in range(3)] == pytest.approx([0, 1 / 3, 2 / 3])
    rows4 = torch.tensor([[1.0, -1.0], [3.0, 0.0], [2.0, 4.0], [10.0, 6.0]])
    out4, _ = median(4).aggregate_matrix(rows4)
    assert out4.tolist() == [2.5, 2.0]  # mean of the two middle values


def test_matches_dense_oracle():
    rows = torch.randn(5, 300, dtype=torch.float64)
    out, _ = median(5).aggregate_matrix(rows)
    assert torch.equal(out, reference.median(rows.T))


def test_identical_gradients_and_one_outlier():
    g = torch.randn(200)
    out, _ = median(4).aggregate_matrix(g.repeat(4, 1))
    assert torch.equal(out, g)
    rows = g.repeat(4, 1)
    rows[3] = -1e6
    out, _ = median(4).aggregate_matrix(rows)
    assert torch.equal(out, g)


def test_nan_worker_is_dropped():
    rows = torch.tensor([[1.0, 2.0], [3.0, float("nan")], [5.0, 6.0], [7.0, 8.0]])
    out, metrics = median(4).aggregate_matrix(rows)
    assert out.tolist() == [5.0, 6.0] and metrics["agg/faulty_workers"] == 1 and metrics["agg/weight_rank1"] == 0
