"""`optim=galore_torch`: the published GaLore optimizer (PyPI `galore-torch`, GaLoreAdamW), for comparisons only.

GaLore (shared/METHODS.md section 1) on the seven block projections with the paper's recipe; every other
parameter is plain AdamW in the same optimizer. Its state holds a Python projector object per matrix, so a
checkpoint of it is a pickle and the projection is not saved as tensors; use optim=galore_adamw (our
implementation) for real runs. galore-torch is a benchmark extra: `pip install galore-torch==1.0`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models import PROJECTION_RANK
from optim.dct_adamw import split_params
from trainer.registry import OPTIM
from trainer.strategy import BuildContext, NeedsZeroStage0


@dataclass
class GaLoreTorchConfig:
    name: str = "galore_torch"
    lr: float = 0.01
    """GaLore's recipe (METHODS.md 1)."""
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-6
    """galore-torch's own default (it adds eps to sqrt(v) before bias correction)."""
    weight_decay: float = 0.0
    rank: int = 0
    """0: by model size (GaLore's table; debug 16, 20m 96)."""
    update_proj_gap: int = 200
    scale: float = 0.25
    proj_type: str = "std"
    """galore-torch's projection side: std (the smaller side) | reverse_std | left | right."""
    state_dtype: str = "fp32"
    """Only fp32: galore-torch's 8-bit variant runs on bitsandbytes' kernels, outside this trainer's checkpoints."""
    step_in_backward: bool = False
    """Only false: galore-torch steps after backward here (its per-layer variant is a training-script recipe)."""

    def __post_init__(self):
        if self.proj_type not in ("std", "reverse_std", "left", "right"):
            raise ValueError(f"optim.proj_type: {self.proj_type!r} is not one of std, reverse_std, left, right")
        if self.state_dtype != "fp32" or self.step_in_backward:
            raise ValueError(
                "optim=galore_torch keeps fp32 states and steps after backward; for 8-bit states or a step "
                "inside backward use optim=galore_adamw optim.state_dtype=int8 optim.step_in_backward=true"
            )
        if self.rank < 0 or self.update_proj_gap < 1 or self.lr <= 0:
            raise ValueError("optim.rank: need rank >= 0 (0: by model size), update_proj_gap >= 1 and lr > 0")

    def needs_zero_stage_0(self) -> NeedsZeroStage0:
        return NeedsZeroStage0(
            "optim=galore_torch",
            "hands it flat 1-D partitions",
            what="whole matrices",
            fix=", or optim=dct_adamw optim.zero=1 to shard",
        )


@OPTIM.register("galore_torch", GaLoreTorchConfig)
def build_galore_torch(cfg: GaLoreTorchConfig, model: nn.Module, ctx: BuildContext) -> torch.optim.Optimizer:
    try:
        from galore_torch import GaLoreAdamW
    except ImportError:
        raise ValueError("optim=galore_torch needs the galore-torch package: pip install galore-torch==1.0") from None
    dense, projected = split_params(model, cfg.name)
    rank = cfg.rank or PROJECTION_RANK.get(ctx.model_size, 256)
    groups = [{"params": dense}] if dense else []
    if projected:
        groups.append(
            {
                "params": projected,
                "rank": rank,
                "update_proj_gap": cfg.update_proj_gap,
                "scale": cfg.scale,
                "proj_type": cfg.proj_type,
            }
        )
    return GaLoreAdamW(
        groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        no_deprecation_warning=True,
    )
