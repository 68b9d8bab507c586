"""Flag: the Gram-only IRLS equals an explicit SVD-based IRLS; the robust defaults and the m rule; fault
handling; exact resume with agg=flag."""

import pytest
import torch

from agg.flag import FlagAggregator, FlagConfig, flag_dimension
from tests.agg.reference import flag_svd
from tests.helpers import compose, losses_by_step, metrics, run_train
from trainer.strategy import BuildContext


def workers(n=400, p=7, seed=0, byzantine=(2,)):
    """(n, p) float64: correlated honest gradients, the listed columns sign-flipped x -10."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(n, p, generator=gen, dtype=torch.float64) + 2 * torch.randn(
        n, 1, generator=gen, dtype=torch.float64
    )
    for b in byzantine:
        g[:, b] *= -10
    return g


def flag(p, **cfg):
    return FlagAggregator(FlagConfig(mode="allgather", **cfg), BuildContext("debug", world_size=p))


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("lam", [0.0, 0.3])
@pytest.mark.parametrize("m", [0, 1, 3, 7])
def test_gram_flag_equals_svd_irls(m, lam, normalized):
    g = workers(seed=m)
    ref = flag_svd(g, m=m, lam=lam, normalized=normalized)
    out, _ = flag(7, m=m, lam=lam, normalized=normalized).aggregate_matrix(g.T.contiguous())
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("iterations", [0, 1, 2])
def test_iteration_budget_matches_reference(iterations, normalized):
    g = workers(p=5, seed=3)
    ref = flag_svd(g, iterations=iterations, normalized=normalized)
    out, metrics = flag(5, iterations=iterations, normalized=normalized).aggregate_matrix(g.T.contiguous())
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-8)
    assert metrics["agg/flag_iterations"] <= iterations


def test_identical_gradients_return_that_gradient():
    g = torch.randn(1000, dtype=torch.float64)
    out, metrics = flag(4, normalized=False).aggregate_matrix(g.repeat(4, 1))  # the raw form keeps the magnitude
    assert torch.allclose(out, g, atol=1e-10)
    assert all(metrics[f"agg/weight_rank{i}"] == pytest.approx(1.0) for i in range(4))
    unit, _ = flag(4, normalized=True, m=3).aggregate_matrix(g.repeat(4, 1))  # normalized keeps only the direction
    assert torch.allclose(unit, g / g.norm() * 4 / 3, atol=1e-10)


def test_default_config_is_the_normalized_form_with_the_m_rule():
    cfg = FlagConfig()
    assert cfg.normalized is True and cfg.m == 0
    composed = compose(["agg=flag"]).agg  # what Hydra composes (the dataclass is the only default)
    assert composed.normalized is True and composed.m == 0


# p -> the spec's ceil((p + 1) / 2), written out by hand
SPEC_M = {1: 1, 2: 2, 3: 2, 4: 3, 5: 3, 8: 5, 15: 8}


@pytest.mark.parametrize("p", sorted(SPEC_M))
def test_m_rule(p):
    assert flag_dimension(p, 0, normalized=True) == 1
    assert flag_dimension(p, 0, normalized=False) == SPEC_M[p]
    assert flag_dimension(p, 2, normalized=True) == min(p, 2) and flag_dimension(p, 99, normalized=False) == p
    g = torch.randn(300, dtype=torch.float64, generator=torch.Generator().manual_seed(p))
    out, _ = flag(p).aggregate_matrix(g.repeat(p, 1))  # default: (1/m) sum of p unit vectors = (p / m) x
    assert torch.allclose(out, g / g.norm() * p, atol=1e-10)
    if p > 1:
        h = workers(p=p, seed=p, byzantine=())
        raw, _ = flag(p, normalized=False).aggregate_matrix(h.T.contiguous())
        assert torch.allclose(raw, flag_svd(h, m=SPEC_M[p], normalized=False), rtol=1e-5, atol=1e-8)


def attacked(kind: str, p: int = 8, bad=(1, 2)) -> torch.Tensor:
    """(n, p): correlated honest workers, the `bad` columns replaced as benchmarks/flag_robustness.py's attacks."""
    g = workers(n=2000, p=p, byzantine=())
    gen = torch.Generator().manual_seed(5)
    honest = g[:, [i for i in range(p) if i not in bad]]
    for b in bad:
        g[:, b] = {
            "sign_flip": -10 * g[:, b],
            "gaussian": 50 * torch.randn(2000, generator=gen, dtype=torch.float64),
            "zero": torch.zeros(2000, dtype=torch.float64),
            "alie": honest.mean(dim=1) - 0.21 * honest.std(dim=1),
            "fall_of_empires": -0.1 * honest.mean(dim=1),
        }[kind]
    return g


