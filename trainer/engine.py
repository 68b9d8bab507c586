"""The DeepSpeed engine, and the one training step it owns.

This module and trainer/dist.py (the process group and its collectives) are the only ones in `trainer/` that
touch DeepSpeed or torch.distributed; trainer/zero_reset.py reaches into ZeRO's partitions for `Ops` alone.
Everything else gets plain tensors, a process group, or the small `Ops` object below. The loop asks
`Engine.step` for one optimizer step and gets its metrics back: it knows neither ZeRO stages nor when
DeepSpeed wants `step()` called.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import deepspeed
import torch
from torch import nn

from trainer import dist, manifest, precision
from trainer.config import TrainConfig
from trainer.strategy import Aggregator, shards_own_state, steps_in_backward
from trainer.zero_reset import ZeroResetSteps


def deepspeed_config(train: TrainConfig, world_size: int, autocast: bool) -> dict:
    return {
        "train_batch_size": train.global_batch_size,
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.global_batch_size // (train.micro_batch_size * world_size),
        "zero_optimization": {"stage": train.zero_stage},
        "gradient_clipping": train.grad_clip,
        # amp_bf16: weights and optimizer stay fp32, matmuls run in bf16 under autocast. pure_bf16: the model
        # arrives in bf16 and DeepSpeed leaves it so. DeepSpeed's own bf16 mode is never used: it flattens
        # parameters into fp32 master partitions, which shape-aware optimizers cannot use.
        "torch_autocast": {"enabled": autocast, "dtype": "bfloat16"},
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }


@dataclass
class Ops:
    """What a strategy's step hook may ask of the engine (trainer.strategy.EngineOps)."""

    engine: deepspeed.DeepSpeedEngine
    optimizer: torch.optim.Optimizer  # the client optimizer
    zero_steps: ZeroResetSteps | None = None

    def reset_optimizer_state(self, params: list[nn.Parameter]) -> None:
        """Fresh moments and a fresh step count for these parameters, at every ZeRO stage."""
        if self.engine.zero_optimization_stage() == 0:
            for p in params:
                self.optimizer.state.pop(p, None)  # AdamW starts the parameter's state (and step) again
            return
        self._zero_steps().reset(params)

    def _zero_steps(self) -> ZeroResetSteps:
        if self.zero_steps is None:
            self.zero_steps = ZeroResetSteps(self.engine, self.optimizer)
        return self.zero_steps

    def state_dict(self) -> dict:
        return self.zero_steps.state_dict() if self.zero_steps is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if state and self.engine.zero_optimization_stage() > 0:
            self._zero_steps().load_state_dict(state)

    def params_changed(self, params: list[nn.Parameter]) -> None:
        zero_opt = self.engine.optimizer
        if self.engine.zero_optimization_stage() > 0:
            # ZeRO-1/2 keep fp32 master partitions; copy the edited model weights into them.
            zero_opt._restore_from_bit16_weights()


class HashingCheckpointEngine:
    """DeepSpeed's torch checkpoint engine, writing each file through manifest.save_object, so the rank
    that writes a file hashes it as it goes. Other engines (decoupled, Nebula) are left alone: rank 0
    then hashes their files when it seals the checkpoint."""

    def __init__(self, inner):
        self.inner, self.written = inner, {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def save(self, state_dict, path: str):
        if type(self.inner).__name__ != "TorchCheckpointEngine":
            return self.inner.save(state_dict, path)
        self.written[path] = manifest.save_object(state_dict, path, zipfile=self.inner.zipfile_serialization)


# --- the three ways the optimizer steps: each says when the gradient norm can be read -------------------
class NormBeforeStep:
    """ZeRO-0: the client optimizer steps on whole gradients in the model's .grad (averaged by DeepSpeed's
    all-reduce, or replaced by the aggregator's result). Read the norm before step(): DeepSpeed zeroes the
    gradients as soon as the optimizer has stepped."""

    def before(self, engine: Engine) -> float | None:
        grads = engine.local_grads()
        return float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads]))) if grads else 0.0

    def after(self, engine: Engine, before: float | None) -> float | None:
        return before


