"""Sparse Spectral Training, SST (Zhao et al., ICML 2025): each block projection held as its SVD.

    W = U diag(sigma) V^T        U: m x k, V: n x k, sigma: k, k = min(m, n) (full rank)

initialised from the SVD of the dense init, so the model computes the same function. Every step trains
all of sigma (clamped at >= 0 after the step) and r sampled columns of U and V (the same indices for
both; renormalised to unit length after the step). `enhanced_grad` divides column i's gradients by
max(sigma_i, eps). Every T3 steps (`update_every`) the active columns are resampled without replacement
with p_i = mix / k + (1 - mix) sigma_i / sum(sigma); every T2 resamplings (`resvd_every`, default
ceil(k / r)) the layer is re-factorised by a fresh fp32 SVD of U diag(sigma) V^T (sigma sorted
descending). A resample resets the active block's optimizer state (a re-SVD also sigma's) and re-warms
the learning rate linearly over `rewarm_steps`.

Stored per layer: the active block (U: m x r, V: n x r) and sigma as Parameters, the only tensors with
gradients and optimizer state; the frozen block (m x (k-r), n x (k-r)) and the column positions of both
blocks as buffers. Weights grow to k (m + n) + k per layer (~1.4x dense for LLaMA shapes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from models import is_fake_or_meta, projection_modules, shape_for
from trainer.registry import PARAM
from trainer.seeding import mix_seed
from trainer.strategy import BuildContext, EngineOps, ParamStrategy


@dataclass
class SSTConfig:
    name: str = "sst"
    rank: int = 64
    """r, active columns of U and V per layer (METHODS.md §4: the published LLaMA-130M run uses r = 64)."""
    update_every: int = 200
    """T3: resample the active columns every this many steps (METHODS.md §4 default)."""
    resvd_every: int = 0
    """T2: re-SVD every this many resamplings; 0 = ceil(k / r) per layer (METHODS.md §4 default)."""
    uniform_mix: float = 0.5
    """p_i = mix / k + (1 - mix) sigma_i / sum(sigma); 0.5 is the ICML version, 0 the arXiv one (METHODS.md §4)."""
    enhanced_grad: bool = True
    """Divide column i's gradients by max(sigma_i, grad_eps) (METHODS.md §4 default: on)."""
    grad_eps: float = 1e-4
    """Floor on sigma_i in the enhanced gradient (METHODS.md gives none; our choice)."""
    rewarm_steps: int = 20
    """Linear LR re-warm after each resample, in steps (METHODS.md: 'short, configurable'; 10% of T3)."""

    def __post_init__(self):
        checks = [
            (self.rank > 0, "param.rank", "must be positive"),
            (self.update_every > 0, "param.update_every", "must be positive"),
            (self.resvd_every >= 0, "param.resvd_every", "must be >= 0 (0: ceil(k / r))"),
            (0.0 <= self.uniform_mix <= 1.0, "param.uniform_mix", "must be in [0, 1]"),
            (self.grad_eps > 0, "param.grad_eps", "must be positive"),
            (self.rewarm_steps >= 0, "param.rewarm_steps", "must be >= 0 (0: no re-warm)"),
        ]
        for ok, path, message in checks:
            if not ok:
                raise ValueError(f"{path}={getattr(self, path.split('.')[1])}: {message}")

    def check(self, cfg) -> None:
        """r columns of k = min(out, in) per layer: more than k cannot be sampled (SLTrain refuses its rank alike)."""
        shape = shape_for(cfg.model.size)
        k = min(shape.hidden, shape.intermediate)  # the smallest min(out, in) of the seven projections
        if self.rank > k:
            raise ValueError(f"param.rank={self.rank} is above the {k} singular vectors of model.size={cfg.model.size}'s "
                             f"smallest layer; set param.rank to at most {k}")


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

    def __init__(self, in_features: int, out_features: int, rank: int, enhanced_grad: bool = True, grad_eps: float = 1e-4):
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
        return _SpectralLinearFn.apply(x, self.u_active, self.v_active, self.sigma, self.u_frozen, self.v_frozen,
                                       self.active_idx, self.frozen_idx, self.enhanced_grad, self.grad_eps)

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        return spectral_weight(self.u_active, self.v_active, self.sigma, self.u_frozen, self.v_frozen,
                               self.active_idx, self.frozen_idx)

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


def sample_columns(sigma: torch.Tensor, r: int, uniform_mix: float, generator: torch.Generator) -> torch.Tensor:
    """r distinct column indices, p_i = mix / k + (1 - mix) sigma_i / sum(sigma) (computed in fp64 on CPU)."""
    if is_fake_or_meta(sigma):  # no values to draw from (trainer/memory.py): the first r columns
        return torch.arange(r, device=sigma.device)
    s = sigma.detach().double().cpu().clamp_min(0.0)
    k = s.numel()
    total = float(s.sum())
    p = torch.full_like(s, 1.0 / k) if total <= 0 else uniform_mix / k + (1.0 - uniform_mix) * s / total
    return torch.multinomial(p, r, replacement=False, generator=generator)


