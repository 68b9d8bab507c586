"""Multi-Krum (Blanchard et al., NeurIPS 2017), computed from the p x p Gram matrix K = G^T G.

    d_ij = K_ii + K_jj - 2 K_ij                      (squared distances; no n-sized work beyond K)
    score_i = sum of the (q - f - 2) smallest d_ij, j != i
    agg = mean of the num_selected workers with the lowest scores (default q - f)

q = workers without NaN/Inf (the others are dropped), f = num_byzantine. Krum's guarantee needs
p >= 2f + 3; the score needs at least one neighbour, so a run with p < f + 3 is refused at start-up
(p is the world size; q can still fall below it when workers send NaN/Inf). Stateless. Logged per worker: its
weight in the aggregate (1/num_selected or 0) and its score.
"""

from dataclasses import dataclass

import torch

from agg._common import RobustAggregator, RobustConfig, linear_combination, per_worker
from trainer.registry import AGG


@dataclass
class MultiKrumConfig(RobustConfig):
    name: str = "multi_krum"
    num_byzantine: int = 1
    """f, the number of Byzantine workers assumed (Blanchard et al.)."""
    num_selected: int = 0
    """Workers averaged; 0: p - f (the usual Multi-Krum choice)."""

    def __post_init__(self):
        super().__post_init__()
        if self.num_byzantine < 0 or self.num_selected < 0:
            raise ValueError("agg.num_byzantine and agg.num_selected: must be >= 0")

    def min_workers(self) -> tuple[int, str]:
        f, chosen = self.num_byzantine, self.num_selected
        why = f"each worker's score sums its p - f - 2 nearest neighbours, f = agg.num_byzantine={f}"
        if chosen > f + 3:
            why = f"agg.num_selected={chosen} workers are averaged"
        return max(f + 3, chosen), why


def krum_coefficients(gram: torch.Tensor, good: torch.Tensor, num_byzantine: int, num_selected: int):
    """(coefficients over all p workers, scores) from the Gram matrix; faulty workers get 0 / inf."""
    p = gram.shape[0]
    idx = good.nonzero().flatten()
    q = len(idx)
    coef, scores = torch.zeros(p, dtype=torch.float64), torch.full((p,), float("inf"), dtype=torch.float64)
    if q == 0:
        return coef, scores
    k = gram[idx][:, idx]
    dist2 = (k.diag()[:, None] + k.diag()[None, :] - 2 * k).clamp_min(0)
    neighbours = min(max(1, q - num_byzantine - 2), q - 1)  # 0 only when a single worker is left
    dist2.fill_diagonal_(float("inf"))
    scores[idx] = torch.sort(dist2, dim=1).values[:, :neighbours].sum(dim=1)
    m = min(q, num_selected or max(1, q - num_byzantine))
    chosen = idx[torch.sort(scores[idx], stable=True).indices[:m]]
    coef[chosen] = 1.0 / m
    return coef, scores


@AGG.register("multi_krum", MultiKrumConfig)
class MultiKrumAggregator(RobustAggregator):
    needs_gram = True

    def combine(self, rows, gram, good):
        coef, scores = krum_coefficients(gram, good, self.cfg.num_byzantine, self.cfg.num_selected)
        return linear_combination(rows, coef, good), {**per_worker("weight", coef), **per_worker("score", scores)}
