"""The training loop. It sees strategies only through trainer.strategy's interface."""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch

from trainer import checkpoint, engine as eng, runfiles
from trainer.config import Config
from trainer.data import Corpus, TrainBatches, val_batches
from trainer.metrics import MetricsLog, peak_memory_bytes, tensor_bytes
from trainer.signals import EXIT_PREEMPTED, StopRequest
from trainer.strategy import Aggregator, ParamStrategy
from trainer.throughput import ThroughputMeter


@dataclass
class TrainState:
    """Everything besides the engine that a resumed run needs to continue identically."""

    step: int = 0  # optimizer steps done; also the data position (batches are a function of it)
    tokens_seen: int = 0
    first_val_loss: float | None = None  # at step 0, for the closing summary
    strategies: dict = field(default_factory=dict)


def lr_schedule(step: int, cfg: Config) -> float:
    """Linear warm-up, then cosine to min_lr_ratio of the peak (a factor on the optimizer's lr)."""
    total, warmup = cfg.train.steps, int(cfg.train.warmup_fraction * cfg.train.steps)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = cfg.train.min_lr_ratio
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    def __init__(self, cfg: Config, engine: eng.Engine, param: ParamStrategy, agg: Aggregator,
                 data: Corpus, rank: int, world_size: int, run_dir: str, log: MetricsLog):
        self.cfg, self.engine, self.param, self.agg, self.data = cfg, engine, param, agg, data
        self.rank, self.world_size, self.run_dir, self.log = rank, world_size, run_dir, log
        self.ckpt_root = os.path.join(run_dir, "checkpoints")
        self.batches = TrainBatches(data, cfg.train.global_batch_size, cfg.train.micro_batch_size, rank, world_size, cfg.train.seed)
        self.state = TrainState()
        self.throughput = ThroughputMeter(engine.module, cfg.data.seq_len, world_size, engine.device, cfg.train.peak_tflops)
        if not agg.uses_engine_allreduce:
            engine.disable_allreduce()

    # --- one optimizer step -------------------------------------------------------------------
    def train_step(self, step: int) -> dict:
        lr = self.engine.set_lr_factor(lr_schedule(step, self.cfg) * self.param.lr_factor(step + 1))
        start = time.perf_counter()
        micro_batches = self.batches.micro_batches(step)
        losses, extra, grad_norm = [], {}, None
        for i, (inputs, targets) in enumerate(micro_batches):
            losses.append(self.engine.forward_backward(inputs, targets))
            if i == len(micro_batches) - 1:
                extra = self.maybe_aggregate(step)
                if not self.engine.norm_after_step:
                    grad_norm = self.engine.grad_norm()
            self.engine.step()  # DeepSpeed's rule: step() after every micro-batch; it steps the optimizer at the boundary
        if self.engine.norm_after_step:
            grad_norm = self.engine.grad_norm()
        loss = eng.all_reduce_sum([float(torch.stack(losses).mean())])[0] / self.world_size
        elapsed = time.perf_counter() - start
        tokens = self.cfg.train.global_batch_size * self.cfg.data.seq_len
        self.state.tokens_seen += tokens
        return {"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm, "train/step_time_s": elapsed,
                "train/tokens_per_s": tokens / elapsed, "train/tokens_seen": self.state.tokens_seen, **extra}

    def maybe_aggregate(self, step: int) -> dict:
        if self.agg.uses_engine_allreduce:
            return {}
        return self.agg.aggregate(self.engine.local_grads(), step)

    # --- evaluation and accounting -------------------------------------------------------------
    def evaluate(self) -> dict:
        total, count = 0.0, 0
        for inputs, targets in val_batches(self.data, self.cfg.train.micro_batch_size, self.cfg.train.eval_batches, self.rank, self.world_size):
            loss, n = self.engine.eval_loss(inputs, targets)
            total, count = total + loss, count + n
        total, count = eng.all_reduce_sum([total, count])
        if count == 0:
            return {}
        mean = total / count  # mean over exactly the tokens evaluated
        return {"val/loss": mean, "val/ppl": math.exp(min(mean, 50.0)), "val/tokens": count}

    def memory(self) -> dict:
        module = self.engine.module
        out = {f"{k}": v for k, v in peak_memory_bytes(self.engine.device).items()}
        out["mem/param_bytes"] = tensor_bytes(list(module.parameters()) + list(module.buffers()))
        out["mem/grad_bytes"] = self.engine.grad_bytes()
        out["mem/grad_bucket_bytes"] = self.engine.grad_bucket_bytes()
        out["mem/optim_state_bytes"] = tensor_bytes(self.engine.optimizer_state_tensors())
        out["mem/optim_state_bytes_max_rank"] = eng.all_reduce_max(out["mem/optim_state_bytes"])
        return out

    def parameter_counts(self) -> dict:
        params = list(self.engine.module.parameters())
        return {"params/total": sum(p.numel() for p in params), "params/trainable": sum(p.numel() for p in params if p.requires_grad)}

    # --- checkpoints --------------------------------------------------------------------------
    def save(self) -> None:
        """Every rank writes and hashes its own files; rank 0 seals the checkpoint with their hashes. A full
        disk stops the run with one line, the unfinished folder removed (checkpoint.saving)."""
        with checkpoint.saving(self.ckpt_root, self.state.step) as tmp:
            self._save(self.state.step, tmp)

    def _save(self, step: int, tmp: str) -> None:
        os.makedirs(tmp, exist_ok=True)
        eng.barrier()
        self.state.strategies = {"param": self.param.state_dict(), "agg": self.agg.state_dict()}
        written = self.engine.save(tmp, client_state={})
        rank_state = {"rng": checkpoint.rng_state()}
        if getattr(self.engine.client_optimizer, "state_is_sharded", False):
            rank_state["optimizer"] = self.engine.client_optimizer.state_dict()
        rank_file = checkpoint.rank_file(tmp, self.rank)
        written[os.path.basename(rank_file)] = checkpoint.save_object(rank_state, rank_file)
        if self.rank == 0:
            written[os.path.basename(checkpoint.shared_file(tmp))] = checkpoint.save_object(asdict(self.state), checkpoint.shared_file(tmp))
            runfiles.save_into_checkpoint(tmp, self.run_dir, self.cfg, self.data.vocab_size, self.data.tokenizer_path)
        everyone = eng.gather_object(written)  # also the barrier: rank 0 goes on once every rank has written
        if self.rank == 0:
            checkpoint.publish(self.ckpt_root, step, {k: v for files in everyone for k, v in files.items()})
            checkpoint.prune(self.ckpt_root, self.cfg.train.keep_last, newest=step)
        eng.barrier()

    def verify_shared(self, path: str) -> str | None:
        """train.verify_checkpoint's checks of one checkpoint, the hashing shared by every rank."""
        problems = eng.all_gather_object(checkpoint.verify(path, self.cfg.train.verify_checkpoint, self.rank, self.world_size))
        return next((p for p in problems if p), None)

    def maybe_resume(self, path: str | None = None) -> None:
        """Resume from `path` (already verified), else from the checkpoint train.resume picks, if any."""
        if path is None:
            path = checkpoint.find_resume(self.ckpt_root, self.cfg.train.resume, self.log.info, self.verify_shared)
            path = eng.broadcast_object(path)  # rank 0's answer, should a rank have seen another folder listing
        if path is None:
            return
        shared = checkpoint.load_file(checkpoint.shared_file(path))
        rank_state = checkpoint.load_file(checkpoint.rank_file(path, self.rank))
        self.engine.load(path)
        if "optimizer" in rank_state:
            self.engine.client_optimizer.load_state_dict(rank_state["optimizer"])
        self.state = TrainState(**shared)
        self.param.load_state_dict(self.state.strategies.get("param", {}))
        self.agg.load_state_dict(self.state.strategies.get("agg", {}))
        checkpoint.set_rng_state(rank_state["rng"])
        self.log.info(f"resumed from {path} at step {self.state.step}")

    # --- the loop -------------------------------------------------------------------------------
    def fit(self, resume_from: str | None = None) -> int:
        """Train to train.steps; returns a process exit code (0, or EXIT_PREEMPTED after a stop request).
        `resume_from`: a verified checkpoint to continue (train.py's rundir.claim), else train.resume decides."""
        self.maybe_resume(resume_from)
        self.log.begin(self.state.step)
        t = self.cfg.train
        if self.state.step == 0:
            first = {**self.parameter_counts(), **self.evaluate()}
            self.state.first_val_loss = first.get("val/loss")
            self.log.log(0, first)
            self.log.info("step 0: " + " ".join(f"{k} {v:.4g}" for k, v in first.items()))
        final = None
        with StopRequest(t.max_time) as stop:
            while self.state.step < t.steps:
                metrics = self.train_step(self.state.step)
                metrics |= self.throughput(metrics)  # MFU, peak memory
                self.state.step += 1
                step = self.state.step
                self.param.on_step_end(step, self.engine.ops)
                if step % t.eval_every == 0 or step == t.steps:
                    metrics |= self.evaluate() | self.memory()
                self.log.log(step, metrics)
                self.log.progress(step, metrics, print_line=step % t.log_every == 0 or "val/loss" in metrics)
                if "val/loss" in metrics:
                    final = metrics["val/loss"]
                    self.log.info(f"step {step}: val loss {metrics['val/loss']:.4f} ppl {metrics['val/ppl']:.2f}")
                stopping = eng.all_reduce_max(stop.requested() or step == t.stop_at) > 0
                if step % t.save_every == 0 or step == t.steps or stopping:
                    self.save()
                if stopping and step < t.steps:
                    self.log.info(f"stopping at step {step} ({stop.reason or ('train.stop_at' if step == t.stop_at else 'a peer rank was asked to stop')}); checkpoint saved")
                    return EXIT_PREEMPTED
        if final is not None and self.state.first_val_loss is not None:
            self.log.info(f"done: validation loss {self.state.first_val_loss:.4f} at step 0 -> {final:.4f} at step {self.state.step}")
        return 0