def svd_factors(w: torch.Tensor, dtype: torch.dtype):
    """(U, sigma, V) of w computed in `dtype`, thin, sigma descending."""
    u, s, vh = torch.linalg.svd(w.to(dtype), full_matrices=False)
    return u, s, vh.T


@PARAM.register("sst", SSTConfig)
class SST(ParamStrategy):
    def __init__(self, cfg: SSTConfig, ctx: BuildContext):
        self.cfg, self.ctx = cfg, ctx
        # Seeded identically on every rank: every rank draws the same columns.
        self.generator = torch.Generator().manual_seed(mix_seed(ctx.seed, 5))
        self.layers: list[tuple[str, SpectralLinear]] = []
        self.num_resamples = 0  # "iterations" so far
        self.num_resvds = 0  # "rounds" so far (re-SVDs of at least one layer)

    def resvd_every(self, layer: SpectralLinear) -> int:
        return self.cfg.resvd_every or math.ceil(layer.k / layer.r)

    # --- conversion -------------------------------------------------------------------------------
    @torch.no_grad()
    def convert(self, model: nn.Module) -> None:
        for name, parent, attr, linear in projection_modules(model):
            if linear.bias is not None:
                raise ValueError(f"param=sst: {name} has a bias; SST converts bias-free projections only")
            with torch.device(linear.weight.device):  # a meta model allocates nothing (trainer/memory.py)
                layer = SpectralLinear(linear.in_features, linear.out_features, self.cfg.rank, self.cfg.enhanced_grad,
                                       self.cfg.grad_eps)
            if not is_fake_or_meta(linear.weight):  # shape-only: keep the first r columns active, as built
                u, s, v = svd_factors(linear.weight, torch.float64)  # fp64: the converted model computes the dense init's function
                layer.set_factors(u, v, s, sample_columns(s, layer.r, self.cfg.uniform_mix, self.generator))
            setattr(parent, attr, layer)
            self.layers.append((name, layer))

    # --- the step-boundary hook -------------------------------------------------------------------
    @torch.no_grad()
    def on_step_end(self, step: int, ops: EngineOps) -> None:
        for _, layer in self.layers:
            layer.after_step()
        changed = [p for _, layer in self.layers for p in layer.parameters()]
        if step % self.cfg.update_every == 0:
            ops.reset_optimizer_state(self.resample())
        ops.params_changed(changed)

    @torch.no_grad()
    def resample(self) -> list[nn.Parameter]:
        """One iteration boundary: maybe re-SVD, then draw new active columns. Returns the params to reset."""
        self.num_resamples += 1
        reset, resvd = [], False
        for _, layer in self.layers:
            u, v = layer.full_factors()
            sigma = layer.sigma.detach()
            if self.num_resamples % self.resvd_every(layer) == 0:
                u, sigma, v = svd_factors((u.float() * sigma.float()) @ v.float().T, torch.float32)
                u, sigma, v = self.broadcast(u.contiguous(), sigma.contiguous(), v.contiguous())
                reset.append(layer.sigma)
                resvd = True
            layer.set_factors(u, v, sigma, sample_columns(sigma, layer.r, self.cfg.uniform_mix, self.generator))
            reset += [layer.u_active, layer.v_active]
        self.num_resvds += resvd
        return reset

    def broadcast(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Rank 0's re-SVD on every rank (an SVD is not guaranteed bitwise equal across devices)."""
        if self.ctx.world_size > 1 and dist.is_initialized():
            src = dist.get_global_rank(self.ctx.group, 0) if self.ctx.group is not None else 0
            for t in tensors:
                dist.broadcast(t, src=src, group=self.ctx.group)
        return tensors

    def lr_factor(self, step: int) -> float:
        """Linear re-warm over the `rewarm_steps` steps after each resample (step is 1-based)."""
        t3, warm = self.cfg.update_every, self.cfg.rewarm_steps
        if warm == 0 or step <= t3:
            return 1.0
        since = step - t3 * ((step - 1) // t3)  # 1 on the first step after a resample
        return min(1.0, since / warm)

    # --- resume and export --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        # U, V, sigma and the active mapping are module parameters / buffers, saved with the engine.
        return {"generator": self.generator.get_state(), "num_resamples": self.num_resamples, "num_resvds": self.num_resvds}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.generator.set_state(state["generator"])
        self.num_resamples, self.num_resvds = int(state["num_resamples"]), int(state["num_resvds"])

    @torch.no_grad()
    def export_dense(self, model: nn.Module) -> dict[str, torch.Tensor]:
        out = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for name, module in model.named_modules():
            if isinstance(module, SpectralLinear):
                for key in [k for k in out if k.startswith(f"{name}.")]:
                    del out[key]
                out[f"{name}.weight"] = module.dense_weight().clone()
        return out
