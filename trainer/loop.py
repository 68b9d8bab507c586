"""The training loop. It sees strategies only through trainer.strategy's interface, the engine only through
`Engine.step` (one optimizer step in, its metrics out), saving only through trainer/checkpoint.py, and
everything optional around a step (evaluation, memory, progress, stop requests, checkpoints) as callbacks
(trainer/callbacks.py)."""

from __future__ import annotations

import math
import time
from contextlib import ExitStack

from trainer.callbacks import Callback, default_callbacks
from trainer.checkpoint import Checkpointer, TrainState
from trainer.config import TrainConfig
from trainer.data import Corpus, TrainBatches
from trainer.engine import Engine
from trainer.metrics import MetricsLog
from trainer.strategy import ParamStrategy
from trainer.throughput import ThroughputMeter


def lr_schedule(step: int, train: TrainConfig) -> float:
    """Linear warm-up, then cosine to min_lr_ratio of the peak (a factor on the optimizer's lr)."""
    total, warmup = train.steps, int(train.warmup_fraction * train.steps)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = train.min_lr_ratio
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """Steps the engine to train.steps over `data`, with `callbacks` around each step (default: every run's)."""

    def __init__(
        self,
        *,
        train: TrainConfig,
        seq_len: int,
        engine: Engine,
        param: ParamStrategy,
        data: Corpus,
        checkpointer: Checkpointer,
        log: MetricsLog,
        rank: int,
        world_size: int,
        callbacks: list[Callback] | None = None,
    ):
        self.train, self.seq_len, self.engine, self.param, self.data = train, seq_len, engine, param, data
        self.checkpointer, self.log, self.rank, self.world_size = checkpointer, log, rank, world_size
        self.callbacks = default_callbacks(train) if callbacks is None else callbacks
        self.batches = TrainBatches(data, train.global_batch_size, train.micro_batch_size, rank, world_size, train.seed)
        self.throughput = ThroughputMeter(engine.module, seq_len, world_size, engine.device, train.peak_tflops)
        self.state = TrainState()
        self.stop_requested = False  # the ranks agreed to stop after this step (StopCallback)
        self.exit_code: int | None = None  # set by a callback to end fit() early

    def train_step(self, step: int) -> dict:
        """Optimizer step `step` (0-based); its metrics, with the step's throughput (MFU, peak memory)."""
        lr = self.engine.set_lr_factor(lr_schedule(step, self.train) * self.param.lr_factor(step + 1))
        start = time.perf_counter()
        out = self.engine.step(step, self.batches.micro_batches(step))
        elapsed = time.perf_counter() - start
        tokens = self.train.global_batch_size * self.seq_len
        self.state.tokens_seen += tokens
        metrics = {
            "train/loss": out.pop("train/loss"),
            "train/lr": lr,
            "train/grad_norm": out.pop("train/grad_norm"),
            "train/step_time_s": elapsed,
            "train/tokens_per_s": tokens / elapsed,
            "train/tokens_seen": self.state.tokens_seen,
            **out,
        }  # the rest: the aggregator's
        return metrics | self.throughput(metrics)

    def fire(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def save(self) -> None:
        self.checkpointer.save(self.state)
        self.fire("on_save", self.state.step)

    def maybe_resume(self, path: str | None = None) -> None:
        """Resume from `path` (already verified), else from the checkpoint train.resume picks, if any."""
        state = self.checkpointer.resume(path)
        if state is not None:
            self.state = state

    def fit(self, resume_from: str | None = None) -> int:
        """Train to train.steps; returns a process exit code (0, or EXIT_PREEMPTED after a stop request).
        `resume_from`: a verified checkpoint to continue (train.py's rundir.claim), else train.resume decides."""
        self.maybe_resume(resume_from)
        self.log.begin(self.state.step)
        self.fire("on_fit_start")
        with ExitStack() as around:
            for callback in self.callbacks:
                around.enter_context(callback.fitting(self))  # e.g. the stop request's signal handlers
            while self.state.step < self.train.steps and self.exit_code is None:
                metrics = self.train_step(self.state.step)
                self.state.step += 1
                self.param.on_step_end(self.state.step, self.engine.ops)
                self.fire("on_step_end", self.state.step, metrics)
        self.fire("on_fit_end")
        return self.exit_code or 0
