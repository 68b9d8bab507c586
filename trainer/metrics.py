"""Where numbers go: a JSONL file in the run directory, wandb, and the terminal."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import resource
import sys
import time

import psutil
import torch

from trainer import diskfull
from trainer.config import LogConfig


def peak_memory_bytes(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {
            "mem/peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
            "mem/reserved_bytes": torch.cuda.memory_reserved(device),
        }
    # ru_maxrss is in KiB on Linux: the peak resident set of this process.
    return {
        "mem/peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "mem/rss_bytes": psutil.Process().memory_info().rss,
    }


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def stable_wandb_id(run_dir: str) -> str:
    """The same wandb run across restarts: stored in the run directory on first use."""
    path = os.path.join(run_dir, "wandb_id.txt")
    if os.path.exists(path):
        with open(path) as f:
            return f.read().strip()
    run_id = hashlib.sha1(f"{os.path.basename(os.path.abspath(run_dir))}-{time.time_ns()}".encode()).hexdigest()[:12]
    with open(path, "w") as f:
        f.write(run_id)
    return run_id


def _record_step(line: str) -> float:
    """The step of one metrics.jsonl line; infinity for a line that is not a whole record."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


class MetricsLog:
    """Only the main rank writes; others get a logger that drops everything."""

    def __init__(self, run_dir: str, cfg: LogConfig, is_main: bool, total_steps: int, config: dict, run_name: str):
        self.is_main, self.total_steps = is_main, total_steps
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.wandb = None
        self.bar = None
        if not is_main:
            return
        if cfg.wandb != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb = wandb.init(
                project=cfg.wandb_project,
                name=run_name,
                id=stable_wandb_id(run_dir),
                resume="allow",
                dir=run_dir,
                mode=cfg.wandb,
                config=config,
            )
        interactive = cfg.progress == "bar" or (cfg.progress == "auto" and sys.stdout.isatty())
        if interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, dynamic_ncols=True, desc="train")

    def begin(self, step: int) -> None:
        """Make metrics.jsonl describe this run from `step` on without losing what an earlier run saved.

        A fresh run (step 0) in a directory that already holds a metrics file moves that file aside to
        metrics.<n>.jsonl; a run resumed at `step` drops the records after `step` (steps it will redo
        identically, and a line cut short by a kill), so every step appears once."""
        if not self.is_main or not os.path.exists(self.path):
            return
        if step == 0:
            names = (os.path.join(os.path.dirname(self.path), f"metrics.{n}.jsonl") for n in itertools.count(1))
            aside = next(name for name in names if not os.path.exists(name))
            os.replace(self.path, aside)
            self.info(f"metrics: the earlier run's metrics.jsonl was moved to {os.path.basename(aside)}")
            return
        with open(self.path) as f:
            kept = [line for line in f if _record_step(line) <= step]
        with diskfull.stops_the_run(self.path, "trimming the metrics to the resumed step", cleanup=self._drop_tmp):
            with open(self.path + ".tmp", "w") as f:
                f.writelines(kept)
        os.replace(self.path + ".tmp", self.path)

    def _drop_tmp(self) -> None:
        if os.path.exists(self.path + ".tmp"):
            os.remove(self.path + ".tmp")

    def log(self, step: int, metrics: dict) -> None:
        if not self.is_main:
            return
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        with diskfull.stops_the_run(self.path, f"appending the metrics of step {step}"), open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def progress(self, step: int, metrics: dict, print_line: bool) -> None:
        if not self.is_main:
            return
        perf = {}
        if "train/mfu" in metrics:
            perf["mfu"] = f"{100 * metrics['train/mfu']:.1f}%"
        if "mem/peak_bytes" in metrics:
            perf["peak_mem"] = f"{metrics['mem/peak_bytes'] / 2**30:.2f}GiB"
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(
                loss=f"{metrics['train/loss']:.4f}",
                lr=f"{metrics['train/lr']:.2e}",
                tok_s=f"{metrics['train/tokens_per_s']:.0f}",
                **perf,
            )
            self.bar.refresh()
        elif print_line:
            self.info(
                f"step {step}/{self.total_steps} loss {metrics['train/loss']:.4f} lr {metrics['train/lr']:.2e} "
                f"grad_norm {metrics.get('train/grad_norm') or 0:.3f} {metrics['train/tokens_per_s']:.0f} tok/s "
                f"{metrics['train/step_time_s'] * 1000:.0f} ms/step" + "".join(f" {k} {v}" for k, v in perf.items())
            )

    def info(self, message: str) -> None:
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()