class NormAfterStep:
    """ZeRO-1/2: DeepSpeed reduces the gradients into flat per-rank partitions (the model's .grad never holds
    the whole average) and its ZeRO optimizer computes their global norm inside step(): read it after."""

    def before(self, engine: Engine) -> float | None:
        return None

    def after(self, engine: Engine, before: float | None) -> float | None:
        norm = engine.ds.get_global_grad_norm()
        return None if norm is None else float(norm)


class NormInBackward:
    """Step in backward (trainer/strategy.py): the last backward updated each weight in its gradient hook and
    freed the gradient at once, so none is left to measure; the optimizer summed the norm as it went."""

    def before(self, engine: Engine) -> float | None:
        return None

    def after(self, engine: Engine, before: float | None) -> float | None:
        return engine.client_optimizer.last_grad_norm


class Engine:
    """A DeepSpeed engine that takes one optimizer step's micro-batches: accumulation, the aggregator, the
    gradient norm and the optimizer step, whichever way the optimizer steps."""

    steps_in_backward = False  # the optimizer updates each weight in its gradient hook (optim/base.py)
    accumulation = 1  # micro-batches per optimizer step

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        aggregator: Aggregator,
        train: TrainConfig,
        world_size: int,
        device: torch.device,
    ):
        self.precision = precision.resolve(train.precision, device.type)
        self.autocast = precision.autocast_dtype(self.precision)
        self.client_optimizer, self.aggregator = optimizer, aggregator
        self.steps_in_backward = steps_in_backward(optimizer)
        self.accumulation = train.global_batch_size // (train.micro_batch_size * world_size)
        self.world_size, self.device = world_size, device
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.ds, _, _, _ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            config=deepspeed_config(train, world_size, self.autocast is not None),
            dist_init_required=False,
        )
        if not aggregator.uses_engine_allreduce:
            if self.ds.zero_optimization_stage() > 0:
                raise ValueError("a robust agg needs train.zero_stage=0: ZeRO-1/2 reduce gradients inside backward")
            self.ds.enable_backward_allreduce = False  # the aggregator combines the ranks' gradients instead
        if self.steps_in_backward:
            self.ds.enable_backward_allreduce = False  # each gradient is averaged in its own hook, before its update
        self.norm = (
            NormInBackward()
            if self.steps_in_backward
            else (NormBeforeStep() if self.ds.zero_optimization_stage() == 0 else NormAfterStep())
        )
        self.ops = Ops(self.ds, optimizer)

    @property
    def module(self) -> nn.Module:
        return self.ds.module

    def set_lr_factor(self, factor: float) -> float:
        for group in self.client_optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return self.client_optimizer.param_groups[0]["lr"]

    def step(self, step: int, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
        """Optimizer step `step` (0-based) over this rank's micro-batches; returns its metrics: the loss (the
        mean over ranks), the gradient norm and the aggregator's own."""
        losses, extra, norm = [], {}, None
        for i, (inputs, targets) in enumerate(micro_batches):
            losses.append(self.forward_backward(inputs, targets))
            if i == len(micro_batches) - 1:  # the gradients are accumulated: combine and measure them
                extra = self.maybe_aggregate(step)
                norm = self.norm.before(self)
            # DeepSpeed's rule: step() after every micro-batch. It counts them and steps the optimizer (then
            # zeroes the gradients) only at the accumulation boundary; in between it returns at once.
            self.ds.step()
        norm = self.norm.after(self, norm)
        loss = dist.all_reduce_sum([float(torch.stack(losses).mean())])[0] / self.world_size
        return {"train/loss": loss, "train/grad_norm": norm, **extra}

    def forward_backward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.steps_in_backward:  # the hooks of the step's last backward update the weights
            self.client_optimizer.prepare_backward(self.ds.is_gradient_accumulation_boundary())
        logits = self.ds(inputs.to(self.device))
        loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.to(self.device).flatten())
        self.ds.backward(loss)
        return loss.detach()

    def maybe_aggregate(self, step: int) -> dict:
        if self.aggregator.uses_engine_allreduce:
            return {}  # DeepSpeed averaged the gradients inside backward
        return self.aggregator.aggregate(self.local_grads(), step)

    def local_grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.module.parameters() if p.grad is not None]

    @torch.no_grad()
    def eval_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
        """Summed token loss and token count for one held-out batch."""
        self.ds.eval()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast is not None):
            logits = self.module(inputs.to(self.device))
        loss = nn.functional.cross_entropy(
            logits.float().flatten(0, 1), targets.to(self.device).flatten(), reduction="sum"
        )
        self.ds.train()
        return float(loss), targets.numel()

    # --- checkpoints (trainer/checkpoint.py's Checkpointer decides where and when) ----------------
    def save(self, directory: str, tag: str) -> dict[str, dict]:
        """Write this rank's part of the engine state into `directory`/`tag`; returns the manifest entries
        (path relative to `directory` -> size and hashes) of the files this rank wrote, hashed while writing."""
        if not isinstance(self.ds.checkpoint_engine, HashingCheckpointEngine):
            self.ds.checkpoint_engine = HashingCheckpointEngine(self.ds.checkpoint_engine)
        self.ds.checkpoint_engine.written = {}
        client_state = {"ops": self.ops.state_dict()}  # per-parameter reset steps (ZeRO-1/2)
        self.ds.save_checkpoint(directory, tag=tag, client_state=client_state, save_latest=False)
        return {os.path.relpath(path, directory): entry for path, entry in self.ds.checkpoint_engine.written.items()}

    def load(self, directory: str, tag: str) -> None:
        # DeepSpeed saved rank 0's optimizer state only: one that shards its own state is reloaded per rank
        # from the rank files instead (Checkpointer.load).
        path, client_state = self.ds.load_checkpoint(
            directory,
            tag=tag,
            load_lr_scheduler_states=False,
            load_optimizer_states=not shards_own_state(self.client_optimizer),
        )
        if path is None:
            raise ValueError(f"checkpoint {directory} has no engine state")
        self.ops.load_state_dict(client_state.pop("ops", {}))

    # --- accounting --------------------------------------------------------------------------
    def optimizer_state_tensors(self) -> list[torch.Tensor]:
        opt = self.ds.optimizer
        inner = getattr(opt, "optimizer", opt)  # ZeRO wraps the client optimizer
        tensors = [v for state in inner.state.values() for v in state.values() if torch.is_tensor(v)]
        if self.ds.zero_optimization_stage() > 0:
            tensors += list(getattr(opt, "single_partition_of_fp32_groups", []))  # fp32 master partitions
        return tensors

    def grad_bytes(self) -> int:
        """Gradient memory this rank holds at its peak in a step, besides DeepSpeed's reduce buckets
        (grad_bucket_bytes). ZeRO-0 and ZeRO-1 keep every parameter's full gradient until the boundary reduce
        (ZeRO-1 partitions only the optimizer state). ZeRO-2 reduces each gradient as backward produces it and
        keeps those of the parameters in this rank's partition twice: where the reduce lands (parameter dtype)
        and the accumulator (DeepSpeed's gradient-accumulation dtype). Checked against the live tensors of
        DeepSpeed 0.19 in tests/trainer/test_engine.py."""
        stage, opt = self.ds.zero_optimization_stage(), self.ds.optimizer
        trainable = [p for p in self.module.parameters() if p.requires_grad]
        if self.steps_in_backward and self.accumulation == 1:  # one parameter's gradient lives at a time
            return max((p.numel() * p.element_size() for p in trainable), default=0)
        if stage == 2:
            in_partition = sum(p.numel() for group in opt.params_in_partition for p in group)
            return in_partition * (_dtype_bytes(opt.dtype) + _dtype_bytes(opt.gradient_accumulation_dtype))
        if stage == 1 and opt.use_grad_accum_attribute:  # low-precision weights: gradients accumulate in fp32
            return sum(p.numel() for p in trainable) * _dtype_bytes(opt.gradient_accumulation_dtype)
        return sum(p.numel() * p.element_size() for p in trainable)

    def grad_bucket_bytes(self) -> int:
        """DeepSpeed's contiguous reduce buffers at ZeRO-1/2: `reduce_bucket_size` elements each (two with
        overlap_comm), allocated at every backward whatever the model's size (default 5e8 elements: 2 GB fp32)."""
        opt = self.ds.optimizer
        if self.ds.zero_optimization_stage() == 0 or not opt.contiguous_gradients:
            return 0
        buffers = (2 if opt.overlap_comm else 1) * len(opt.ipg_buckets)  # one bucket per communication dtype
        return buffers * int(opt.reduce_bucket_size) * _dtype_bytes(opt._gradient_reduction_buffer_dtype())


def _dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()
