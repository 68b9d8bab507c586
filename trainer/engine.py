"""The one module that touches DeepSpeed and torch.distributed.

Everything else gets plain tensors, a process group, or the small `Ops` object below.
"""
from __future__ import annotations

import datetime
import os
from contextlib import contextmanager
from dataclasses import dataclass

import deepspeed
import torch
import torch.distributed as dist
from torch import nn

from launch.env import DistEnv, export_torch_env
from trainer import checkpoint, precision
from trainer.config import Config
from trainer.zero_reset import ZeroResetSteps


def pick_device(cfg: Config, env: DistEnv) -> torch.device:
    use_cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA GPU is visible; use train.device=cpu")
    if use_cuda:
        torch.cuda.set_device(env.local_rank)
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")


def process_group_backend(device: torch.device) -> str:
    """The default group's backend per tensor device (torchtitan's `cpu:gloo,cuda:nccl`): on a GPU, NCCL
    serves CUDA tensors and gloo the host-side scalars and objects, which NCCL refuses ("No backend type
    associated with device type cpu"). CPU runs use the same routing syntax with gloo alone."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "cpu:gloo"


def init_distributed(env: DistEnv, device: torch.device, timeout_s: int = 600) -> None:
    """One process gets a world of one so every code path is the same."""
    if dist.is_initialized():
        return
    export_torch_env(env)
    deepspeed.init_distributed(dist_backend=process_group_backend(device), auto_mpi_discovery=False,
                               timeout=datetime.timedelta(seconds=timeout_s))


def served_devices(backend: str) -> set[str]:
    """Device types a backend string serves: `cpu:gloo,cuda:nccl` -> {cpu, cuda}; `nccl` -> {cuda}."""
    bare = {"nccl": "cuda", "gloo": "cpu", "mpi": "cpu"}
    return {pair.split(":")[0] if ":" in pair else bare.get(pair, "cpu") for pair in backend.split(",")}


def collective_device() -> torch.device:
    """Where a host-side value must live for a collective on the default group: the CPU when a CPU backend
    serves the group, else the current GPU (a group created with `nccl` alone, e.g. by an outside launcher)."""
    if "cpu" in served_devices(dist.get_backend()):
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def _multi_process() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_max(value: float) -> float:
    if not _multi_process():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_reduce_sum(values: list[float]) -> list[float]:
    if not _multi_process():
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=collective_device())
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj, src: int = 0):
    if not _multi_process():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=collective_device())
    return box[0]


def gather_object(obj, dst: int = 0) -> list | None:
    """Every rank's `obj` on rank `dst` (None elsewhere); a one-item list in a single process."""
    if not _multi_process():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def all_gather_object(obj) -> list:
    if not _multi_process():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def deepspeed_config(cfg: Config, world_size: int, autocast: bool) -> dict:
    t = cfg.train
    return {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.global_batch_size // (t.micro_batch_size * world_size),
        "zero_optimization": {"stage": t.zero_stage},
        "gradient_clipping": t.grad_clip,
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

    engine: "deepspeed.DeepSpeedEngine"
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
    """DeepSpeed's torch checkpoint engine, writing each file through checkpoint.save_object, so the rank
    that writes a file hashes it as it goes. Other engines (decoupled, Nebula) are left alone: rank 0
    then hashes their files when it seals the checkpoint."""

    def __init__(self, inner):
        self.inner, self.written = inner, {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def save(self, state_dict, path: str):
        if type(self.inner).__name__ != "TorchCheckpointEngine":
            return self.inner.save(state_dict, path)
        self.written[path] = checkpoint.save_object(state_dict, path, zipfile=self.inner.zipfile_serialization)


class Engine:
    """A DeepSpeed engine plus the few operations the loop needs."""

    steps_in_backward = False  # the optimizer updates each weight in its gradient hook (optim/base.py)
    accumulation = 1  # micro-batches per optimizer step

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: Config, world_size: int, device: torch.device):
        self.precision = precision.resolve(cfg.train.precision, device.type)
        self.autocast = precision.autocast_dtype(self.precision)
        self.client_optimizer = optimizer
        self.steps_in_backward = getattr(optimizer, "steps_in_backward", False)
        self.accumulation = cfg.train.global_batch_size // (cfg.train.micro_batch_size * world_size)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.ds, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(cfg, world_size, self.autocast is not None),
            dist_init_required=False,
        )
        if self.steps_in_backward:
            self.ds.enable_backward_allreduce = False  # each gradient is averaged in its own hook, before its update
        self.device = device
        self.ops = Ops(self.ds, optimizer)

    @property
    def module(self) -> nn.Module:
        return self.ds.module

    def disable_allreduce(self) -> None:
        if self.ds.zero_optimization_stage() > 0:
            raise ValueError("a robust agg needs train.zero_stage=0: ZeRO-1/2 reduce gradients inside backward")
        self.ds.enable_backward_allreduce = False

    def set_lr_factor(self, factor: float) -> float:
        for group in self.client_optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return self.client_optimizer.param_groups[0]["lr"]

    def forward_backward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.steps_in_backward:  # the hooks of the step's last backward update the weights
            self.client_optimizer.prepare_backward(self.ds.is_gradient_accumulation_boundary())
        logits = self.ds(inputs.to(self.device))
        loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.to(self.device).flatten())
        self.ds.backward(loss)
        return loss.detach()

    def local_grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.module.parameters() if p.grad is not None]

    @property
    def norm_after_step(self) -> bool:
        """Whether grad_norm() is read after step(): ZeRO-1/2 reduce at the step, a step in backward frees gradients."""
        return self.ds.zero_optimization_stage() > 0 or self.steps_in_backward

    def grad_norm(self) -> float | None:
        """Global gradient norm; read before step() unless norm_after_step."""
        if self.steps_in_backward:
            return self.client_optimizer.last_grad_norm
        if self.ds.zero_optimization_stage() == 0:
            grads = self.local_grads()
            return float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads]))) if grads else 0.0
        norm = self.ds.get_global_grad_norm()
        return None if norm is None else float(norm)

    def step(self) -> None:
        self.ds.step()

    @torch.no_grad()
    def eval_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
        """Summed token loss and token count for one held-out batch."""
        self.ds.eval()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast is not None):
            logits = self.module(inputs.to(self.device))
        loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.to(self.device).flatten(), reduction="sum")
        self.ds.train()
        return float(loss), targets.numel()

    # --- checkpoints -------------------------------------------------------------------------
    def save(self, directory: str, client_state: dict) -> dict[str, dict]:
        """Write this rank's part of the engine state; returns the manifest entries (path relative to
        `directory` -> size and hashes) of the files this rank wrote, hashed while writing them."""
        if not isinstance(self.ds.checkpoint_engine, HashingCheckpointEngine):
            self.ds.checkpoint_engine = HashingCheckpointEngine(self.ds.checkpoint_engine)
        self.ds.checkpoint_engine.written = {}
        client_state = {**client_state, "ops": self.ops.state_dict()}  # per-parameter reset steps (ZeRO-1/2)
        self.ds.save_checkpoint(directory, tag="engine", client_state=client_state, save_latest=False)
        return {os.path.relpath(path, directory): entry for path, entry in self.ds.checkpoint_engine.written.items()}

    def load(self, directory: str) -> dict:
        # An optimizer that shards its own state reloads each rank's shard itself (Trainer.maybe_resume).
        sharded = getattr(self.client_optimizer, "state_is_sharded", False)
        path, client_state = self.ds.load_checkpoint(directory, tag="engine", load_optimizer_states=not sharded,
                                                     load_lr_scheduler_states=False)
        if path is None:
            raise ValueError(f"checkpoint {directory} has no engine state")
        self.ops.load_state_dict(client_state.pop("ops", {}))
        return client_state

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


_kept = 0  # > 0 while a caller keeps one process group across runs (one_process_group)


@contextmanager
def one_process_group():
    """One process group for every run inside (the jobs of a `-m` sweep), destroyed on exit. A second
    rendezvous in one process hangs under torchrun, whose agent's store keeps the first one's keys."""
    global _kept
    _kept += 1
    try:
        yield
    finally:
        _kept -= 1
        destroy()


def destroy() -> None:
    if dist.is_initialized() and not _kept:
        dist.destroy_process_group()


def set_threads(num_threads: int) -> None:
    if num_threads > 0:
        torch.set_num_threads(num_threads)
        os.environ["OMP_NUM_THREADS"] = str(num_threads)
