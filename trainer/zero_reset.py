"""Resetting Adam's state for some parameters inside DeepSpeed's ZeRO-1/2 flat partitions (engine internals:
only trainer/engine.py uses this module).

"Reset" means the same at every ZeRO stage: fresh moments and a fresh step count for those parameters, as
at ZeRO-0, where the parameter's state is dropped and AdamW starts it again. ZeRO-1/2 hand the client AdamW
one flat fp32 partition per param group with one shared `step`, so zeroing a slice of exp_avg / exp_avg_sq is
not enough: the slice's bias correction would keep using the partition's count t. After a reset the moments
hold k = t - t_reset updates, and dividing by 1 - beta^t instead of 1 - beta^k makes the first update
(1 - beta1) / sqrt(1 - beta2) ~ 3x too large (betas 0.9, 0.999).

Design: remember, per reset parameter (by name, so the record survives a resume on another world size), the
partition's step at its reset. Around every client step a pre-hook copies the reset slices' values, and a
post-hook recomputes each slice's update from that copy and the new moments (which do not depend on the step
count) with the slice's own count k, in exactly torch's single-tensor AdamW arithmetic:

    p = p_before * (1 - lr * wd)   (decoupled decay)
    p = p - lr / (1 - beta1^k) * m / (sqrt(v) / sqrt(1 - beta2^k) + eps)

Cost: a copy of the reset parameters' slices per step; no per-element tensor for the whole partition.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def partition_slices(zero_opt, params: list[nn.Parameter]):
    """(fp32 partition, lo, hi, param) for each piece of `params` in this rank's partitions; lo:hi indexes the
    partition. Each model parameter is a view into its group's flat buffer, so its offset is a pointer difference."""
    wanted = {id(p) for p in params}
    for i, flat in enumerate(zero_opt.bit16_groups_flat):
        fp32 = zero_opt.single_partition_of_fp32_groups[i]
        part = zero_opt.parallel_partitioned_bit16_groups[i][dist.get_rank(group=zero_opt.real_dp_process_group[i])]
        size = flat.element_size()
        start = (part.data_ptr() - flat.data_ptr()) // size
        for p in zero_opt.bit16_groups[i]:
            if id(p) not in wanted:
                continue
            offset = (p.data_ptr() - flat.data_ptr()) // size
            lo, hi = max(offset, start), min(offset + p.numel(), start + part.numel())
            if lo < hi:
                yield fp32, lo - start, hi - start, p


def _check_adam(optimizer: torch.optim.Optimizer) -> None:
    group = optimizer.param_groups[0]
    if not isinstance(optimizer, torch.optim.Adam) or group.get("amsgrad") or group.get("maximize"):
        raise ValueError(
            "resetting optimizer state at train.zero_stage=1/2 needs optim=adamw (torch AdamW without "
            "amsgrad); use train.zero_stage=0 for this optimizer"
        )


class ZeroResetSteps:
    """Per-parameter Adam step counts on top of a ZeRO-1/2 partition's shared one (see the module docstring)."""

    def __init__(self, engine, optimizer: torch.optim.Optimizer):
        self.engine, self.optimizer = engine, optimizer
        self.reset_at: dict[str, int] = {}  # parameter name -> the partition's step when it was reset
        self.saved: dict[tuple, torch.Tensor] = {}
        self.hooks = None

    def reset(self, params: list[nn.Parameter]) -> None:
        """Zero the moments of these parameters' slices and start their step counts again."""
        _check_adam(self.optimizer)
        steps = [float(s["step"]) for s in self.optimizer.state.values() if "step" in s]
        if not steps:
            return  # no step taken yet: nothing to forget, and the shared count is every parameter's own
        # Every rank records every parameter (not only those in its partitions): the record is saved once, by rank 0.
        names = {id(p): n for n, p in self.engine.module.named_parameters()}
        self.reset_at.update({names[id(p)]: int(steps[0]) for p in params})
        for fp32, lo, hi, _ in partition_slices(self.engine.optimizer, params):
            self.optimizer.state[fp32]["exp_avg"][lo:hi].zero_()
            self.optimizer.state[fp32]["exp_avg_sq"][lo:hi].zero_()
        self._ensure_hooks()

    def state_dict(self) -> dict:
        return {"reset_at": dict(self.reset_at)}

    def load_state_dict(self, state: dict) -> None:
        self.reset_at = dict(state.get("reset_at", {}))
        if self.reset_at:
            self._ensure_hooks()

    def _ensure_hooks(self) -> None:
        if self.hooks is None:
            self.hooks = (
                self.optimizer.register_step_pre_hook(self._before_step),
                self.optimizer.register_step_post_hook(self._after_step),
            )

    def _slices_in_step(self):
        """The reset slices in the partitions this client step updates (DeepSpeed steps one group at a time)."""
        stepping = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        params = dict(self.engine.module.named_parameters())
        reset = [params[name] for name in self.reset_at]
        names = {id(p): n for n, p in params.items()}
        for fp32, lo, hi, p in partition_slices(self.engine.optimizer, reset):
            if id(fp32) in stepping:
                yield fp32, lo, hi, names[id(p)]

    @torch.no_grad()
    def _before_step(self, optimizer, args, kwargs) -> None:
        self.saved = {(id(fp32), lo, hi): fp32[lo:hi].clone() for fp32, lo, hi, _ in self._slices_in_step()}

    @torch.no_grad()
    def _after_step(self, optimizer, args, kwargs) -> None:
        group = next(g for g in optimizer.param_groups if g["params"])
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        decoupled = group.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW))
        for fp32, lo, hi, name in self._slices_in_step():
            state = optimizer.state[fp32]
            k = float(state["step"]) - self.reset_at[name]  # this parameter's own step count, 1 after its reset
            p = fp32[lo:hi]
            p.copy_(self.saved[(id(fp32), lo, hi)])
            if wd != 0 and decoupled:
                p.mul_(1 - lr * wd)
            bias_correction2_sqrt = (1 - beta2**k) ** 0.5
            denom = (state["exp_avg_sq"][lo:hi].sqrt() / bias_correction2_sqrt).add_(eps)
            p.addcdiv_(state["exp_avg"][lo:hi], denom, value=-(lr / (1 - beta1**k)))
        self.saved = {}
