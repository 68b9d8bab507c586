"""`optim=dct_adamw` and `optim=galore_adamw`: optim/lowrank_adam.py with the DCT or the SVD projector.

The seven block projections of every layer (models.projection_modules) get the low-rank update;
embeddings, norms and lm_head get plain AdamW in the same optimizer (shared/METHODS.md section 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models import PROJECTION_RANK, projection_modules
from optim.adamw import low_memory_kwargs
from optim.base import LowMemoryConfig
from optim.lowrank_adam import LowRankAdamW
from optim.projectors import BASES
from trainer.registry import OPTIM
from trainer.strategy import BuildContext, NeedsZeroStage0


@dataclass
class LowRankAdamConfig(LowMemoryConfig):
    name: str = "dct_adamw"
    lr: float = 0.003
    """Peak learning rate of every parameter (the schedule multiplies it)."""
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    """Decoupled, on the full W (METHODS.md 2); the recipe uses 0."""
    rank: int = 0
    """r of each projected matrix (capped at min(m, n)); 0: models.PROJECTION_RANK[model.size] (METHODS.md table)."""
    projector: str = "dct"
    """dct (METHODS.md 2: top-r columns of a fixed orthonormal basis) | svd (METHODS.md 1: GaLore)."""
    basis: str = "dct"
    """dct projector's basis: dct (orthonormal DCT-II) | random_qr (the ablation)."""
    update_gap: int = 50
    """T: re-select the subspace every T steps (the DCT public code: 1; GaLore: 200). 50 from the sweep in
    docs/dct.md: within 0.3% of T=1's loss on the 20m quality run, without T=1's per-step selection cost."""
    scale: float = 1.0
    """alpha on the back-projected update (DCT paper: 1.0; GaLore recipe: 0.25)."""
    score: str = "l1"
    """Column score for the dct selection: l1 (METHODS.md 2 default) | l2."""
    rotate_moments: bool = True
    """On a refresh, moments follow their basis vectors (dct: index matching; svd: times P_prev^T P_new)."""
    error_feedback: str = "off"
    """off | fp32 | int8: carry E = G + E - backproject(R) into the next step (int8: per-row absmax)."""
    fast_dct: str = "auto"
    """auto | on | off: the refresh's full DCT through torch.fft (auto: CPU from size 256, GPU past 2048)."""
    zero: int = 0
    """0: every rank holds all state | 1: shard state by whole matrices across data-parallel ranks
    (needs train.zero_stage=0; ZeRO-1-like memory for a shape-aware optimizer)."""

    def __post_init__(self):
        super().__post_init__()

        def bad(key: str, message: str):
            raise ValueError(f"optim.{key}: {message}")

        choices = {
            "projector": ("dct", "svd"),
            "score": ("l1", "l2"),
            "error_feedback": ("off", "fp32", "int8"),
            "fast_dct": ("auto", "on", "off"),
            "basis": tuple(BASES),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                bad(key, f"{getattr(self, key)!r} is not one of {', '.join(allowed)}")
        if self.zero not in (0, 1):
            bad("zero", f"{self.zero} is not 0 or 1 (1 shards optimizer state by whole matrices; gradients stay whole)")
        if self.rank < 0 or self.update_gap < 1:
            bad("rank" if self.rank < 0 else "update_gap", "rank must be >= 0 (0: by model size) and update_gap >= 1")
        if self.lr <= 0 or self.eps < 0 or self.weight_decay < 0 or not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            bad("lr", "need lr > 0, eps >= 0, weight_decay >= 0 and betas in [0, 1)")
        if self.fast_dct == "on" and (self.projector != "dct" or self.basis != "dct"):
            bad("fast_dct", "the FFT computes the DCT only; use optim.fast_dct=auto or optim.basis=dct")

    def needs_zero_stage_0(self) -> NeedsZeroStage0:
        return super().needs_zero_stage_0() or NeedsZeroStage0(
            f"optim={self.name}",
            "hands the optimizer flat 1-D partitions",
            what="whole matrices",
            fix=" optim.zero=1 (state sharded by whole matrices)",
        )

    def check(self, cfg) -> None:
        self.check_low_memory(cfg)
        if self.zero and self.step_in_backward:
            raise ValueError(
                "optim.zero=1 broadcasts each owner's weights after the step, which a step inside backward "
                "does not have; set optim.zero=0 or optim.step_in_backward=false"
            )


@dataclass
class DCTAdamWConfig(LowRankAdamConfig):
    """METHODS.md section 2 defaults."""


@dataclass
class GaLoreAdamWConfig(LowRankAdamConfig):
    """METHODS.md section 1: GaLore's recipe (lr 0.01, alpha 0.25, T 200, moments not rotated)."""

    name: str = "galore_adamw"
    lr: float = 0.01
    projector: str = "svd"
    update_gap: int = 200
    scale: float = 0.25
    rotate_moments: bool = False


def split_params(model: nn.Module, who: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(dense, projected): the block projections' 2-D weights, and every other trainable parameter."""
    projected = []
    for name, _, _, module in projection_modules(model):
        weight = getattr(module, "weight", None)
        if not isinstance(module, nn.Linear) or weight is None or weight.ndim != 2:
            raise ValueError(
                f"optim={who} projects dense block weights, but {name} is a {type(module).__name__} "
                f"(set by the param strategy); use param=full with optim={who}, or optim=adamw"
            )
        if weight.requires_grad:
            projected.append(weight)
    ids = {id(p) for p in projected}
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return dense, projected


def build_lowrank(cfg: LowRankAdamConfig, model: nn.Module, ctx: BuildContext) -> LowRankAdamW:
    dense, projected = split_params(model, cfg.name)
    groups = [g for g in ({"params": dense}, {"params": projected, "projected": True}) if g["params"]]
    return LowRankAdamW(
        groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        rank=cfg.rank or PROJECTION_RANK.get(ctx.model_size, 256),
        projector=cfg.projector,
        basis=cfg.basis,
        update_gap=cfg.update_gap,
        scale=cfg.scale,
        score=cfg.score,
        rotate_moments=cfg.rotate_moments,
        error_feedback=cfg.error_feedback,
        fast_dct=cfg.fast_dct,
        zero=cfg.zero,
        group=ctx.group,
        seed=ctx.seed,
        **low_memory_kwargs(cfg),
    )


@OPTIM.register("dct_adamw", DCTAdamWConfig)
def build_dct_adamw(cfg: DCTAdamWConfig, model: nn.Module, ctx: BuildContext) -> torch.optim.Optimizer:
    return build_lowrank(cfg, model, ctx)


@OPTIM.register("galore_adamw", GaLoreAdamWConfig)
def build_galore_adamw(cfg: GaLoreAdamWConfig, model: nn.Module, ctx: BuildContext) -> torch.optim.Optimizer:
    return build_lowrank(cfg, model, ctx)
