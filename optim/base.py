"""What the project's optimizers share besides their update formula: how state and weights are held.

- **Moments** (`optim.state_dtype`): `fp32` is held as is and updated in place (torch's AdamW, bit for bit);
  `bf16` holds each moment in bf16; `int8` holds 1 byte per value (blockwise absmax over 8-bit Adam's
  dynamic map, optim/lowbit.py) plus one fp32 absmax per 256 values. Non-fp32 moments are dequantised to
  fp32 for the update and stored back, a chunk of `CHUNK` values at a time, so no full-size fp32 copy of a
  large tensor (the embedding) ever exists.
- **Low-precision weights** (`train.precision=pure_bf16`): the update is computed in fp32 and written back
  with stochastic rounding (`optim.stochastic_rounding`, default on): a bf16 weight near 1 cannot take a
  step below 2^-8 with round-to-nearest, so small updates would vanish. The random bits are seeded by
  (seed, parameter index, step): a resumed run draws the same bits.
- **Step inside backward** (`optim.step_in_backward`): each parameter is updated in its
  post-accumulate-grad hook at the accumulation boundary, and its gradient is freed right there, so no
  full-model gradient exists (GaLore's per-layer update). Unlike GaLore's reference code, micro-batches
  before the boundary only accumulate (GaLore issue #78), and with several data-parallel processes each
  gradient is averaged across them inside its hook, before its update. `step()` then does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from optim import lowbit
from trainer.seeding import mix_seed
from trainer.strategy import NeedsZeroStage0

STATE_DTYPES = ("fp32", "bf16", "int8")
CHUNK = 1 << 22  # values per chunk of a dequantised / upcast update (a multiple of lowbit.BLOCK)
MOMENTS = ("exp_avg", "exp_avg_sq")


@dataclass
class LowMemoryConfig:
    """Fields every optimizer built on LowMemoryOptimizer takes (the optim config dataclasses inherit them)."""

    state_dtype: str = "fp32"
    """fp32 | bf16 | int8: how Adam's two moments are held (int8: blockwise, 8-bit Adam's dynamic map)."""
    step_in_backward: bool = False
    """Update each parameter in its gradient hook and free the gradient at once: no full-model gradient."""
    stochastic_rounding: bool = True
    """With train.precision=pure_bf16, write each update into the bf16 weight with stochastic rounding."""

    def __post_init__(self):
        if self.state_dtype not in STATE_DTYPES:
            raise ValueError(f"optim.state_dtype={self.state_dtype!r} is not one of {', '.join(STATE_DTYPES)}")

    def needs_zero_stage_0(self) -> NeedsZeroStage0 | None:
        """What ZeRO-1/2 would break (trainer/validate.py refuses it): moments not in fp32, a step in backward."""
        if self.state_dtype != "fp32":
            return NeedsZeroStage0(f"optim.state_dtype={self.state_dtype}", "hands the optimizer flat fp32 partitions")
        if self.step_in_backward:
            return NeedsZeroStage0(
                "optim.step_in_backward=true",
                "reduces and steps partitions after backward",
                fix=" or optim.step_in_backward=false",
            )
        return None

    def check_low_memory(self, cfg) -> None:
        """The combinations a step inside backward cannot serve, each refused in one line (ZeRO-1/2: above)."""
        from trainer.registry import config_name

        if not self.step_in_backward:
            return
        if cfg.train.grad_clip > 0:
            raise ValueError(
                "optim.step_in_backward=true updates each weight before the global gradient norm is known, "
                "so it cannot clip; set train.grad_clip=0 or optim.step_in_backward=false"
            )
        if config_name(cfg.agg) != "mean" or cfg.faults.byzantine_ranks:
            raise ValueError(
                f"optim.step_in_backward=true averages each gradient inside backward, but agg="
                f"{config_name(cfg.agg)} (or fault injection) needs every worker's whole gradient; "
                f"use agg=mean or optim.step_in_backward=false"
            )


class LowMemoryOptimizer(torch.optim.Optimizer):
    """A torch.optim.Optimizer whose subclass implements `_update(p, group, state)` for one parameter."""

    def __init__(
        self,
        params,
        defaults: dict,
        *,
        state_dtype: str = "fp32",
        step_in_backward: bool = False,
        stochastic_rounding: bool = True,
        seed: int = 0,
        group=None,
    ):
        if state_dtype not in STATE_DTYPES:
            raise ValueError(f"optim.state_dtype={state_dtype!r} is not one of {', '.join(STATE_DTYPES)}")
        super().__init__(params, defaults)
        self.state_dtype, self.stochastic_rounding, self.seed = state_dtype, stochastic_rounding, seed
        self.steps_in_backward, self.dp_group = step_in_backward, group
        params = [p for g in self.param_groups for p in g["params"]]
        self._index = {p: i for i, p in enumerate(params)}
        # group *positions*: load_state_dict replaces the group dicts, and the hook must see the live lr
        self._group_index = {p: i for i, g in enumerate(self.param_groups) for p in g["params"]}
        self._boundary, self._grad_sq = True, []
        if step_in_backward:
            for p in params:
                p.register_post_accumulate_grad_hook(self._hook)

    # --- stepping ----------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.steps_in_backward:
            return loss  # every parameter was updated in its gradient hook
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and self._owns(p):
                    self._step_param(p, group)
        self._after_step()
        return loss

    def _step_param(self, p, group) -> None:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0, dtype=torch.int64)
        # The update's arithmetic is fp32 whatever autocast region the step (or a backward hook) runs inside.
        with torch.autocast(p.device.type, enabled=False):
            self._update(p, group, state)

    def _update(self, p, group, state) -> None:
        raise NotImplementedError

    def _owns(self, p) -> bool:
        return True

    def _after_step(self) -> None:
        pass

    # --- step inside backward -------------------------------------------------------------------------
    def prepare_backward(self, boundary: bool) -> None:
        """Called before each backward pass; `boundary`: the step's last micro-batch, whose hooks update."""
        self._boundary = boundary
        if boundary:
            self._grad_sq = []

    @property
    def last_grad_norm(self) -> float | None:
        """The global norm of the gradients the hooks stepped with (after the data-parallel average)."""
        if not self._grad_sq:
            return None
        return float(torch.stack(self._grad_sq).sum().sqrt())

    @torch.no_grad()
    def _hook(self, p: torch.Tensor) -> None:
        if not self._boundary:
            return  # accumulate only: the update happens once, at the boundary
        if dist.is_initialized() and dist.get_world_size(self.dp_group) > 1:
            dist.all_reduce(p.grad, group=self.dp_group)
            p.grad.div_(dist.get_world_size(self.dp_group))
        self._grad_sq.append(torch.linalg.vector_norm(p.grad).float().square())
        self._step_param(p, self.param_groups[self._group_index[p]])
        p.grad = None  # freed now: no full-model gradient ever exists

    # --- moments ----------------------------------------------------------------------------------------
    def _init_moments(self, state, like: torch.Tensor) -> None:
        if self.state_dtype == "int8":  # what quantising zeros gives, without a full-size fp32 zero tensor
            blocks = -(-like.numel() // lowbit.BLOCK)
            for key, signed in (("exp_avg", True), ("exp_avg_sq", False)):
                state[f"{key}_q"] = torch.full(
                    like.shape, lowbit.zero_code(signed), dtype=torch.uint8, device=like.device
                )
                state[f"{key}_absmax"] = torch.zeros(blocks, dtype=torch.float32, device=like.device)
            return
        dtype = torch.float32 if self.state_dtype == "fp32" else torch.bfloat16
        for key in MOMENTS:
            state[key] = torch.zeros_like(like, dtype=dtype, memory_format=torch.preserve_format)

    def _has_moments(self, state) -> bool:
        return "exp_avg" in state or "exp_avg_q" in state

    def _load_moments(self, state, like: torch.Tensor, lo: int = 0, hi: int | None = None):
        """fp32 moments of the flat range [lo, hi) (the whole tensor by default), to update in place."""
        if not self._has_moments(state):
            self._init_moments(state, like)
        if self.state_dtype == "int8":
            return tuple(
                self._dequantize(state, key, signed, like.shape, lo, hi)
                for key, signed in (("exp_avg", True), ("exp_avg_sq", False))
            )
        moments = [state[key] if hi is None else state[key].view(-1)[lo:hi] for key in MOMENTS]
        return tuple(m if self.state_dtype == "fp32" else m.float() for m in moments)

    def _dequantize(self, state, key, signed, shape, lo, hi):
        codes, absmax = state[f"{key}_q"], state[f"{key}_absmax"]
        if hi is None:
            return lowbit.dequantize_blockwise(codes, absmax, signed)
        block = lowbit.BLOCK
        return lowbit.dequantize_blockwise(codes.view(-1)[lo:hi], absmax[lo // block : -(-hi // block)], signed)

    def _store_moments(self, state, m: torch.Tensor, v: torch.Tensor, lo: int = 0, hi: int | None = None) -> None:
        if self.state_dtype == "fp32":
            if hi is None and (m is not state["exp_avg"]):  # replaced (e.g. rotated), not updated in place
                state["exp_avg"], state["exp_avg_sq"] = m, v
            return
        if self.state_dtype == "bf16":
            for key, value in zip(MOMENTS, (m, v)):
                if hi is None:
                    state[key] = value.to(torch.bfloat16)
                else:
                    state[key].view(-1)[lo:hi].copy_(value.view(-1))
            return
        for key, signed, value in (("exp_avg", True, m), ("exp_avg_sq", False, v)):
            codes, absmax = lowbit.quantize_blockwise(value, signed)
            if hi is None:
                state[f"{key}_q"], state[f"{key}_absmax"] = codes, absmax
            else:
                state[f"{key}_q"].view(-1)[lo:hi].copy_(codes.view(-1))
                state[f"{key}_absmax"][lo // lowbit.BLOCK : -(-hi // lowbit.BLOCK)].copy_(absmax)

    # --- weights -----------------------------------------------------------------------------------------
    def _generator(self, p, state) -> torch.Generator | None:
        if p.dtype == torch.float32 or not self.stochastic_rounding:
            return None
        seed = mix_seed(self.seed, self._index[p], int(state["step"]), bits=63)
        return lowbit.generator_for(seed, p.device)

    @staticmethod
    def _write_back(target: torch.Tensor, value: torch.Tensor, generator) -> None:
        if generator is None:
            target.copy_(value)
        else:
            lowbit.copy_stochastic_(target, value, generator)

    def chunks(self, numel: int):
        for lo in range(0, numel, CHUNK):
            yield lo, min(numel, lo + CHUNK)

    # --- checkpoints -------------------------------------------------------------------------------------
    def load_state_dict(self, state_dict):
        """torch casts floating state to each parameter's dtype on load (fp32 moments of a bf16 weight would lose
        bits, int8 codes would become floats); put back every saved tensor as it was saved, on the parameter's
        device."""
        saved = {k: {name: v for name, v in s.items() if torch.is_tensor(v)} for k, s in state_dict["state"].items()}
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for key, p in zip(saved_ids, params):
            for name, value in saved.get(key, {}).items():
                self.state[p][name] = value if name == "step" else value.to(p.device)
