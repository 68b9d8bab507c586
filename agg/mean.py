"""Mean of the workers' gradients: DeepSpeed's own all-reduce (the default).

    agg = (1/p) sum_i g_i

Not robust: one worker can move the mean anywhere. `aggregate` is used only when the engine's
all-reduce is off (under fault injection, so corrupt gradients really enter the mean).
"""

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from agg._common import bucket_ranges, read_range, write_range
from trainer.registry import AGG
from trainer.strategy import Aggregator, BuildContext


@dataclass
class MeanConfig:
    name: str = "mean"
    bucket_numel: int = 1 << 22
    """Coordinates per all-reduce call when the trainer calls `aggregate` (fault injection)."""


@AGG.register("mean", MeanConfig)
class MeanAggregator(Aggregator):
    uses_engine_allreduce = True

    def __init__(self, cfg: MeanConfig, ctx: BuildContext):
        self.cfg, self.group, self.world_size = cfg, ctx.group, ctx.world_size

    def aggregate(self, grads: list[torch.Tensor], step: int) -> dict[str, float]:
        start, sent, p = time.perf_counter(), 0, self.world_size
        for a, b in bucket_ranges(sum(g.numel() for g in grads), self.cfg.bucket_numel):
            flat = read_range(grads, a, b)
            if p > 1:
                dist.all_reduce(flat, group=self.group)
                sent += 2 * (p - 1) * flat.numel() * 4 // p  # a ring all-reduce
            write_range(grads, a, b, flat.div_(p))
        return {"agg/bytes_sent": float(sent), "agg/time_s": time.perf_counter() - start}
