"""Flag aggregation (Almasi et al., ICLR 2024), computed from the p x p Gram matrix K = G^T G alone.

With x_i = g_i / ||g_i||, find an orthonormal Y (n x m) minimising

    f(Y) = sum_i sqrt(|1 - ||Y^T x_i||^2|) + lam * sum_{i<j} sqrt(|1 - ||Y^T (x_i - x_j)||^2|)

by IRLS: each term's vector v_k gets w_k = (|1 - ||Y^T v_k||^2| + 1e-7)^(-1/4), and the new Y is the
top-m left singular vectors of [w_k v_k] (pair terms also scaled by sqrt(lam)). Every such Y lies in
span(X), so Y = X A with A (p x m). With Kx = D^-1 K D^-1 (D = diag ||g_i||) and [w_k v_k] = X B:

    top-m eigenpairs (V, S) of B^T Kx B      ->  A = B V S^-1/2        (never an n x p SVD)
    ||Y^T X b||^2 = ||A^T Kx b||^2
    aggregate = G c,  c = D^-1 A A^T Kx 1 / m             (normalized: (1/m) sum Y Y^T x_i, public code; default)
                      c = D^-1 A A^T D^-1 K 1 / p        (raw: (1/p) Y Y^T sum g_i, the paper and METHODS.md 5)

Defaults: the normalized aggregate with m = 1, the form that stays within 5% of the clean loss under every
attack of benchmarks/flag_robustness.py (p = 4 with 1 Byzantine worker, p = 8 with 2; docs/flag.md). A flag
cannot see a sign, so the raw aggregate carries a sign-flipped worker at full magnitude, and a tiny weight
times a huge noise vector still outweighs the honest signal; the normalized one bounds each worker to its unit
vector's projection. m = 1 keeps only the direction the honest workers agree on: spare dimensions take in
whatever the honest line leaves unexplained, i.e. an attacker. `normalized=false` (with m = 0) is the spec's
raw form, m = ceil((p + 1) / 2).

Initial Y: an orthonormal basis of X R, R a fixed-seed Gaussian p x m, identical on all ranks (drawn in the
workers' span so it stays a function of K; an ambient random Y in high dimension is nearly orthogonal to
every x_i, i.e. uniform first weights). Up to `iterations` steps, stopping when f falls by less than `tol`;
a step that raises f is rejected. Workers sending NaN/Inf are dropped first (p = the workers left).
Cost: O(n p^2) for K (computed shard-wise and all-reduced in the sharded mode) plus O(q^3), q = number of
terms. Stateless. Logged per worker: `weight` = ||Y^T x_i||^2 (1: inside the flag, 0: ignored) and `coef`
= c_i ||g_i||, the multiple of its unit direction in the aggregate; and `agg/mean_cosine`, how much the
workers agree (Flag needs the honest ones to agree well above chance to single an attacker out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from agg._common import RobustAggregator, RobustConfig, linear_combination, per_worker
from trainer.registry import AGG


@dataclass
class FlagConfig(RobustConfig):
    name: str = "flag"
    m: int = 0
    """Flag dimension; 0: `flag_dimension`'s rule (1 for the normalized aggregate, ceil((p + 1) / 2) for the raw
    one)."""
    lam: float = 0.0
    """Weight of the pairwise-difference terms (METHODS.md 5: default 0)."""
    iterations: int = 5
    """IRLS iterations at most (METHODS.md 5)."""
    tol: float = 1e-10
    """Stop when the objective falls by less than this (METHODS.md 5)."""
    normalized: bool = True
    """True: (1/m) sum Y Y^T x_i on normalized gradients (the public code; robust, docs/flag.md). False:
    (1/p) Y Y^T sum g_i on raw gradients (the paper and METHODS.md 5; keeps magnitude, not robust to
    sign_flip or noise attacks)."""
    seed: int = 0
    """Seed of the initial Y (identical on all ranks)."""

    def __post_init__(self):
        super().__post_init__()
        if self.m < 0 or self.lam < 0 or self.iterations < 0 or self.tol < 0:
            raise ValueError("agg.m, agg.lam, agg.iterations, agg.tol: must be >= 0")


def flag_dimension(p: int, m: int, normalized: bool) -> int:
    """The flag dimension for p workers: m if set (at most p); else 1 for the normalized aggregate (the one
    direction honest workers agree on: robust, docs/flag.md) and ceil((p + 1) / 2) for the raw one (METHODS.md 5)."""
    if m:
        return min(p, m)
    return min(p, 1) if normalized else math.ceil((p + 1) / 2)


# --- the Gram-only algorithm (float64, p x p) -----------------------------------------------------
def term_matrix(p: int, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """E (p x q): the objective's vectors as combinations of the x_i; and each term's weight in f."""
    cols, weights = [torch.eye(p, dtype=torch.float64)], [torch.ones(p, dtype=torch.float64)]
    if lam > 0 and p > 1:
        i, j = torch.triu_indices(p, p, offset=1)
        pairs = torch.zeros(p, len(i), dtype=torch.float64)
        pairs[i, torch.arange(len(i))], pairs[j, torch.arange(len(i))] = 1.0, -1.0
        cols.append(pairs)
        weights.append(torch.full((len(i),), lam, dtype=torch.float64))
    return torch.cat(cols, dim=1), torch.cat(weights)


def top_subspace(kx: torch.Tensor, b: torch.Tensor, m: int) -> torch.Tensor:
    """A with X A = the top-m left singular vectors of X B (directions with ~0 singular value dropped:
    they are orthogonal to span(X), so no projection of a worker sees them)."""
    evals, evecs = torch.linalg.eigh(b.T @ kx @ b)
    evals, evecs = evals.flip(0)[:m], evecs.flip(1)[:, :m]
    keep = evals > 1e-10 * evals[0].clamp_min(1e-300)
    return b @ evecs[:, keep] / evals[keep].sqrt()


def residuals(kx: torch.Tensor, a: torch.Tensor, terms: torch.Tensor) -> torch.Tensor:
    """|1 - ||Y^T v_k||^2| for every term k."""
    return (1 - ((a.T @ kx) @ terms).square().sum(dim=0)).abs()


def flag_subspace(kx: torch.Tensor, m: int, lam: float, iterations: int, tol: float, seed: int):
    """IRLS for the flag; returns (A, number of accepted iterations)."""
    p = kx.shape[0]
    terms, term_weights = term_matrix(p, lam)
    scale = term_weights.sqrt()
    r0 = torch.randn(p, m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    a = top_subspace(kx, r0, m)
    objective = float((term_weights * residuals(kx, a, terms).sqrt()).sum())
    done = 0
    for _ in range(iterations):
        w = (residuals(kx, a, terms) + 1e-7) ** -0.25
        a_new = top_subspace(kx, terms * (scale * w)[None, :], m)
        new_objective = float((term_weights * residuals(kx, a_new, terms).sqrt()).sum())
        if new_objective > objective:
            break  # never return a Y worse than the previous one
        a, done, falling = a_new, done + 1, objective - new_objective
        objective = new_objective
        if falling < tol:
            break
    return a, done


def unit_gram(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 / ||g_i||, the Gram matrix of the unit vectors x_i); a zero gradient gets x_i = 0."""
    norms = k.diag().clamp_min(0).sqrt()
    inv = torch.where(norms > 0, 1 / norms.clamp_min(1e-300), torch.zeros_like(norms))
    return inv, inv[:, None] * k * inv[None, :]


