"""Plain low-rank weights, W = (alpha / r) B A: SLTrain without its sparse part (delta = 0), the quality
baseline SLTrain is measured against (METHODS.md section 3). B is drawn like A (Kaiming-uniform): with B = 0
and no S, every block would stay at zero with zero gradients. The layer never forms W: x -> x A^T -> (.) B^T.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from param.sltrain import SLTrain, SLTrainConfig
from trainer.registry import PARAM
from trainer.strategy import BuildContext


@dataclass
class LowRankConfig:
    name: str = "lowrank"
    rank: int | None = None
    """r of B A. None: the SLTrain default for model.size (SIZE_DEFAULTS)."""
    alpha: float | None = None
    """W = (alpha / rank) B A. None: the SLTrain default for model.size (SIZE_DEFAULTS)."""

    def __post_init__(self):
        self.as_sltrain()  # same validation

    def as_sltrain(self) -> SLTrainConfig:
        return SLTrainConfig(name=self.name, rank=self.rank, alpha=self.alpha, delta=0.0, b_init="kaiming")

    def resolved(self, model_size: str) -> LowRankConfig:
        """A copy with rank and alpha filled from SIZE_DEFAULTS[model_size] (what a checkpoint records)."""
        full = self.as_sltrain().resolved(model_size)
        return dataclasses.replace(self, rank=full.rank, alpha=full.alpha)

    def check(self, cfg) -> None:
        self.as_sltrain().check(cfg)


@PARAM.register("lowrank", LowRankConfig)
def build_lowrank(cfg: LowRankConfig, ctx: BuildContext) -> SLTrain:
    """Plain low-rank W = (alpha / rank) B A: SLTrain with delta = 0 (the quality baseline)."""
    return SLTrain(cfg.as_sltrain(), ctx)
