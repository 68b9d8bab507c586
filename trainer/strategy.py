"""The narrow interface between the trainer and the memory-saving methods.

Three kinds, each picked by a Hydra group and built through `trainer.registry`:

- `ParamStrategy` (`param=`): converts the model in place (weights held differently),
  gets a hook at every step boundary, and owns state that must survive a resume.
- optimizer factory (`optim=`): `factory(cfg, model, ctx) -> torch.optim.Optimizer`, an
  optimizer in the torch.optim layout whose `state` holds tensors only.
  An optimizer may step inside backward (`optim.step_in_backward=true`): it then has
  `steps_in_backward = True`, the trainer calls `optimizer.prepare_backward(boundary)` before every
  backward pass (`boundary`: the step's last micro-batch), each parameter is updated in its gradient hook
  at the boundary and its gradient freed at once, and `optimizer.step()` does nothing.
  An optimizer that shards its own state across the data-parallel ranks (each rank keeps the state of
  the parameters it owns: `optim.zero=1`) sets `state_is_sharded = True`: every rank's `state_dict()` is
  then saved in that rank's own checkpoint file, and DeepSpeed's copy of the optimizer state (rank 0's
  alone) is neither saved for it nor loaded. `steps_in_backward()` and `shards_own_state()` below read
  these two declarations, with their defaults for an optimizer that has neither.
- `Aggregator` (`agg=`): combines the data-parallel workers' gradients. `mean` keeps
  DeepSpeed's own all-reduce; any other aggregator gets the local gradients instead.

Strategies never import DeepSpeed: what they may do to the engine is in `EngineOps`. A strategy's config
dataclass may refuse a run at start-up (trainer/validate.py calls each where it exists): `check(cfg)` for
combinations with other settings, `check_world(world_size)` for the number of processes, and
`needs_zero_stage_0()` returning a `NeedsZeroStage0` (or None) for what ZeRO-1/2 would break.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn


@dataclass
class BuildContext:
    """What a strategy may know about the run when it is built."""

    model_size: str
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    group: Any = None  # the data-parallel torch.distributed process group (None: default group)


@dataclass(frozen=True)
class NeedsZeroStage0:
    """A strategy setting that DeepSpeed's ZeRO-1/2 break, declared by the config's `needs_zero_stage_0()`;
    trainer/validate.py words the one refusal: `<setting> needs <what>, but train.zero_stage=<z> <why>; use
    train.zero_stage=0<fix>`."""

    setting: str  # what needs it, as the user would write it: "agg=flag", "optim.state_dtype=int8"
    why: str  # what ZeRO-1/2 do that breaks it, as a verb phrase: "hands the optimizer flat fp32 partitions"
    fix: str = ""  # the other way out, after "use train.zero_stage=0": " or agg=mean"
    what: str = "train.zero_stage=0"  # what the setting needs, where that says more ("whole matrices")


class EngineOps(Protocol):
    """What a strategy's step hook may ask of the engine (implemented in trainer/engine.py)."""

    optimizer: torch.optim.Optimizer  # the client optimizer (torch.optim layout)

    def reset_optimizer_state(self, params: list[nn.Parameter]) -> None:
        """Forget the optimizer state (moments, step count) of these parameters."""

    def params_changed(self, params: list[nn.Parameter]) -> None:
        """Tell the engine these parameters' values were changed outside the optimizer."""


class ParamStrategy:
    """How weights are held. `full` leaves the model as it is."""

    def convert(self, model: nn.Module) -> None:
        """Replace the targeted layers in place."""

    def on_step_end(self, step: int, ops: EngineOps) -> None:
        """Called after optimizer step `step` (1-based) on every rank, before logging."""

    def lr_factor(self, step: int) -> float:
        """A multiplier on the scheduled learning rate for step `step` (e.g. a re-warm)."""
        return 1.0

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def export_dense(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The weights as a plain LLaMA state dict (each converted layer merged back)."""
        return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Aggregator:
    """Combines workers' gradients. Robust aggregators replace DeepSpeed's all-reduce."""

    uses_engine_allreduce: bool = False

    def aggregate(self, grads: list[torch.Tensor], step: int) -> dict[str, float]:
        """Replace each local gradient in place by the aggregate of all workers'.

        Called once per optimizer step on every rank, after the accumulated
        backward passes. Returns metrics to log (e.g. each worker's weight).
        """
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def steps_in_backward(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer updates each weight in its gradient hook (the module docstring's contract)."""
    return bool(getattr(optimizer, "steps_in_backward", False))


def shards_own_state(optimizer: torch.optim.Optimizer) -> bool:
    """Whether each rank holds only its own share of the optimizer state (the module docstring's contract)."""
    return bool(getattr(optimizer, "state_is_sharded", False))