def flag_coefficients(gram: torch.Tensor, good: torch.Tensor, cfg: FlagConfig):
    """(c over all p workers, ||Y^T x_i||^2 per worker, iterations) from the Gram matrix."""
    p_all = gram.shape[0]
    idx = good.nonzero().flatten()
    coef, explained = torch.zeros(p_all, dtype=torch.float64), torch.zeros(p_all, dtype=torch.float64)
    p = len(idx)
    if p == 0:
        return coef, explained, 0
    k = gram[idx][:, idx]
    inv, kx = unit_gram(k)
    m = flag_dimension(p, cfg.m, cfg.normalized)
    a, done = flag_subspace(kx, m, cfg.lam, cfg.iterations, cfg.tol, cfg.seed)
    ones = torch.ones(p, dtype=torch.float64)
    if cfg.normalized:
        c = inv * (a @ (a.T @ (kx @ ones))) / m
    else:
        c = inv * (a @ (a.T @ (inv * (k @ ones)))) / p
    coef[idx] = c
    explained[idx] = (a.T @ kx).square().sum(dim=0)
    return coef, explained, done


def mean_cosine(gram: torch.Tensor, good: torch.Tensor) -> dict[str, float]:
    """The mean pairwise cosine of the good workers' gradients: how much they agree (a zero gradient counts 0).
    A flag can single an attacker out only when honest workers agree well above chance."""
    idx = good.nonzero().flatten()
    if len(idx) < 2:
        return {}
    _, cos = unit_gram(gram[idx][:, idx])
    p = len(idx)
    return {"agg/mean_cosine": float((cos.sum() - cos.diag().sum()) / (p * (p - 1)))}


@AGG.register("flag", FlagConfig)
class FlagAggregator(RobustAggregator):
    needs_gram = True

    def combine(self, rows, gram, good):
        coef, explained, done = flag_coefficients(gram, good, self.cfg)
        norms = gram.diag().clamp_min(0).sqrt()
        metrics = {
            **per_worker("weight", explained),
            **per_worker("coef", coef * norms),
            "agg/flag_iterations": float(done),
            **mean_cosine(gram, good),
        }
        return linear_combination(rows, coef, good), metrics
