"""Projectors for the low-rank Adam of optim/lowrank_adam.py (shared/METHODS.md sections 1 and 2).

Notation: gradient `G` of shape m x n, rank r, `s = min(m, n)`. Both projectors project the smaller
side: if m >= n the low-rank gradient is `R = G P` (m x r), else `R = P^T G` (r x n).

- `dct`: `P = Q[:, idx]`, `Q` a fixed orthonormal basis of size s (the DCT-II matrix by default), cached
  once per size and shared by every matrix of that size. A refresh computes `S = G Q` (or `Q^T G`) once,
  scores its columns (rows) by l1 / l2 norm and keeps the top-r: `R = S[:, idx]`, no second matmul. The
  only projection state is `idx` (r int32). Because Q is orthonormal, `Q[:, old]^T Q[:, new]` is a partial
  permutation, so moments follow their basis vector by index matching.
- `svd`: GaLore. A refresh takes the thin SVD of G (fp32) and keeps `P = V[:, :r]` (or `U[:, :r]`).

Bases are held as `C = Q^T` (rows are basis vectors), so `P^T = C[idx]` is a contiguous row gather.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from models.meta import tensor_cache

BasisFn = Callable[[int], torch.Tensor]  # size s -> s x s orthonormal matrix, rows are basis vectors


def dct_matrix(size: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix: C[k, j] = sqrt(2/s) cos(pi k (2j+1) / (2s)), row 0 times 1/sqrt(2)."""
    k = torch.arange(size, dtype=torch.float64)[:, None]
    j = torch.arange(size, dtype=torch.float64)[None, :]
    c = math.sqrt(2.0 / size) * torch.cos(math.pi * k * (2 * j + 1) / (2 * size))
    c[0] /= math.sqrt(2.0)
    return c.float()


def random_qr_matrix(size: int) -> torch.Tensor:
    """A random orthonormal basis (the ablation in METHODS.md section 2); fixed seed, so identical on all ranks."""
    gen = torch.Generator().manual_seed(1234 + size)
    q, r = torch.linalg.qr(torch.randn(size, size, generator=gen, dtype=torch.float64, device="cpu"))
    return (q * torch.sign(torch.diagonal(r))).T.contiguous().float()


BASES: dict[str, BasisFn] = {"dct": dct_matrix, "random_qr": random_qr_matrix}
_CACHE: dict[tuple, torch.Tensor] = {}


def basis(kind: str | BasisFn, size: int, device: torch.device) -> torch.Tensor:
    """The cached s x s basis (rows are basis vectors) for this kind and size."""
    fn = BASES[kind] if isinstance(kind, str) else kind
    key = (fn, size, str(device))
    cache = tensor_cache("bases", _CACHE)  # under FakeTensorMode (trainer/memory.py): the mode's own cache
    if key not in cache:
        cache[key] = fn(size).to(device)
    return cache[key]


def dct_fft(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal DCT-II along the last dim in O(n log n) (Makhoul: even/odd reorder, FFT, twiddle)."""
    size = x.shape[-1]
    v = torch.cat([x[..., ::2], x[..., 1::2].flip(-1)], dim=-1)
    k = torch.arange(size, device=x.device, dtype=x.dtype)
    twiddle = torch.polar(torch.ones_like(k), -math.pi * k / (2 * size))
    out = (torch.fft.fft(v) * twiddle).real * math.sqrt(2.0 / size)
    out[..., 0] /= math.sqrt(2.0)
    return out


def use_fft(fast_dct: str, size: int, device: torch.device) -> bool:
    """auto: FFT on CPU from size 256 up (measured 4x faster at 768); on GPU only past 2048 (dense matmul wins)."""
    if fast_dct == "auto":
        return size >= (256 if device.type == "cpu" else 4096)
    return fast_dct == "on"


def full_transform(grad: torch.Tensor, c: torch.Tensor, fft: bool) -> torch.Tensor:
    """S = G Q (m >= n) or Q^T G (m < n), through the FFT when asked (DCT basis only)."""
    if grad.shape[0] >= grad.shape[1]:
        return dct_fft(grad) if fft else grad @ c.T
    return dct_fft(grad.T).T if fft else c @ grad


def top_indices(s: torch.Tensor, rank: int, score: str, tall: bool) -> torch.Tensor:
    """Indices (int32, ascending) of the r columns (tall) or rows of S with the largest l1 / l2 norm."""
    dim = 0 if tall else 1
    scores = s.abs().sum(dim) if score == "l1" else s.square().sum(dim)
    return torch.topk(scores, rank, sorted=False).indices.sort().values.to(torch.int32)


def match_slots(old_idx: torch.Tensor, new_idx: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Q[:, old]^T Q[:, new] as indices: (kept, source), both over the new slots. `kept[j]`: new basis vector j
    was also an old one, in old slot `source[j]` (0 where not kept). Fixed shapes, no `nonzero`, so it also
    runs on fake tensors (trainer/memory.py)."""
    where_old = torch.full((size,), -1, dtype=torch.long, device=new_idx.device)
    where_old[old_idx.long()] = torch.arange(old_idx.numel(), device=new_idx.device)
    src = where_old[new_idx.long()]
    kept = src >= 0
    return kept, src.clamp_min(0)


def rotate_by_index(moment: torch.Tensor, kept: torch.Tensor, source: torch.Tensor, tall: bool) -> torch.Tensor:
    """Moment slots move with their basis vector; dropped ones are discarded, new ones start at zero.
    (kept, source) from match_slots; each kept value is copied unchanged, so the result is exact."""
    dim = 1 if tall else 0  # m x r: slots are columns; r x n: slots are rows
    moved = moment.index_select(dim, source)
    mask = kept.view(1, -1) if tall else kept.view(-1, 1)
    return torch.where(mask, moved, torch.zeros((), dtype=moment.dtype, device=moment.device))


def svd_projection(grad: torch.Tensor, rank: int, previous: torch.Tensor | None) -> torch.Tensor:
    """GaLore's P: V[:, :r] (n x r) if m >= n else U[:, :r] (m x r), from the fp32 thin SVD of G.

    An SVD that fails to converge (ill-conditioned gradients) keeps the previous P, or on the first step
    falls back to the eigenvectors of the smaller Gram matrix (the same subspace, computed differently).
    """
    g = grad.float()
    tall = g.shape[0] >= g.shape[1]
    try:
        u, _, vh = torch.linalg.svd(g, full_matrices=False)
        return vh[:rank].T.contiguous() if tall else u[:, :rank].contiguous()
    except torch.linalg.LinAlgError:
        if previous is not None:
            return previous
        gram = g.T @ g if tall else g @ g.T
        _, vecs = torch.linalg.eigh(gram.double())
        return vecs.flip(1)[:, :rank].float().contiguous()
