"""Mean of the workers' gradients: DeepSpeed's own all-reduce (the default)."""
from dataclasses import dataclass

import torch
import torch.distributed as dist

from trainer.registry import AGG
from trainer.strategy import Aggregator, BuildContext


@dataclass
class MeanConfig:
    name: str = "mean"


@AGG.register("mean", MeanConfig)
class MeanAggregator(Aggregator):
    uses_engine_allreduce = True

    def __init__(self, cfg: MeanConfig, ctx: BuildContext):
        self.group, self.world_size = ctx.group, ctx.world_size

    def aggregate(self, grads: list[torch.Tensor], step: int) -> dict[str, float]:
        # Used only when the engine's all-reduce is off (e.g. under fault injection).
        for g in grads:
            if self.world_size > 1:
                dist.all_reduce(g, group=self.group)
            g.div_(self.world_size)
        return {}
