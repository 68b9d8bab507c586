"""What runs around the training steps, as callbacks after OLMo-core's: `Trainer.fit` calls each callback's
hooks in list order, so a profiler or a new meter is one more callback, not an edit of the loop.

Hooks (all optional; `trainer` is trainer/loop.py's Trainer):

- `fitting(trainer)`: a context manager around the whole loop (the stop callback's signal handlers);
- `on_fit_start(trainer)`: before the first step, after a resume;
- `on_step_end(trainer, step, metrics)`: after optimizer step `step` (1-based) and the param strategy's
  hook; a callback adds its numbers to `metrics`, which the progress callback logs, so it comes first;
- `on_eval(trainer, step, metrics)`: after each evaluation in the loop, its results already in `metrics`;
- `on_save(trainer, step)`: once the checkpoint of `step` is in place;
- `on_fit_end(trainer)`: after the loop, which a callback ends early by setting `trainer.exit_code`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext

from torch import nn

from trainer import dist
from trainer.config import TrainConfig
from trainer.data import val_batches
from trainer.metrics import peak_memory_bytes, tensor_bytes
from trainer.signals import EXIT_PREEMPTED, StopRequest


class Callback:
    def fitting(self, trainer):
        return nullcontext()

    def on_fit_start(self, trainer) -> None:
        pass

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        pass

    def on_eval(self, trainer, step: int, metrics: dict) -> None:
        pass

    def on_save(self, trainer, step: int) -> None:
        pass

    def on_fit_end(self, trainer) -> None:
        pass


def default_callbacks(train: TrainConfig) -> list[Callback]:
    """What every run does, in the order that matters: numbers are added before they are logged, and the
    stop decision is taken before the checkpoint that it may ask for."""
    return [
        EvalCallback(train.eval_every, train.steps, train.micro_batch_size, train.eval_batches),
        MemoryCallback(),
        ProgressCallback(train.log_every),
        StopCallback(train.max_time, train.stop_at, train.steps),
        CheckpointCallback(train.save_every, train.steps),
    ]


class EvalCallback(Callback):
    """The validation loss: at step 0 (with the parameter counts, the baseline of the closing summary), every
    `every` steps and at the last step. Each evaluation in the loop is announced to every `on_eval`."""

    def __init__(self, every: int, last: int, micro_batch_size: int, num_batches: int):
        self.every, self.last, self.micro_batch_size, self.num_batches = every, last, micro_batch_size, num_batches

    def on_fit_start(self, trainer) -> None:
        if trainer.state.step != 0:
            return
        first = {**parameter_counts(trainer.engine.module), **self.evaluate(trainer)}
        trainer.state.first_val_loss = first.get("val/loss")
        trainer.log.log(0, first)
        trainer.log.info("step 0: " + " ".join(f"{k} {v:.4g}" for k, v in first.items()))

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        if step % self.every == 0 or step == self.last:
            metrics |= self.evaluate(trainer)
            trainer.fire("on_eval", step, metrics)

    def evaluate(self, trainer) -> dict:
        total, count = 0.0, 0
        for inputs, targets in val_batches(
            trainer.data, self.micro_batch_size, self.num_batches, trainer.rank, trainer.world_size
        ):
            loss, n = trainer.engine.eval_loss(inputs, targets)
            total, count = total + loss, count + n
        total, count = dist.all_reduce_sum([total, count])
        if count == 0:
            return {}
        mean = total / count  # mean over exactly the tokens evaluated
        return {"val/loss": mean, "val/ppl": math.exp(min(mean, 50.0)), "val/tokens": count}


def parameter_counts(module: nn.Module) -> dict:
    params = list(module.parameters())
    return {
        "params/total": sum(p.numel() for p in params),
        "params/trainable": sum(p.numel() for p in params if p.requires_grad),
    }


class MemoryCallback(Callback):
    """Memory accounting at every evaluation: the peaks, and the bytes of parameters, gradients, DeepSpeed's
    reduce buckets and optimizer state (also the largest rank's, since ZeRO and sharded optimizers differ)."""

    def on_eval(self, trainer, step: int, metrics: dict) -> None:
        engine, module = trainer.engine, trainer.engine.module
        out = dict(peak_memory_bytes(engine.device))
        out["mem/param_bytes"] = tensor_bytes(list(module.parameters()) + list(module.buffers()))
        out["mem/grad_bytes"] = engine.grad_bytes()
        out["mem/grad_bucket_bytes"] = engine.grad_bucket_bytes()
        out["mem/optim_state_bytes"] = tensor_bytes(engine.optimizer_state_tensors())
        out["mem/optim_state_bytes_max_rank"] = dist.all_reduce_max(out["mem/optim_state_bytes"])
        metrics |= out


class ProgressCallback(Callback):
    """Every step's metrics to metrics.jsonl and wandb; a terminal line every `log_every` steps and at each
    evaluation, the validation loss, and the closing summary of a run that went to its last step."""

    def __init__(self, log_every: int):
        self.log_every, self.final = log_every, None

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        trainer.log.log(step, metrics)
        trainer.log.progress(step, metrics, print_line=step % self.log_every == 0 or "val/loss" in metrics)
        if "val/loss" in metrics:
            self.final = metrics["val/loss"]
            trainer.log.info(f"step {step}: val loss {metrics['val/loss']:.4f} ppl {metrics['val/ppl']:.2f}")

    def on_fit_end(self, trainer) -> None:
        first = trainer.state.first_val_loss
        if trainer.exit_code is None and self.final is not None and first is not None:
            trainer.log.info(
                f"done: validation loss {first:.4f} at step 0 -> {self.final:.4f} at step {trainer.state.step}"
            )


class StopCallback(Callback):
    """Stop requests: a signal, train.max_time, or train.stop_at. The ranks agree at every step boundary (one
    rank asked is enough), the checkpoint callback saves, and fit() returns EXIT_PREEMPTED: run it again."""

    def __init__(self, max_time: float, stop_at: int, last: int):
        self.max_time, self.stop_at, self.last = max_time, stop_at, last
        self.request: StopRequest | None = None

    @contextmanager
    def fitting(self, trainer):
        with StopRequest(self.max_time) as self.request:
            yield

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        trainer.stop_requested = dist.all_reduce_max(self.request.requested() or step == self.stop_at) > 0

    def on_save(self, trainer, step: int) -> None:
        if trainer.stop_requested and step < self.last:
            why = self.request.reason or ("train.stop_at" if step == self.stop_at else "a peer rank was asked to stop")
            trainer.log.info(f"stopping at step {step} ({why}); checkpoint saved")
            trainer.exit_code = EXIT_PREEMPTED


class CheckpointCallback(Callback):
    """A checkpoint every `every` steps, at the last step, and at a stop request (trainer/checkpoint.py)."""

    def __init__(self, every: int, last: int):
        self.every, self.last = every, last

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        if step % self.every == 0 or step == self.last or trainer.stop_requested:
            trainer.save()
