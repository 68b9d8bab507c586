"""Fault injection: chosen ranks send corrupt gradients, to test and demonstrate robust aggregation.

`FaultInjector` wraps the run's aggregator. Every step, before the inner aggregate, each rank in
`faults.byzantine_ranks` replaces its local gradient g by the attack's vector (METHODS.md 5):

    sign_flip        sign_flip_factor * g                (x -10)
    gaussian         N(0, scale^2) per coordinate
    uniform_random   U(-scale, scale) per coordinate
    alie             mu - alie_z * sigma                 (mu, sigma: per-coordinate mean and std of the
                                                          honest gradients; "a little is enough", z = 0.21)
    fall_of_empires  -foe_epsilon * mu                   (-0.1 of the honest mean)
    zero             0
    nan              NaN everywhere

alie and fall_of_empires are omniscient: every rank all-gathers its gradient first (simulation only).
Random attacks draw from a generator seeded by (train.seed, step, rank), so a resumed run is exact.
The engine's all-reduce is always off under injection, even for `mean`, so the corrupt gradients
really enter the aggregate; that needs train.zero_stage=0.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from trainer.config import FaultsConfig
from trainer.seeding import mix_seed
from trainer.strategy import Aggregator, BuildContext

NEEDS_HONEST = ("alie", "fall_of_empires")


class FaultInjector(Aggregator):
    uses_engine_allreduce = False

    def __init__(self, inner: Aggregator, cfg: FaultsConfig, ctx: BuildContext):
        ranks = sorted(set(cfg.byzantine_ranks))
        if any(r < 0 or r >= ctx.world_size for r in ranks):
            raise ValueError(
                f"faults.byzantine_ranks={list(cfg.byzantine_ranks)} names a rank outside 0..{ctx.world_size - 1}"
            )
        if len(ranks) >= ctx.world_size:
            raise ValueError(
                f"faults.byzantine_ranks={list(cfg.byzantine_ranks)} leaves no honest worker among {ctx.world_size}"
            )
        self.inner, self.cfg, self.ctx = inner, cfg, ctx
        self.byzantine = ranks
        self.is_byzantine = ctx.rank in ranks

    def aggregate(self, grads: list[torch.Tensor], step: int) -> dict[str, float]:
        honest = self.honest_stats(grads) if self.cfg.attack in NEEDS_HONEST else None
        if self.is_byzantine:
            self.corrupt(grads, step, honest)
        return self.inner.aggregate(grads, step)

    def honest_stats(self, grads: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-coordinate mean and (unbiased) std of the honest ranks' flattened gradients."""
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        p = self.ctx.world_size
        everyone = flat[None]
        if p > 1:
            everyone = torch.empty(p * flat.numel(), dtype=flat.dtype, device=flat.device)
            dist.all_gather_single(everyone, flat, group=self.ctx.group)
            everyone = everyone.view(p, -1)
        honest = everyone[[r for r in range(p) if r not in self.byzantine]]  # (honest, n)
        std = honest.std(dim=0) if len(honest) > 1 else torch.zeros_like(flat)
        return honest.mean(dim=0), std

    def corrupt(self, grads: list[torch.Tensor], step: int, honest) -> None:
        attack, cfg = self.cfg.attack, self.cfg
        gen = torch.Generator().manual_seed(
            mix_seed(mix_seed(self.ctx.seed, step), self.ctx.rank, multiplier=1009, bits=62)
        )
        if attack in NEEDS_HONEST:
            mu, sigma = honest
            vec = mu - cfg.alie_z * sigma if attack == "alie" else -cfg.foe_epsilon * mu
        offset = 0
        for g in grads:
            n = g.numel()
            if attack == "sign_flip":
                g.mul_(cfg.sign_flip_factor)
            elif attack == "gaussian":
                g.copy_(torch.randn(g.shape, generator=gen) * cfg.scale)
            elif attack == "uniform_random":
                g.copy_((torch.rand(g.shape, generator=gen) * 2 - 1) * cfg.scale)
            elif attack == "zero":
                g.zero_()
            elif attack == "nan":
                g.fill_(float("nan"))
            else:
                g.copy_(vec[offset : offset + n].view_as(g))
            offset += n

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)
