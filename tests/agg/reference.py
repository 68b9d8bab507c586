"""Slow, obviously-correct dense versions of the aggregators: the test oracles (n x p matrices, float64)."""

import math

import torch


def flag_svd(
    g: torch.Tensor,
    m: int = 0,
    lam: float = 0.0,
    iterations: int = 5,
    tol: float = 1e-10,
    normalized: bool = True,
    seed: int = 0,
) -> torch.Tensor:
    """Explicit IRLS on the n x p matrix of gradients g (columns = workers), with thin SVDs of n x q matrices.
    Defaults as FlagConfig's: normalized, m = 0 meaning 1 (normalized) or ceil((p + 1) / 2) (raw)."""
    n, p = g.shape
    if not m:
        m = 1 if normalized else math.ceil((p + 1) / 2)
    m = min(p, m)
    x = g / g.norm(dim=0)
    vectors, weights = [x[:, i] for i in range(p)], [1.0] * p
    if lam > 0:
        for i in range(p):
            for j in range(i + 1, p):
                vectors.append(x[:, i] - x[:, j])
                weights.append(lam)
    v, c = torch.stack(vectors, dim=1), torch.tensor(weights, dtype=g.dtype)

    def residual(y):
        return (1 - (y.T @ v).square().sum(dim=0)).abs()

    def objective(y):
        return float((c * residual(y).sqrt()).sum())

    r0 = torch.randn(p, m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y, _ = torch.linalg.qr(x @ r0)
    f = objective(y)
    for _ in range(iterations):
        w = (residual(y) + 1e-7) ** -0.25
        u, _, _ = torch.linalg.svd(v * (c.sqrt() * w)[None, :], full_matrices=False)
        y_new = u[:, :m]
        f_new = objective(y_new)
        if f_new > f:
            break
        y, drop, f = y_new, f - f_new, f_new
        if drop < tol:
            break
    if normalized:
        return y @ (y.T @ x.sum(dim=1)) / m
    return y @ (y.T @ g.sum(dim=1)) / p


def median(g: torch.Tensor) -> torch.Tensor:
    """Per coordinate (row), the middle value, or the mean of the two middle values, over the columns."""
    out = []
    for row in g.tolist():
        s, q = sorted(row), len(row)
        out.append(s[q // 2] if q % 2 else (s[q // 2 - 1] + s[q // 2]) / 2)
    return torch.tensor(out, dtype=g.dtype)


def trimmed_mean(g: torch.Tensor, b: int) -> torch.Tensor:
    return torch.tensor([sum(sorted(row)[b : len(row) - b]) / (len(row) - 2 * b) for row in g.tolist()], dtype=g.dtype)


def multi_krum(g: torch.Tensor, f: int, selected: int = 0) -> torch.Tensor:
    n, p = g.shape
    scores = []
    for i in range(p):
        d = sorted(float((g[:, i] - g[:, j]).square().sum()) for j in range(p) if j != i)
        scores.append(sum(d[: max(1, p - f - 2)]))
    chosen = sorted(range(p), key=lambda i: scores[i])[: selected or p - f]
    return g[:, chosen].mean(dim=1)
