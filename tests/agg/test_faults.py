"""Fault injection: each attack's vector, the engine all-reduce forced off, bad input, and end to end."""

import math

import pytest
import torch

from agg.faults import FaultInjector
from agg.mean import MeanAggregator, MeanConfig
from tests.helpers import metrics, run_distributed, run_train
from trainer.config import FaultsConfig
from trainer.strategy import Aggregator, BuildContext

P = 4
BYZANTINE = 1


class Recorder(Aggregator):
    """Keeps what it was handed."""

    def aggregate(self, grads, step):
        self.seen = [g.clone() for g in grads]
        return {}


def local_grads(rank):
    gen = torch.Generator().manual_seed(rank)
    return [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]


def expected_vector(attack, honest_flat, own_flat):
    """The attack's vector by its definition (METHODS.md 5), from the flattened gradients."""
    mu, sigma = honest_flat.mean(dim=0), honest_flat.std(dim=0)
    return {
        "sign_flip": -10 * own_flat,
        "alie": mu - 0.21 * sigma,
        "fall_of_empires": -0.1 * mu,
        "zero": torch.zeros_like(own_flat),
    }[attack]


def check_attacks(rank, world_size):
    flat = {r: torch.cat([g.reshape(-1) for g in local_grads(r)]) for r in range(world_size)}
    honest = torch.stack([flat[r] for r in range(world_size) if r != BYZANTINE])
    ctx = BuildContext("debug", rank=rank, world_size=world_size, seed=3)
    for attack in ["sign_flip", "gaussian", "uniform_random", "alie", "fall_of_empires", "zero", "nan"]:
        rec = Recorder()
        injector = FaultInjector(rec, FaultsConfig(byzantine_ranks=[BYZANTINE], attack=attack, scale=0.5), ctx)
        injector.aggregate(local_grads(rank), step=7)
        seen = torch.cat([g.reshape(-1) for g in rec.seen])
        if rank != BYZANTINE:
            assert torch.equal(seen, flat[rank]), attack  # honest ranks send what they computed
        elif attack == "nan":
            assert torch.isnan(seen).all()
        elif attack == "gaussian":
            assert abs(float(seen.std()) - 0.5) < 0.25 and not torch.equal(seen, flat[rank])
        elif attack == "uniform_random":
            assert float(seen.abs().max()) <= 0.5 and float(seen.abs().max()) > 0.2
        else:
            assert torch.allclose(seen, expected_vector(attack, honest, flat[rank]), atol=1e-6), attack
        if attack in ("gaussian", "uniform_random") and rank == BYZANTINE:  # a resumed run draws the same noise
            again = Recorder()
            FaultInjector(again, FaultsConfig(byzantine_ranks=[BYZANTINE], attack=attack, scale=0.5), ctx).aggregate(
                local_grads(rank), step=7
            )
            assert torch.equal(torch.cat([g.reshape(-1) for g in again.seen]), seen)


@pytest.mark.slow
def test_each_attack_sends_its_vector():
    run_distributed(check_attacks, P)


def test_engine_allreduce_is_forced_off_even_for_mean():
    ctx = BuildContext("debug", world_size=2)
    mean = MeanAggregator(MeanConfig(), ctx)
    assert mean.uses_engine_allreduce
    assert FaultInjector(mean, FaultsConfig(byzantine_ranks=[0]), ctx).uses_engine_allreduce is False


@pytest.mark.parametrize(
    "ranks, message",
    [
        ([4], r"faults.byzantine_ranks=\[4\] names a rank outside 0..3"),
        ([0, 1, 2, 3], r"leaves no honest worker among 4"),
    ],
)
def test_bad_ranks(ranks, message):
    with pytest.raises(ValueError, match=message):
        FaultInjector(Recorder(), FaultsConfig(byzantine_ranks=ranks), BuildContext("debug", world_size=4))


def test_unknown_attack():
    with pytest.raises(ValueError, match=r"faults.attack: 'bitflip' is not one of sign_flip"):
        FaultsConfig(attack="bitflip")


def final_val_loss(tmp_path, name):
    return [r["val/loss"] for r in metrics(tmp_path, name) if "val/loss" in r][-1]


@pytest.mark.slow
def test_nan_worker_breaks_mean_but_not_flag(tmp_path):
    faults = ["faults.byzantine_ranks=[1]", "faults.attack=nan", "train.steps=4", "train.eval_every=4"]
    run_train(tmp_path, ["agg=mean", *faults], nproc=2, name="mean")
    run_train(tmp_path, ["agg=flag", *faults], nproc=2, name="flag")
    assert math.isnan(final_val_loss(tmp_path, "mean"))
    assert math.isfinite(final_val_loss(tmp_path, "flag"))
    logged = [r for r in metrics(tmp_path, "flag") if "agg/weight_rank1" in r]
    assert logged and all(r["agg/faulty_workers"] == 1 and r["agg/weight_rank1"] == 0 for r in logged)
