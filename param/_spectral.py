"""SST's layer: a linear map held as its SVD, W = U diag(sigma) V^T, in an active block of r sampled columns
(trained) and a frozen one (buffers). The method, its schedule and its math are in param/sst.py's docstring.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models import is_fake_or_meta


def spectral_weight(u_a, v_a, sigma, u_f, v_f, a_idx, f_idx, dtype=None) -> torch.Tensor:
    """U diag(sigma) V^T (m x n) from the active and frozen blocks, computed in `dtype`."""
    dtype = dtype or u_a.dtype
    w = (u_a.to(dtype) * sigma[a_idx].to(dtype)) @ v_a.to(dtype).T
    if f_idx.numel():
        w = torch.addmm(w, u_f.to(dtype) * sigma[f_idx].to(dtype), v_f.to(dtype).T)
    return w


class _SpectralLinearFn(torch.autograd.Function):
    """y = x W^T with W = U diag(sigma) V^T rebuilt in forward and backward, never saved.

    Backward, with G = dY^T X (m x n): dX = dY W, dU_a = G V_a diag(s_a) (/ max(s_a, eps) when enhanced),
    dV_a = G^T U_a diag(s_a) (same scale), dsigma_i = u_i^T G v_i for every column. The frozen block
    gets no gradient.
    """

    @staticmethod
    def forward(ctx, x, u_a, v_a, sigma, u_f, v_f, a_idx, f_idx, enhanced, eps):
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        with torch.autocast(device, enabled=False):
            w = spectral_weight(u_a, v_a, sigma, u_f, v_f, a_idx, f_idx, dtype)
            y = F.linear(x.to(dtype), w)
        ctx.save_for_backward(x, u_a, v_a, sigma, u_f, v_f, a_idx, f_idx)
        ctx.dtype, ctx.enhanced, ctx.eps = dtype, enhanced, eps
        return y

    @staticmethod
    def backward(ctx, dy):
        x, u_a, v_a, sigma, u_f, v_f, a_idx, f_idx = ctx.saved_tensors
        dt = ctx.dtype
        dy2, x2 = dy.reshape(-1, dy.shape[-1]).to(dt), x.reshape(-1, x.shape[-1]).to(dt)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = (dy2 @ spectral_weight(u_a, v_a, sigma, u_f, v_f, a_idx, f_idx, dt)).view(x.shape).to(x.dtype)
        g = dy2.T @ x2  # (m, n), transient
        gv_a, gtu_a = g @ v_a.to(dt), g.T @ u_a.to(dt)  # (m, r), (n, r)
        s_a = sigma[a_idx]
        scale = s_a / s_a.clamp_min(ctx.eps) if ctx.enhanced else s_a
        du_a = (gv_a.float() * scale).to(u_a.dtype)
        dv_a = (gtu_a.float() * scale).to(v_a.dtype)
        dsigma = torch.zeros_like(sigma)
        dsigma[a_idx] = (u_a * gv_a.to(u_a.dtype)).sum(0)
        if f_idx.numel():
            dsigma[f_idx] = (u_f * (g @ v_f.to(dt)).to(u_f.dtype)).sum(0)
        return dx, du_a, dv_a, dsigma, None, None, None, None, None, None


class SpectralLinear(nn.Module):
    """A bias-free Linear held as U diag(sigma) V^T with r trainable columns (see the module docstring)."""

    def __init__(
        self, in_features: int, out_features: int, rank: int, enhanced_grad: bool = True, grad_eps: float = 1e-4
    ):
        super().__init__()
        m, n = out_features, in_features
        k = min(m, n)
        r = min(rank, k)
        self.in_features, self.out_features, self.k, self.r = n, m, k, r
        self.enhanced_grad, self.grad_eps = enhanced_grad, grad_eps
        self.u_active = nn.Parameter(torch.zeros(m, r))
        self.v_active = nn.Parameter(torch.zeros(n, r))
        self.sigma = nn.Parameter(torch.zeros(k))
        self.register_buffer("u_frozen", torch.zeros(m, k - r))
        self.register_buffer("v_frozen", torch.zeros(n, k - r))
        self.register_buffer("active_idx", torch.arange(r))  # column positions (in the sorted SVD) of each block
        self.register_buffer("frozen_idx", torch.arange(r, k))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, k={self.k}, active={self.r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SpectralLinearFn.apply(
            x,
            self.u_active,
            self.v_active,
            self.sigma,
            self.u_frozen,
            self.v_frozen,
            self.active_idx,
            self.frozen_idx,
            self.enhanced_grad,
            self.grad_eps,
        )

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        return spectral_weight(
            self.u_active, self.v_active, self.sigma, self.u_frozen, self.v_frozen, self.active_idx, self.frozen_idx
        )

    @torch.no_grad()
    def full_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, V), m x k and n x k, columns in position order."""
        u = self.u_active.new_empty(self.out_features, self.k)
        v = self.v_active.new_empty(self.in_features, self.k)
        u[:, self.active_idx], u[:, self.frozen_idx] = self.u_active, self.u_frozen
        v[:, self.active_idx], v[:, self.frozen_idx] = self.v_active, self.v_frozen
        return u, v

    @torch.no_grad()
    def set_factors(self, u: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, active: torch.Tensor) -> None:
        """Load full factors and pick the active columns, in place (Parameters keep their identity)."""
        device = self.sigma.device
        if is_fake_or_meta(active):  # no values to read (trainer/memory.py): positions of the right shapes
            active, frozen = torch.arange(self.r, device=device), torch.arange(self.r, self.k, device=device)
        else:
            active = active.cpu().sort().values
            mask = torch.ones(self.k, dtype=torch.bool)
            mask[active] = False
            active, frozen = active.to(device), torch.nonzero(mask).flatten().to(device)
        u, v = u.to(device, self.u_active.dtype), v.to(device, self.v_active.dtype)
        self.u_active.copy_(u[:, active])
        self.v_active.copy_(v[:, active])
        self.u_frozen.copy_(u[:, frozen])
        self.v_frozen.copy_(v[:, frozen])
        self.sigma.copy_(sigma.to(device, self.sigma.dtype))
        self.active_idx.copy_(active)
        self.frozen_idx.copy_(frozen)

    @torch.no_grad()
    def after_step(self) -> None:
        """sigma >= 0 and unit-length active columns, after every optimizer step."""
        self.sigma.clamp_min_(0.0)
        for p in (self.u_active, self.v_active):
            p.div_(p.norm(dim=0, keepdim=True).clamp_min(1e-12))
