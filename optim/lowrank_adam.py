"""Low-rank AdamW with a pluggable projector (shared/METHODS.md sections 1 and 2).

For a projected weight W (m x n) with gradient G, and `P^T` the r x s projection of optim/projectors.py:

    R = G P (m >= n)  or  P^T G (m < n)            # the low-rank gradient; P refreshed every T steps
    m = b1 m + (1 - b1) R,  v = b2 v + (1 - b2) R^2  # Adam in the subspace, bias-corrected
    W <- W (1 - lr wd) - lr * scale * backproject(m_hat / (sqrt(v_hat) + eps))

Stored per projected matrix: two r-sized moments, `step`, and the projection state: `idx` (r int32, the
`dct` projector) or `proj` (P^T, r x s, the `svd` projector = GaLore); with error feedback also the
residual `E <- G + E - backproject(R)` (fp32, or int8 per row plus an fp32 scale per row). Everything
else is plain AdamW (torch's formula) in its own param group. The state holds tensors only.

`zero=1` shards the state by whole matrices: each parameter is owned by one rank (a balanced assignment
by size), which keeps its state, computes its update and broadcasts the new weights. This is what
DeepSpeed ZeRO-1/2 cannot do for a shape-aware optimizer, because they hand it flat 1-D partitions.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from optim import projectors as proj
from optim.base import LowMemoryOptimizer


def balanced_owners(sizes: list[int], world_size: int) -> list[int]:
    """Owner rank of each tensor: largest first onto the least loaded rank (ties: lowest index, lowest rank)."""
    load = [0] * world_size
    owners = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        owners[i] = min(range(world_size), key=lambda r: (load[r], r))
        load[owners[i]] += sizes[i]
    return owners


def check_arguments(lr, betas, eps, weight_decay, projection: dict, zero: int, step_in_backward: bool) -> None:
    if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
        raise ValueError(f"invalid AdamW hyperparameters lr={lr} betas={betas} eps={eps} weight_decay={weight_decay}")
    projector, score, error_feedback = projection["projector"], projection["score"], projection["error_feedback"]
    if projector not in ("dct", "svd") or score not in ("l1", "l2") or error_feedback not in ("off", "fp32", "int8"):
        raise ValueError(f"invalid projector={projector!r} score={score!r} error_feedback={error_feedback!r}")
    rank, update_gap, basis = projection["rank"], projection["update_gap"], projection["basis"]
    if rank < 1 or update_gap < 1 or basis not in proj.BASES or zero not in (0, 1):
        raise ValueError(f"invalid rank={rank} update_gap={update_gap} basis={basis!r} zero={zero}")
    if zero and step_in_backward:
        raise ValueError(
            "optim.zero=1 broadcasts each owner's weights after the step; use optim.step_in_backward=false"
        )


class LowRankAdamW(LowMemoryOptimizer):
    """AdamW whose `projected` param groups run Adam in a rank-r subspace of each 2-D gradient.

    With no projected group it is plain AdamW (torch's formula), which is how `optim=adamw` gets 8-bit
    states, pure-bf16 weights and the step inside backward (optim/base.py)."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        rank: int = 256,
        projector: str = "dct",
        basis: str = "dct",
        update_gap: int = 1,
        scale: float = 1.0,
        score: str = "l1",
        rotate_moments: bool = True,
        error_feedback: str = "off",
        fast_dct: str = "auto",
        zero: int = 0,
        group=None,
        **memory,
    ):
        """`memory`: LowMemoryOptimizer's state_dtype, step_in_backward, stochastic_rounding and seed."""
        projection = dict(
            rank=rank,
            projector=projector,
            basis=basis,
            update_gap=update_gap,
            scale=scale,
            score=score,
            rotate_moments=rotate_moments,
            error_feedback=error_feedback,
            fast_dct=fast_dct,
        )
        check_arguments(lr, betas, eps, weight_decay, projection, zero, memory.get("step_in_backward", False))
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, projected=False, **projection)
        super().__init__(params, defaults, group=group, **memory)
        for g in self.param_groups:
            if g["projected"] and any(p.ndim != 2 for p in g["params"]):
                raise ValueError("projected param groups must hold 2-D weights only")
        self._shard(zero, group)

    def _shard(self, zero: int, group) -> None:
        """optim.zero=1: each whole matrix's state lives on one owner rank (balanced by size)."""
        self.zero, self.group = zero, group
        self.state_is_sharded = zero == 1  # the trainer saves each rank's state_dict() in its own file
        self.shard_rank, self.shard_world = 0, 1
        if zero and dist.is_available() and dist.is_initialized():
            self.shard_rank, self.shard_world = dist.get_rank(group), dist.get_world_size(group)
        all_params = [p for g in self.param_groups for p in g["params"]]
        owners = balanced_owners([p.numel() for p in all_params], self.shard_world)
        self.owner = {p: r for p, r in zip(all_params, owners)}

    # --- the step --------------------------------------------------------------------------------
    def _owns(self, p) -> bool:
        return self.owner[p] == self.shard_rank

    def _after_step(self) -> None:
        if self.shard_world > 1:
            self._broadcast_owned()

    def _update(self, p, group, state) -> None:
        state["step"] += 1
        step = int(state["step"])
        if group["projected"]:
            self._projected_update(p, group, state, step)
        elif p.dtype == torch.float32 and self.state_dtype == "fp32":
            self._dense_update(p, group, state, step)
        else:
            self._dense_update_chunked(p, group, state, step)

    @staticmethod
    def _adam_direction(grad, exp_avg, exp_avg_sq, group, step):
        """Update the moments with `grad` in place; returns (sqrt(v_hat) + eps, lr / bias_correction1)."""
        beta1, beta2 = group["betas"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(group["eps"])
        return denom, group["lr"] / (1 - beta1**step)

    def _dense_update(self, p, group, state, step):
        """torch.optim.AdamW's single-tensor formula, term for term (fp32 weights and moments, in place)."""
        exp_avg, exp_avg_sq = self._load_moments(state, p)
        p.mul_(1 - group["lr"] * group["weight_decay"])
        denom, step_size = self._adam_direction(p.grad, exp_avg, exp_avg_sq, group, step)
        p.addcdiv_(exp_avg, denom, value=-step_size)

    def _dense_update_chunked(self, p, group, state, step):
        """The same formula in fp32 on a chunk at a time, for bf16 weights or bf16 / int8 moments."""
        generator = self._generator(p, state)
        flat_p, flat_g = p.view(-1), p.grad.reshape(-1)
        for lo, hi in self.chunks(p.numel()):
            w, g = flat_p[lo:hi].float(), flat_g[lo:hi].float()
            exp_avg, exp_avg_sq = self._load_moments(state, p, lo, hi)
            w.mul_(1 - group["lr"] * group["weight_decay"])
            denom, step_size = self._adam_direction(g, exp_avg, exp_avg_sq, group, step)
            w.addcdiv_(exp_avg, denom, value=-step_size)
            self._store_moments(state, exp_avg, exp_avg_sq, lo, hi)
            self._write_back(flat_p[lo:hi], w, generator)

    def _projected_update(self, p, group, state, step):
        grad = p.grad if p.grad.dtype == torch.float32 else p.grad.float()
        tall = p.shape[0] >= p.shape[1]
        size = min(p.shape)
        rank = min(group["rank"], size)
        if group["error_feedback"] != "off" and ("ef" in state or "ef_q" in state):
            grad = grad + self._residual(state)
        refresh = (step - 1) % group["update_gap"] == 0 or ("idx" not in state and "proj" not in state)
        project = self._dct_project if group["projector"] == "dct" else self._svd_project
        low, pt, rotate = project(grad, group, state, rank, size, tall, refresh, p.dtype)  # P^T kept as GaLore keeps it
        if group["error_feedback"] != "off":
            self._store_residual(state, grad - self._backproject(low, pt, tall), group["error_feedback"])
        del grad
        rotate = rotate if self._has_moments(state) and group["rotate_moments"] else None
        exp_avg, exp_avg_sq = self._load_moments(state, low)
        if rotate is not None:
            exp_avg, exp_avg_sq = rotate[0](exp_avg), rotate[1](exp_avg_sq)
        denom, step_size = self._adam_direction(low, exp_avg, exp_avg_sq, group, step)
        direction = exp_avg / denom
        self._store_moments(state, exp_avg, exp_avg_sq)
        w = p if p.dtype == torch.float32 else p.float()
        if group["weight_decay"]:  # skipping the full-size pass when 0 changes no bit
            w.mul_(1 - group["lr"] * group["weight_decay"])
        if tall:  # m x r times r x n
            w.addmm_(direction, pt, alpha=-step_size * group["scale"])
        else:  # m x r times r x n, P^T is r x m
            w.addmm_(pt.T, direction, alpha=-step_size * group["scale"])
        if w is not p:
            self._write_back(p, w, self._generator(p, state))

    @staticmethod
    def _backproject(low, pt, tall):
        return low @ pt if tall else pt.T @ low

    def _dct_project(self, grad, group, state, rank, size, tall, refresh, store_dtype=None):
        c = proj.basis(group["basis"], size, grad.device)
        if refresh:
            fft = group["basis"] == "dct" and proj.use_fft(group["fast_dct"], size, grad.device)
            s = proj.full_transform(grad, c, fft)
            idx = proj.top_indices(s, rank, group["score"], tall)
            low = s[:, idx.long()] if tall else s[idx.long()]
            rotate = None
            if "idx" in state:  # moments follow their basis vectors
                new_slots, old_slots = proj.match_slots(state["idx"], idx, size)
                by_index = lambda t: proj.rotate_by_index(t, new_slots, old_slots, tall)  # noqa: E731
                rotate = (by_index, by_index)
            state["idx"] = idx
            return low, c.index_select(0, idx), rotate
        pt = c.index_select(0, state["idx"])  # r x s: the selected basis vectors
        return (grad @ pt.T if tall else pt @ grad), pt, None

    def _svd_project(self, grad, group, state, rank, size, tall, refresh, store_dtype=torch.float32):
        rotate = None
        previous = state["proj"].float() if "proj" in state else None  # held in the weight's dtype, used in fp32
        if refresh:
            pt = proj.svd_projection(grad, rank, None if previous is None else previous.T).T.contiguous().to(grad.dtype)
            if previous is not None:
                rot = previous @ pt.T  # P_prev^T P_new, r x r
                sq = rot.square()  # keeps v non-negative; exact when rot is a permutation
                rotate = (
                    (lambda t: t @ rot) if tall else (lambda t: rot.T @ t),
                    (lambda t: t @ sq) if tall else (lambda t: sq.T @ t),
                )
            state["proj"] = pt.to(store_dtype)
        else:
            pt = previous
        return (grad @ pt.T if tall else pt @ grad), pt, rotate

    # --- error feedback ------------------------------------------------------------------------
    @staticmethod
    def _residual(state):
        if "ef" in state:
            return state["ef"]
        return state["ef_q"].float() * state["ef_scale"]

    @staticmethod
    def _store_residual(state, residual, mode):
        if mode == "fp32":
            state["ef"] = residual.float()
            return
        scale = residual.abs().amax(dim=1, keepdim=True).float() / 127.0  # per row, 255 levels
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        state["ef_q"] = torch.round(residual / scale).clamp_(-127, 127).to(torch.int8)
        state["ef_scale"] = scale

    # --- whole-matrix sharding -----------------------------------------------------------------
    def _broadcast_owned(self):
        """Every owner sends its freshly updated weights; one flat broadcast per (owner, dtype)."""
        buckets: dict[tuple, list[torch.Tensor]] = {}
        for group in self.param_groups:
            for p in group["params"]:
                buckets.setdefault((self.owner[p], p.dtype), []).append(p.data)
        for (src, _), tensors in sorted(buckets.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
            flat = _flatten_dense_tensors(tensors)
            src_global = src if self.group is None else dist.get_global_rank(self.group, src)
            dist.broadcast(flat, src=src_global, group=self.group)
            if src != self.shard_rank:
                for t, new in zip(tensors, _unflatten_dense_tensors(flat, tensors)):
                    t.copy_(new)
