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


def balanced_owners(sizes: list[int], world_size: int) -> list[int]:
    """Owner rank of each tensor: largest first onto the least loaded rank (ties: lowest index, lowest rank)."""
    load = [0] * world_size
    owners = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        owners[i] = min(range(world_size), key=lambda r: (load[r], r))
        load[owners[i]] += sizes[i]
    return owners


class LowRankAdamW(torch.optim.Optimizer):
    """AdamW whose `projected` param groups run Adam in a rank-r subspace of each 2-D gradient."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0, *,
                 rank: int = 256, projector: str = "dct", basis: str = "dct", update_gap: int = 1, scale: float = 1.0,
                 score: str = "l1", rotate_moments: bool = True, error_feedback: str = "off", fast_dct: str = "auto",
                 zero: int = 0, group=None):
        if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid AdamW hyperparameters lr={lr} betas={betas} eps={eps} weight_decay={weight_decay}")
        if projector not in ("dct", "svd") or score not in ("l1", "l2") or error_feedback not in ("off", "fp32", "int8"):
            raise ValueError(f"invalid projector={projector!r} score={score!r} error_feedback={error_feedback!r}")
        if rank < 1 or update_gap < 1 or basis not in proj.BASES or zero not in (0, 1):
            raise ValueError(f"invalid rank={rank} update_gap={update_gap} basis={basis!r} zero={zero}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, projected=False, rank=rank,
                        projector=projector, basis=basis, update_gap=update_gap, scale=scale, score=score,
                        rotate_moments=rotate_moments, error_feedback=error_feedback, fast_dct=fast_dct)
        super().__init__(params, defaults)
        for g in self.param_groups:
            if g["projected"] and any(p.ndim != 2 for p in g["params"]):
                raise ValueError("projected param groups must hold 2-D weights only")
        self.zero, self.group = zero, group
        self.state_is_sharded = zero == 1  # the trainer saves each rank's state_dict() in its own file
        self.shard_rank, self.shard_world = 0, 1
        if zero and dist.is_available() and dist.is_initialized():
            self.shard_rank, self.shard_world = dist.get_rank(group), dist.get_world_size(group)
        all_params = [p for g in self.param_groups for p in g["params"]]
        owners = balanced_owners([p.numel() for p in all_params], self.shard_world)
        self.owner = {p: r for p, r in zip(all_params, owners)}

    # --- the step --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or self.owner[p] != self.shard_rank:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0, dtype=torch.int64)
                if group["projected"]:
                    self._projected_update(p, group, state)
                else:
                    self._dense_update(p, group, state)
        if self.shard_world > 1:
            self._broadcast_owned()
        return loss

    @staticmethod
    def _adam_direction(grad, group, state):
        """Update the moments with `grad`; returns (m / (sqrt(v_hat) + eps), lr / bias_correction1)."""
        beta1, beta2 = group["betas"]
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
        state["step"] += 1
        step = int(state["step"])
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** step)).add_(group["eps"])
        return exp_avg, denom, group["lr"] / (1 - beta1 ** step)

    def _dense_update(self, p, group, state):
        """torch.optim.AdamW's single-tensor formula, term for term."""
        p.mul_(1 - group["lr"] * group["weight_decay"])
        exp_avg, denom, step_size = self._adam_direction(p.grad, group, state)
        p.addcdiv_(exp_avg, denom, value=-step_size)

    def _projected_update(self, p, group, state):
        grad = p.grad
        tall = p.shape[0] >= p.shape[1]
        size = min(p.shape)
        rank = min(group["rank"], size)
        if group["error_feedback"] != "off" and ("ef" in state or "ef_q" in state):
            grad = grad + self._residual(state)
        refresh = int(state["step"]) % group["update_gap"] == 0 or ("idx" not in state and "proj" not in state)
        if group["projector"] == "dct":
            low, pt = self._dct_project(grad, group, state, rank, size, tall, refresh)
        else:
            low, pt = self._svd_project(grad, group, state, rank, tall, refresh)
        if group["error_feedback"] != "off":
            self._store_residual(state, grad - self._backproject(low, pt, tall), group["error_feedback"])
        if group["weight_decay"]:  # skipping the full-size pass when 0 changes no bit
            p.mul_(1 - group["lr"] * group["weight_decay"])
        exp_avg, denom, step_size = self._adam_direction(low, group, state)
        direction = exp_avg / denom
        if tall:  # m x r times r x n
            p.addmm_(direction, pt, alpha=-step_size * group["scale"])
        else:  # m x r times r x n, P^T is r x m
            p.addmm_(pt.T, direction, alpha=-step_size * group["scale"])

    @staticmethod
    def _backproject(low, pt, tall):
        return low @ pt if tall else pt.T @ low

    def _dct_project(self, grad, group, state, rank, size, tall, refresh):
        c = proj.basis(group["basis"], size, grad.device)
        if refresh:
            fft = group["basis"] == "dct" and proj.use_fft(group["fast_dct"], size, grad.device)
            s = proj.full_transform(grad, c, fft)
            idx = proj.top_indices(s, rank, group["score"], tall)
            low = s[:, idx.long()] if tall else s[idx.long()]
            if "idx" in state and group["rotate_moments"] and "exp_avg" in state:
                new_slots, old_slots = proj.match_slots(state["idx"], idx, size)
                for key in ("exp_avg", "exp_avg_sq"):
                    state[key] = proj.rotate_by_index(state[key], new_slots, old_slots, tall)
            state["idx"] = idx
            return low, c.index_select(0, idx)
        pt = c.index_select(0, state["idx"])  # r x s: the selected basis vectors
        return (grad @ pt.T if tall else pt @ grad), pt

    def _svd_project(self, grad, group, state, rank, tall, refresh):
        if refresh:
            previous = state.get("proj")
            pt = proj.svd_projection(grad, rank, None if previous is None else previous.T).T.contiguous().to(grad.dtype)
            if previous is not None and group["rotate_moments"] and "exp_avg" in state:
                rot = previous @ pt.T  # P_prev^T P_new, r x r
                state["exp_avg"] = state["exp_avg"] @ rot if tall else rot.T @ state["exp_avg"]
                sq = rot.square()  # keeps v non-negative; exact when rot is a permutation
                state["exp_avg_sq"] = state["exp_avg_sq"] @ sq if tall else sq.T @ state["exp_avg_sq"]
            state["proj"] = pt
        pt = state["proj"]
        return (grad @ pt.T if tall else pt @ grad), pt

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

    # --- checkpoints -----------------------------------------------------------------------------
    def load_state_dict(self, state_dict):
        """torch casts every state tensor to its parameter's dtype on load; restore int32 indices / int8 residuals."""
        dtypes = {k: {name: v.dtype for name, v in s.items() if torch.is_tensor(v)} for k, s in state_dict["state"].items()}
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for key, p in zip(saved_ids, params):
            for name, dtype in dtypes.get(key, {}).items():
                self.state[p][name] = self.state[p][name].to(dtype)
