"""Plain AdamW (decoupled weight decay): the baseline.

torch's own implementation, unless a low-memory feature is asked for (`optim.state_dtype` other than fp32,
`optim.step_in_backward`, or bf16 weights under train.precision=pure_bf16): then the project's
LowRankAdamW with no projected group, which is torch's single-tensor formula term for term (optim/base.py).
"""

from dataclasses import dataclass

import torch

from optim.base import LowMemoryConfig
from optim.lowrank_adam import LowRankAdamW
from trainer.registry import OPTIM
from trainer.strategy import BuildContext


@dataclass
class AdamWConfig(LowMemoryConfig):
    name: str = "adamw"
    lr: float = 3e-3
    """Peak learning rate (the schedule multiplies it); the rate the README's runs and docs/RESULTS.md use."""
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0

    def check(self, cfg) -> None:
        self.check_low_memory(cfg)


@OPTIM.register("adamw", AdamWConfig)
def build_adamw(cfg: AdamWConfig, model: torch.nn.Module, ctx: BuildContext) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    plain = cfg.state_dtype == "fp32" and not cfg.step_in_backward and all(p.dtype == torch.float32 for p in params)
    if plain:  # foreach=False: the per-tensor loop is bitwise reproducible across resumes and ranks.
        return torch.optim.AdamW(
            params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=False
        )
    return LowRankAdamW(
        [{"params": params}],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        group=ctx.group,
        seed=ctx.seed,
        **low_memory_kwargs(cfg),
    )


def low_memory_kwargs(cfg: LowMemoryConfig) -> dict:
    return {
        "state_dtype": cfg.state_dtype,
        "step_in_backward": cfg.step_in_backward,
        "stochastic_rounding": cfg.stochastic_rounding,
    }
