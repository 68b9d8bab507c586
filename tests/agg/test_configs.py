"""Every registered aggregator composes into its typed config; bad values are one-line errors."""

import pytest

import train
from agg.multi_krum import MultiKrumConfig
from tests.helpers import compose
from trainer.registry import AGG
from trainer.validate import check_workers

NAMES = AGG.names()


@pytest.mark.parametrize("name", NAMES)
def test_yaml_composes(name, tmp_path):
    cfg = train.load_config(compose([f"agg={name}", f"run.out_dir={tmp_path}"]))
    assert cfg.agg.name == name


@pytest.mark.parametrize(
    "override, message",
    [
        ("agg.mode=ring", r"agg.mode: 'ring' is not one of sharded, allgather"),
        ("agg.bucket_numel=0", r"agg.bucket_numel: must be at least 1"),
    ],
)
def test_bad_values(override, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        train.load_config(compose(["agg=flag", override, f"run.out_dir={tmp_path}"]))


@pytest.mark.parametrize("name", ["flag", "median", "trimmed_mean", "multi_krum"])
def test_robust_aggs_refuse_zero_stage_above_0(name, tmp_path):
    with pytest.raises(ValueError, match=rf"agg={name} needs train.zero_stage=0"):
        train.load_config(compose([f"agg={name}", "train.zero_stage=2", f"run.out_dir={tmp_path}"]))


@pytest.mark.parametrize(
    "overrides, enough",
    [
        (["agg=flag"], 2),
        (["agg=median"], 3),
        (["agg=trimmed_mean"], 3),  # num_trim=1: one value off each end, one kept
        (["agg=trimmed_mean", "agg.num_trim=2"], 5),
        (["agg=multi_krum"], 4),  # f=1: p - f - 2 >= 1 neighbour
        (["agg=multi_krum", "agg.num_byzantine=2"], 5),
        (["agg=multi_krum", "agg.num_selected=6"], 6),
    ],
)
def test_robust_aggs_refuse_too_few_workers(overrides, enough, tmp_path):
    """One line at start-up (train.py's check_workers), instead of a silent plain mean of what is there."""
    cfg = train.load_config(compose([*overrides, f"run.out_dir={tmp_path}"]))
    check_workers(cfg, enough)
    for world_size in range(1, enough):
        with pytest.raises(
            ValueError,
            match=rf"^agg={cfg.agg.name} needs at least {enough} workers \(.*\), this run has "
            rf"{world_size}; run {enough} or more processes .* or use agg=mean$",
        ):
            check_workers(cfg, world_size)


def test_krum_minimum_is_where_a_score_has_a_neighbour():
    """At the minimum p = f + 3 every worker's score sums exactly one neighbour distance (the reference's rule)."""
    import torch

    from agg.multi_krum import krum_coefficients

    for f in range(3):
        p = MultiKrumConfig(num_byzantine=f).min_workers()[0]
        assert p - f - 2 == 1
        gram = torch.eye(p, dtype=torch.float64) * torch.arange(1, p + 1, dtype=torch.float64)  # orthogonal workers
        _, scores = krum_coefficients(gram, torch.ones(p, dtype=torch.bool), f, 0)
        dist2 = gram.diag()[:, None] + gram.diag()[None, :]  # |g_i - g_j|^2 of orthogonal vectors
        dist2.fill_diagonal_(float("inf"))
        assert torch.equal(scores, dist2.min(dim=1).values)


def test_mean_takes_any_world():
    check_workers(train.load_config(compose(["agg=mean"])), 1)
