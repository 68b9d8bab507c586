"""One training step as trainer/engine.py + trainer/loop.py run it at world size 1, under torch's MemTracker.

trainer/memory.py (the estimator) builds a `Job` on fake or real tensors and counts a few steps with
`track_steps`. What the step does must follow the engine and the loop: forward under autocast, fp32
cross-entropy, backward of loss / accumulation, DeepSpeed ZeRO-0's gradient all-reduce at the boundary,
the gradient norm, optimizer.step(), zero_grad(set_to_none=True), the param strategy's step hook.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker, _MemRefType

import models
from trainer import precision as prec
from trainer.config import Config
from trainer.registry import AGG, OPTIM, PARAM, config_name
from trainer.strategy import BuildContext, steps_in_backward


@dataclass
class Job:
    """A built model with its strategies and the token batches of every step."""

    model: nn.Module
    param_strategy: object
    optimizer: torch.optim.Optimizer
    batches: list[list[tuple[torch.Tensor, torch.Tensor]]]  # per step: (inputs, targets) per micro-batch
    accumulation: int
    autocast: torch.dtype | None
    marks: Marks
    engine_allreduce: (
        bool  # DeepSpeed reduces the gradients after the boundary backward (agg=mean, no step in backward)
    )


class Marks:
    """Tells the tracker what it cannot see. An update made in a gradient hook (optim.step_in_backward) is optimizer
    work, as inside optimizer.step(); MemTracker would file it, new moments included, as backward temporaries.
    DeepSpeed's all-reduce buffers, made after backward returns, are temporaries, not activations."""

    def __init__(self):
        self.tracker: MemTracker | None = None

    def build_optimizer(self, params: list[nn.Parameter], build):
        """build() the optimizer between two gradient hooks per parameter that bracket its own (post-accumulate-grad
        hooks run in registration order); for an ordinary optimizer they run back to back and change nothing."""
        for p in params:
            p.register_post_accumulate_grad_hook(lambda p: self._optimizer_work(True))
        optimizer = build()
        for p in params:
            p.register_post_accumulate_grad_hook(lambda p: self._optimizer_work(False))
        return optimizer

    def _optimizer_work(self, on: bool) -> None:
        if self.tracker is not None:
            self.tracker._in_opt = on  # MemTracker's own flag for "inside optimizer.step()"

    @contextmanager
    def temporaries(self):
        tracker = self.tracker if isinstance(self.tracker, PeakTracker) else None
        if tracker is not None:
            tracker.file_as = _MemRefType.TEMP
        try:
            yield
        finally:
            if tracker is not None:
                tracker.file_as = None


@dataclass
class LocalOps:
    """trainer.strategy.EngineOps for one process without DeepSpeed (ZeRO-0), as trainer/engine.py's Ops."""

    optimizer: torch.optim.Optimizer

    def reset_optimizer_state(self, params: list[nn.Parameter]) -> None:
        for p in params:
            self.optimizer.state.pop(p, None)

    def params_changed(self, params: list[nn.Parameter]) -> None:
        pass  # ZeRO-0 keeps no second copy of the weights


def materialise(model: nn.Module, device: str) -> None:
    """Replace every meta parameter and buffer by an uninitialised one on `device` (under a FakeTensorMode: a
    fake one). nn.Module.to_empty cannot: FakeTensorMode refuses meta inputs to empty_like."""
    made: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (old, new); holding old keeps its id unique
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name, t in store.items():
                if t is not None and id(t) not in made:  # a tensor shared by two modules stays shared
                    new = torch.empty(t.shape, dtype=t.dtype, device=device)
                    made[id(t)] = t, nn.Parameter(new, t.requires_grad) if isinstance(t, nn.Parameter) else new
                if t is not None:
                    store[name] = made[id(t)][1]


def build(cfg: Config, vocab_size: int, mode: str, real: bool, steps: int, device: str = "cpu") -> Job:
    """Model -> param strategy -> activation checkpointing -> precision -> optimizer, as train.py orders them.
    `device` places real tensors (a real "cuda" job checks the estimate against the GPU's allocator)."""
    torch.manual_seed(cfg.train.seed)
    ctx = BuildContext(model_size=cfg.model.size, seed=cfg.train.seed)
    with torch.device(device) if real else torch.device("meta"):  # meta: shapes only, nothing allocated
        model = models.Llama(models.shape_for(cfg.model.size), vocab_size, cfg.model.max_seq_len, cfg.model.attn)
        param_strategy = PARAM.build(config_name(cfg.param), cfg.param, ctx)
        param_strategy.convert(model)
        models.apply_activation_checkpointing(model, cfg.train.activation_checkpointing)
        prec.prepare_model(model, mode)
    if not real:
        materialise(model, "cpu")  # the caller holds the FakeTensorMode
    marks = Marks()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = marks.build_optimizer(params, lambda: OPTIM.build(config_name(cfg.optim), cfg.optim, model, ctx))
    accumulation = cfg.train.global_batch_size // cfg.train.micro_batch_size
    gen = torch.Generator().manual_seed(cfg.train.seed)
    shape = (cfg.train.micro_batch_size, cfg.data.seq_len + 1)
    rows = [
        [torch.randint(0, vocab_size, shape, generator=gen).to(device if real else "cpu") for _ in range(accumulation)]
        for _ in range(steps)
    ]
    batches = [[(r[:, :-1], r[:, 1:]) for r in step] for step in rows]  # as trainer/data.py: views of one row block
    allreduce = AGG.build(config_name(cfg.agg), cfg.agg, ctx).uses_engine_allreduce
    allreduce = allreduce and not steps_in_backward(optimizer)
    return Job(model, param_strategy, optimizer, batches, accumulation, prec.autocast_dtype(mode), marks, allreduce)


