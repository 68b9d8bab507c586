"""Coordinate-wise median of the workers' gradients (Yin et al., ICML 2018).

    agg[k] = median_i g_i[k]      (the mean of the two middle values when the count is even)

Workers that send any NaN/Inf are dropped first. Stateless. The per-worker weight logged is the fraction
of coordinates where that worker's value is (one of) the middle value(s).
"""

from dataclasses import dataclass

from agg._common import CoordinatewiseAggregator, RobustConfig
from trainer.registry import AGG


@dataclass
class MedianConfig(RobustConfig):
    name: str = "median"

    def min_workers(self) -> tuple[int, str]:
        return 3, "the median of 1 or 2 values is their mean: no worker can be outvoted"


@AGG.register("median", MedianConfig)
class MedianAggregator(CoordinatewiseAggregator):
    def kept_range(self, q: int) -> tuple[int, int]:
        return ((q - 1) // 2, q // 2 + 1)
