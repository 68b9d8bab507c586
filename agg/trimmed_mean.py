"""Coordinate-wise trimmed mean (Yin et al., ICML 2018).

    agg[k] = mean of the sorted values g_(b+1)[k] .. g_(q-b)[k]     (b = num_trim dropped at each end)

Workers that send any NaN/Inf are dropped first (q = the workers left); b shrinks to (q - 1) // 2 if
too few remain. Stateless. The per-worker weight logged is the fraction of coordinates it survives.
"""

from dataclasses import dataclass

from agg._common import CoordinatewiseAggregator, RobustConfig
from trainer.registry import AGG
from trainer.strategy import BuildContext


@dataclass
class TrimmedMeanConfig(RobustConfig):
    name: str = "trimmed_mean"
    num_trim: int = 1
    """Values dropped at each end of every coordinate: the number of Byzantine workers tolerated, f
    (Yin et al. trim a fraction beta; with p workers beta = num_trim / p)."""

    def __post_init__(self):
        super().__post_init__()
        if self.num_trim < 0:
            raise ValueError("agg.num_trim: must be >= 0")

    def min_workers(self) -> tuple[int, str]:
        b = self.num_trim
        return max(
            2, 2 * b + 1
        ), f"agg.num_trim={b} drops {b} value(s) at each end of every coordinate and must keep one"


@AGG.register("trimmed_mean", TrimmedMeanConfig)
class TrimmedMeanAggregator(CoordinatewiseAggregator):
    def __init__(self, cfg: TrimmedMeanConfig, ctx: BuildContext):
        if 2 * cfg.num_trim >= ctx.world_size and ctx.world_size > 1:
            raise ValueError(
                f"agg.num_trim={cfg.num_trim} trims every value of {ctx.world_size} workers; "
                f"use at most {(ctx.world_size - 1) // 2}"
            )
        super().__init__(cfg, ctx)

    def kept_range(self, q: int) -> tuple[int, int]:
        b = min(self.cfg.num_trim, (q - 1) // 2)
        return (b, q - b)
