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
from torch import nn

from models import is_fake_or_meta, projection_modules, shape_for
from param._spectral import SpectralLinear, spectral_weight  # noqa: F401  (spectral_weight: the layer's math, re-exported)
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
            raise ValueError(
                f"param.rank={self.rank} is above the {k} singular vectors of model.size={cfg.model.size}'s "
                f"smallest layer; set param.rank to at most {k}"
            )


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
                layer = SpectralLinear(
                    linear.in_features, linear.out_features, self.cfg.rank, self.cfg.enhanced_grad, self.cfg.grad_eps
                )
            if not is_fake_or_meta(linear.weight):  # shape-only: keep the first r columns active, as built
                u, s, v = svd_factors(
                    linear.weight, torch.float64
                )  # fp64: the converted model computes the dense init's function
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
        return {
            "generator": self.generator.get_state(),
            "num_resamples": self.num_resamples,
            "num_resvds": self.num_resvds,
        }

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