# --- the step: mirrors trainer/engine.py + trainer/loop.py at world size 1; keep them in step -------------
def forward_backward(job: Job, inputs: torch.Tensor, targets: torch.Tensor, boundary: bool) -> torch.Tensor:
    if steps_in_backward(job.optimizer):  # step in backward (trainer/strategy.py's contract)
        job.optimizer.prepare_backward(boundary)
    with torch.autocast(inputs.device.type, dtype=job.autocast or torch.bfloat16, enabled=job.autocast is not None):
        logits = job.model(inputs)  # DeepSpeed's torch_autocast covers the forward only
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    (loss / job.accumulation).backward()  # DeepSpeed divides each micro-batch's loss by the accumulation
    if boundary and job.engine_allreduce:
        with job.marks.temporaries():
            allreduce_buckets(job.model)
    return loss.detach()


def allreduce_buckets(model: nn.Module, bucket_numel: int = 500_000_000) -> None:
    """DeepSpeed ZeRO-0's gradient all-reduce, which runs even in a world of one (DeepSpeedEngine.allreduce_no_retain):
    per dtype, gradients are copied into one flat buffer per bucket of just over 5e8 values and copied back."""
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    for dtype in dict.fromkeys(g.dtype for g in grads):
        bucket, numel = [], 0
        for g in (g for g in grads if g.dtype == dtype):
            bucket.append(g)
            numel += g.numel()
            if numel > bucket_numel:
                _reduce_bucket(bucket)
                bucket, numel = [], 0
        if bucket:
            _reduce_bucket(bucket)


def _reduce_bucket(bucket: list[torch.Tensor]) -> None:
    flat = _flatten_dense_tensors(bucket)  # all_reduce(flat) is a no-op at world size 1
    for g, synced in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
        g.copy_(synced)


def train_step(job: Job, step: int, ops: LocalOps, after_backward=lambda: None) -> None:
    micro_batches = job.batches[step]
    losses = []  # the loop keeps each micro-batch's detached loss until the step ends
    for i, (inputs, targets) in enumerate(micro_batches):
        losses.append(forward_backward(job, inputs, targets, boundary=i == len(micro_batches) - 1))
        after_backward()
    if not steps_in_backward(job.optimizer):
        grad_norm(job.model)  # the loop reads it before the step (ZeRO-0); a step in backward has freed the grads
    job.optimizer.step()
    job.optimizer.zero_grad(set_to_none=True)
    job.param_strategy.on_step_end(step + 1, ops)


def grad_norm(model: nn.Module) -> torch.Tensor | None:
    grads = [p.grad for p in model.parameters() if p.grad is not None]  # as Engine.grad_norm: fp32 per tensor
    return torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads])) if grads else None


class PeakTracker(MemTracker):
    """torch's MemTracker keeping the run's peak only. Its per-module peaks cost a pass over every module at
    every op (70% of a 7b estimate's time); the counting is the same (tests/trainer/test_memory.py). While
    `file_as` is set, new tensors are filed under that kind (Marks.temporaries)."""

    file_as: _MemRefType | None = None

    def _track(self, reftype, t) -> None:
        super()._track(self.file_as or reftype, t)

    def _update_peak_stats(self, peak_state) -> None:
        for dev, snap in self._curr_mem_snap.items():
            if self._peak_mem.get(dev, 0) < snap[_TOTAL_KEY]:
                self._peak_mem[dev], self._peak_mem_snap[dev] = snap[_TOTAL_KEY], dict(snap)


def track_steps(job: Job, tracker: MemTracker) -> tuple[dict, int]:
    """Run every step under `tracker`: (kind -> bytes at the run's peak, the 1-based step that reached it)."""
    tracker.track_external(job.model, job.optimizer, *[t for step in job.batches for batch in step for t in batch])
    ops, peak, peak_step = LocalOps(job.optimizer), 0, 0
    job.marks.tracker = tracker
    with tracker, warnings.catch_warnings():
        # With a step in backward the optimizer's gradient hook frees p.grad before MemTracker's own hook looks.
        warnings.filterwarnings("ignore", message="Expected a tensor or a traceable wrapper-subclass")
        for step in range(len(job.batches)):
            # MemTracker refuses a second forward of the same root module unless its module stats are reset.
            train_step(job, step, ops, after_backward=tracker.reset_mod_stats)
            total = sum(s[_TOTAL_KEY] for s in tracker.get_tracker_snapshot("peak").values())
            if total > peak:
                peak, peak_step = total, step + 1
    job.marks.tracker = None
    snaps = list(tracker.get_tracker_snapshot("peak").values())
    assert len(snaps) <= 1, "one device expected"
    return (snaps[0] if snaps else {}), peak_step
