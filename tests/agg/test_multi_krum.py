"""Multi-Krum from the Gram matrix: hand-computed cases, the dense oracle, NaN workers dropped."""

import pytest
import torch

from agg.multi_krum import MultiKrumAggregator, MultiKrumConfig
from tests.agg import reference
from trainer.strategy import BuildContext


def krum(p, **cfg):
    return MultiKrumAggregator(MultiKrumConfig(mode="allgather", **cfg), BuildContext("debug", world_size=p))


def test_hand_computed():
    # 1-D workers 0, 1, 3, 10 (p = 4, f = 1: one nearest neighbour each); squared distances:
    # 0: to 1 -> 1; 1: to 0 -> 1; 3: to 1 -> 4; 10: to 3 -> 49. Select p - f = 3 lowest: 0, 1, 3.
    rows = torch.tensor([[0.0], [1.0], [3.0], [10.0]], dtype=torch.float64)
    out, metrics = krum(4, num_byzantine=1).aggregate_matrix(rows)
    assert out.tolist() == pytest.approx([4 / 3])
    assert [metrics[f"agg/score_rank{i}"] for i in range(4)] == pytest.approx([1, 1, 4, 49])
    assert [metrics[f"agg/weight_rank{i}"] for i in range(4)] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0])
    out1, _ = krum(4, num_byzantine=1, num_selected=1).aggregate_matrix(rows)  # Krum itself: the best one
    assert out1.tolist() == pytest.approx([0.0])


def test_matches_dense_oracle():
    rows = torch.randn(7, 50, dtype=torch.float64)
    rows[2] *= 30
    for f, m in ((1, 0), (2, 0), (2, 3)):
        out, _ = krum(7, num_byzantine=f, num_selected=m).aggregate_matrix(rows)
        assert torch.allclose(out, reference.multi_krum(rows.T, f, m), atol=1e-10)


def test_identical_gradients_and_nan_worker():
    g = torch.randn(64, dtype=torch.float64)
    out, _ = krum(4).aggregate_matrix(g.repeat(4, 1))
    assert torch.allclose(out, g)
    rows = g.repeat(4, 1)
    rows[0, 5] = float("nan")
    out, metrics = krum(4).aggregate_matrix(rows)
    assert torch.allclose(out, g) and metrics["agg/faulty_workers"] == 1 and metrics["agg/weight_rank0"] == 0
