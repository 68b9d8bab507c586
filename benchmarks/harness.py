"""Build any param x optim combination the way train.py does (Hydra config -> registries), for benchmarks;
start train.py as a user would (one process or torchrun) and run functions in gloo process groups.

Strategies are looked up by name only; nothing here knows a method.
"""
from __future__ import annotations

import ctypes
import os
import socket
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

import agg  # noqa: E402,F401  (registers strategies)
import optim  # noqa: E402,F401
import param  # noqa: E402,F401
from models import Llama, shape_for  # noqa: E402
from trainer.config import Config, resolve  # noqa: E402
from trainer.registry import OPTIM, PARAM, config_name  # noqa: E402
from trainer.strategy import BuildContext  # noqa: E402

VOCAB = 32000  # the papers' LLaMA tokenizer, for memory figures comparable with theirs


def compose(overrides: list[str]) -> Config:
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="schema", node=Config)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return resolve(OmegaConf.to_object(hydra_compose(config_name="config", overrides=overrides)))


@dataclass
class Built:
    cfg: Config
    model: nn.Module
    strategy: object
    optimizer: torch.optim.Optimizer | None


def build(size: str, param_name: str, optim_name: str | None, extra: list[str] = (), vocab: int = VOCAB,
          seq_len: int = 256, device: str = "cpu") -> Built:
    """The model converted by `param_name`, and (unless None) the `optim_name` optimizer over it."""
    cfg = compose([f"model.size={size}", f"param={param_name}", f"optim={optim_name or 'adamw'}", *extra])
    ctx = BuildContext(model_size=size, seed=cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    with torch.device(device):
        model = Llama(shape_for(size), vocab, seq_len)
        strategy = PARAM.build(config_name(cfg.param), cfg.param, ctx)
        strategy.convert(model)
    optimizer = OPTIM.build(config_name(cfg.optim), cfg.optim, model, ctx) if optim_name else None
    return Built(cfg, model, strategy, optimizer)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def state_tensors(value) -> list[torch.Tensor]:
    """Tensors in an optimizer-state entry, including those inside helper objects (galore-torch keeps its
    projection matrix in a projector object, which a plain tensor count would miss)."""
    if torch.is_tensor(value):
        return [value]
    if hasattr(value, "__dict__"):
        return [v for v in vars(value).values() if torch.is_tensor(v)]
    return []


def state_bytes(b: Built) -> dict:
    """Bytes held by weights (parameters + buffers), gradients and optimizer state, from the tensors."""
    opt_state = [t for s in b.optimizer.state.values() for v in s.values() for t in state_tensors(v)] if b.optimizer else []
    return {
        "weights": tensor_bytes(list(b.model.parameters()) + list(b.model.buffers())),
        "trainable": tensor_bytes(p for p in b.model.parameters() if p.requires_grad),
        "grads": tensor_bytes(p.grad for p in b.model.parameters() if p.grad is not None),
        "optim_state": tensor_bytes(opt_state),
    }


def train_step(b: Built, tokens: torch.Tensor) -> float:
    loss = nn.functional.cross_entropy(b.model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    b.optimizer.step()
    b.optimizer.zero_grad(set_to_none=False)  # keep the gradient buffers: they are part of the memory
    return float(loss.detach())


def trim_and_reset_peak() -> None:
    """Return freed heap to the OS and reset the kernel's peak-RSS counter (VmHWM) of this process."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def rss_bytes(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def timed_round_robin(fns: dict[str, callable], repeats: int) -> dict[str, float]:
    """Median seconds of each function, calls interleaved so every one sees the same machine load."""
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


# --- processes ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(overrides: list[str], nproc: int = 1) -> list[str]:
    """train.py with these Hydra overrides: directly for one process, under torchrun for more."""
    if nproc == 1:
        return [sys.executable, str(ROOT / "train.py"), *overrides]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
            "--max-restarts=0", str(ROOT / "train.py"), *overrides]


def train_env() -> dict:
    """This process's environment for a train.py child: one thread, no process group of ours to join."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true"}
    for key in ("SLURM_JOB_ID", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _gloo_worker(rank, world_size, port, fn, args):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
        dist.barrier()  # no rank tears gloo down while a peer is still using it
    finally:
        dist.destroy_process_group()


def run_distributed(fn, world_size: int, *args) -> None:
    """Run fn(rank, world_size, *args) in world_size gloo processes (fn must be importable)."""
    import torch.multiprocessing as mp

    mp.start_processes(_gloo_worker, args=(world_size, free_port(), fn, args), nprocs=world_size, join=True,
                       start_method="spawn")