@pytest.mark.parametrize("kind", ["sign_flip", "gaussian", "zero", "alie", "fall_of_empires"])
def test_defaults_keep_the_honest_direction_with_two_byzantine_of_eight(kind):
    """The default aggregate points along the 6 honest workers' mean; the spec's raw form (m = 5) does not
    against sign_flip (carries -10 g) and gaussian (takes the noise in)."""
    g = attacked(kind)
    honest = g[:, [0, 3, 4, 5, 6, 7]].mean(dim=1)
    cos = lambda out: float(torch.nn.functional.cosine_similarity(out, honest, dim=0))  # noqa: E731
    default, _ = flag(8).aggregate_matrix(g.T.contiguous())
    assert cos(default) > 0.99
    if kind in ("sign_flip", "gaussian"):
        raw, _ = flag(8, normalized=False).aggregate_matrix(g.T.contiguous())
        assert cos(raw) < 0.5


@pytest.mark.parametrize("normalized", [False, True])
def test_outlier_off_the_honest_span_is_ignored_by_a_one_dimensional_flag(normalized):
    """A random vector (as the gaussian attack sends) lies off the honest cluster: with m = 1 its weight
    is ~0. (With the spec's m = ceil((p+1)/2) the spare dimensions may take it in: see docs/flag.md.)"""
    g = workers(n=2000, p=5, byzantine=())
    g[:, 4] = 50 * torch.randn(2000, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    out, metrics = flag(5, m=1, normalized=normalized).aggregate_matrix(g.T.contiguous())
    assert metrics["agg/weight_rank4"] < 0.05 and min(metrics[f"agg/weight_rank{i}"] for i in range(4)) > 0.5
    honest = g[:, :4].mean(dim=1)
    assert torch.nn.functional.cosine_similarity(out, honest, dim=0) > 0.99


def test_sign_flip_is_survived_by_the_normalized_aggregate_only():
    """p = 4, 1 worker sends -10 x its gradient. A flag cannot see a sign, so the attacker's line is kept:
    the raw aggregate (1/p) Y Y^T sum g_i then points against the honest mean, the normalized one counts the
    flipped unit vector as one vote against three (docs/flag.md)."""
    g = workers(n=2000, p=4, byzantine=(1,))
    honest = g[:, [0, 2, 3]].mean(dim=1)
    cos = lambda out: float(torch.nn.functional.cosine_similarity(out, honest, dim=0))  # noqa: E731
    raw, _ = flag(4, m=1, normalized=False).aggregate_matrix(g.T.contiguous())
    normalized, metrics = flag(4, m=1, normalized=True).aggregate_matrix(g.T.contiguous())
    assert metrics["agg/weight_rank1"] > 0.5  # the attacker is inside the flag either way
    assert cos(raw) < -0.9 and cos(normalized) > 0.99


def test_mean_cosine_is_the_good_workers_pairwise_cosine():
    g = workers(p=5, byzantine=())
    bad = g.T.contiguous()
    bad[2, 5] = float("nan")
    _, metrics = flag(5).aggregate_matrix(bad)
    x = torch.nn.functional.normalize(g[:, [0, 1, 3, 4]], dim=0)
    cos = x.T @ x
    assert metrics["agg/mean_cosine"] == pytest.approx(float((cos.sum() - 4) / 12), rel=1e-9)
    _, alone = flag(5).aggregate_matrix(torch.full_like(bad, float("nan")))
    assert "agg/mean_cosine" not in alone


def test_nan_worker_is_dropped_not_propagated():
    g = workers(p=5, byzantine=())
    bad = g.T.contiguous()
    bad[1, 17] = float("nan")
    bad[3, 0] = float("inf")
    out, metrics = flag(5).aggregate_matrix(bad)
    assert torch.isfinite(out).all() and metrics["agg/faulty_workers"] == 2
    assert metrics["agg/weight_rank1"] == 0 and metrics["agg/coef_rank3"] == 0
    ref = flag_svd(g[:, [0, 2, 4]])
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-8)


def test_zero_gradient_worker_contributes_nothing():
    g = workers(p=4, byzantine=())
    g[:, 1] = 0
    out, metrics = flag(4).aggregate_matrix(g.T.contiguous())
    assert torch.isfinite(out).all() and metrics["agg/coef_rank1"] == 0


RESUME = ["agg=flag", "train.steps=8", "train.save_every=4", "train.keep_last=3", "train.eval_every=8"]


@pytest.mark.slow
def test_exact_resume_with_flag(tmp_path):
    straight = tmp_path / "straight"
    run_train(straight, RESUME, nproc=2)
    records = metrics(straight)
    assert any("agg/weight_rank1" in r for r in records)
    first = run_train(tmp_path, [*RESUME, "train.stop_at=4"], nproc=2, check=False)  # a preemption at step 4
    assert first.returncode != 0 and max(losses_by_step(metrics(tmp_path))) == 4, first.stderr[-3000:]
    assert (tmp_path / "runs" / "run" / "checkpoints" / "step_0000004").is_dir()
    second = run_train(tmp_path, RESUME, nproc=2)
    assert "resumed from" in second.stdout
    assert losses_by_step(metrics(tmp_path)) == losses_by_step(records)  # float equality: bitwise
