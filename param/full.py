"""Full rank: every weight is an ordinary dense Parameter (the baseline)."""

from dataclasses import dataclass

from trainer.registry import PARAM
from trainer.strategy import BuildContext, ParamStrategy


@dataclass
class FullConfig:
    name: str = "full"


@PARAM.register("full", FullConfig)
class FullParam(ParamStrategy):
    def __init__(self, cfg: FullConfig, ctx: BuildContext):
        self.cfg = cfg
