"""Plain AdamW (decoupled weight decay), torch's implementation: the baseline."""
from dataclasses import dataclass

import torch

from trainer.registry import OPTIM
from trainer.strategy import BuildContext


@dataclass
class AdamWConfig:
    name: str = "adamw"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0


@OPTIM.register("adamw", AdamWConfig)
def build_adamw(cfg: AdamWConfig, model: torch.nn.Module, ctx: BuildContext) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    # foreach=False: the per-tensor loop is bitwise reproducible across resumes and ranks.
    return torch.optim.AdamW(
        params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=False
    )
