"""Memory estimator: the peak bytes of a training step of one configuration, counted without a GPU.

    python -m trainer.memory <train.py's overrides> [--budget 24GiB] [--real] [--steps 2] [--json out.json]

It composes the config as train.py does, builds the model on the meta device, makes every parameter and
buffer a fake tensor on "cpu" (torch's FakeTensorMode: shapes and dtypes, no storage), and runs `--steps`
training steps of the configured strategies while torch's MemTracker counts every live tensor by kind.
The first step allocates gradients and optimizer state, so the peak usually comes in the second. `--real`
runs the same on real CPU tensors (real init): the tests check that both give the same bytes.

What it counts: the tensors of one process at world size 1 (no ZeRO partitioning, no communication
buffers), as the CUDA caching allocator would hand them out but without its rounding, fragmentation and
the CUDA context. `train.device=auto` estimates the GPU job (train.precision=auto -> amp_bf16). The
kernels are CPU ones: attention runs through CPU SDPA rather than flash-attn, and optim.fast_dct=auto picks
the FFT from size 256 as on CPU (a GPU uses the matmul below 4096); both change only transient bytes.
A fake "cuda" device cannot run backward on a CPU-only torch build, hence "cpu".
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker, _MemRefType

import models
from trainer import precision as prec
from trainer.config import Config, check_world, resolve
from trainer.registry import OPTIM, PARAM, config_name
from trainer.strategy import BuildContext

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
LLAMA_VOCAB = 32000  # the LLaMA tokenizer, which the papers' memory figures use
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
# Report rows: (label, MemTracker kinds). OPT includes the optimizer step's own transients.
ROWS = (("weights", (_MemRefType.PARAM, _MemRefType.BUFFER)), ("gradients", (_MemRefType.GRAD,)),
        ("optimizer_state", (_MemRefType.OPT,)), ("activations", (_MemRefType.ACT,)),
        ("temporaries", (_MemRefType.TEMP,)), ("inputs", (_MemRefType.OTH,)))
LABELS = {"weights": "weights (params + buffers)", "gradients": "gradients", "optimizer_state": "optimizer state",
          "activations": "activations", "temporaries": "backward temporaries", "inputs": "inputs (token ids)"}


def parse_bytes(text: str) -> int:
    """'24GiB', '16GB', '1.5TiB', '512 MiB' or plain bytes -> bytes (GB = 1e9, GiB = 2^30)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if unit not in UNITS:
        raise ValueError(f"--budget {text!r}: give bytes, or a number with B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")
    return int(float(match.group(1)) * UNITS[unit])


def format_bytes(n: int) -> str:
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if abs(n) >= UNITS[unit.lower()]:
            return f"{n / UNITS[unit.lower()]:.2f} {unit}"
    return f"{n} B"


def load_config(overrides: list[str]) -> Config:
    """The typed config of these overrides, composed over conf/ exactly as train.py does (without importing
    train.py, which pulls in DeepSpeed). A Hydra error becomes a one-line ValueError."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    import agg, optim, param  # noqa: F401,E401  (register the strategies, as train.py does)

    ConfigStore.instance().store(name="schema", node=Config)  # as train.py
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            raw = compose(config_name="config", overrides=overrides)
        typed = OmegaConf.to_object(raw)
    except (HydraException, OmegaConfBaseException) as e:
        cause = str(e.__cause__).splitlines()[:1] if e.__cause__ is not None else []
        text = str(e).split("Config search path")[0]  # Hydra appends its search path to a missing group option
        lines = [line.strip() for line in [*text.splitlines(), *cause] if line.strip()]
        raise ValueError(" ".join(lines) or type(e).__name__) from None
    return resolve(typed)


@dataclass
class Job:
    """A built model with its strategies and the token batches of every step."""

    model: nn.Module
    param_strategy: object
    optimizer: torch.optim.Optimizer
    batches: list[list[tuple[torch.Tensor, torch.Tensor]]]  # per step: (inputs, targets) per micro-batch
    accumulation: int
    autocast: torch.dtype | None


@dataclass
class LocalOps:
    """trainer.strategy.EngineOps for one process without DeepSpeed (ZeRO-0), as trainer/engine.py's Ops."""

    optimizer: torch.optim.Optimizer

    def reset_optimizer_state(self, params: list[nn.Parameter]) -> None:
        for p in params:
            self.optimizer.state.pop(p, None)

    def params_changed(self, params: list[nn.Parameter]) -> None:
        pass  # ZeRO-0 keeps no second copy of the weights


def target_precision(cfg: Config) -> tuple[str, str]:
    """(resolved train.precision, the job it is estimated for): auto and cuda devices mean the GPU job."""
    device_type = "cpu" if cfg.train.device == "cpu" else "cuda"
    job = "a GPU job" if device_type == "cuda" else "a CPU job"
    if cfg.train.device == "auto":
        job += " (train.device=auto)"
    return prec.resolve(cfg.train.precision, device_type), job


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


def build(cfg: Config, vocab_size: int, mode: str, real: bool, steps: int) -> Job:
    """Model -> param strategy -> precision -> activation checkpointing -> optimizer, as train.py orders them."""
    torch.manual_seed(cfg.train.seed)
    ctx = BuildContext(model_size=cfg.model.size, seed=cfg.train.seed, zero_stage=cfg.train.zero_stage,
                       total_steps=cfg.train.steps)
    with nullcontext() if real else torch.device("meta"):  # meta: shapes only, nothing allocated
        model = models.Llama(models.shape_for(cfg.model.size), vocab_size, cfg.model.max_seq_len, cfg.model.attn)
        param_strategy = PARAM.build(config_name(cfg.param), cfg.param, ctx)
        param_strategy.convert(model)
        prec.prepare_model(model, mode)
        maybe_checkpoint_activations(model, cfg.train.activation_checkpointing)
    if not real:
        materialise(model, "cpu")  # the caller holds the FakeTensorMode
    optimizer = OPTIM.build(config_name(cfg.optim), cfg.optim, model, ctx)
    accumulation = cfg.train.global_batch_size // cfg.train.micro_batch_size
    gen = torch.Generator().manual_seed(cfg.train.seed)
    shape = (cfg.train.micro_batch_size, cfg.data.seq_len + 1)
    rows = [[torch.randint(0, vocab_size, shape, generator=gen) for _ in range(accumulation)] for _ in range(steps)]
    batches = [[(r[:, :-1], r[:, 1:]) for r in step] for step in rows]  # as trainer/data.py: views of one row block
    return Job(model, param_strategy, optimizer, batches, accumulation, prec.autocast_dtype(mode))


def maybe_checkpoint_activations(model: nn.Module, mode: str) -> None:
    apply = getattr(models, "apply_activation_checkpointing", None)  # activation checkpointing: models/ (issue 14)
    if apply is not None:
        apply(model, mode)
    elif mode != "none":
        raise ValueError(f"train.activation_checkpointing={mode} is not implemented in models/ yet; use none")


# --- the step: mirrors trainer/engine.py + trainer/loop.py at world size 1; keep them in step -------------
def forward_backward(job: Job, inputs: torch.Tensor, targets: torch.Tensor, boundary: bool) -> torch.Tensor:
    if getattr(job.optimizer, "steps_in_backward", False):  # step in backward (trainer/strategy.py's contract)
        job.optimizer.prepare_backward(boundary)
    with torch.autocast("cpu", dtype=job.autocast or torch.bfloat16, enabled=job.autocast is not None):
        logits = job.model(inputs)  # DeepSpeed's torch_autocast covers the forward only
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    (loss / job.accumulation).backward()  # DeepSpeed divides each micro-batch's loss by the accumulation
    return loss.detach()


def train_step(job: Job, step: int, ops: LocalOps, after_backward=lambda: None) -> None:
    micro_batches = job.batches[step]
    losses = []
    for i, (inputs, targets) in enumerate(micro_batches):
        losses.append(forward_backward(job, inputs, targets, boundary=i == len(micro_batches) - 1))
        after_backward()
    if not getattr(job.optimizer, "steps_in_backward", False):
        grad_norm(job.model)  # the loop reads it before the step (ZeRO-0); a step in backward has freed the grads
    job.optimizer.step()
    job.optimizer.zero_grad(set_to_none=True)
    job.param_strategy.on_step_end(step + 1, ops)


def grad_norm(model: nn.Module) -> torch.Tensor | None:
    grads = [p.grad for p in model.parameters() if p.grad is not None]  # as Engine.grad_norm: fp32 per tensor
    return torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads])) if grads else None


class PeakTracker(MemTracker):
    """torch's MemTracker keeping the run's peak only. Its per-module peaks cost a pass over every module at
    every op (70% of a 7b estimate's time); the counting is the same (tests/trainer/test_memory.py)."""

    def _update_peak_stats(self, peak_state) -> None:
        for dev, snap in self._curr_mem_snap.items():
            if self._peak_mem.get(dev, 0) < snap[_TOTAL_KEY]:
                self._peak_mem[dev], self._peak_mem_snap[dev] = snap[_TOTAL_KEY], dict(snap)


def track_steps(job: Job, tracker: MemTracker) -> tuple[dict, int]:
    """Run every step under `tracker`: (kind -> bytes at the run's peak, the 1-based step that reached it)."""
    tracker.track_external(job.model, job.optimizer, *[t for step in job.batches for batch in step for t in batch])
    ops, peak, peak_step = LocalOps(job.optimizer), 0, 0
    with tracker:
        for step in range(len(job.batches)):
            # MemTracker refuses a second forward of the same root module unless its module stats are reset.
            train_step(job, step, ops, after_backward=tracker.reset_mod_stats)
            total = sum(s[_TOTAL_KEY] for s in tracker.get_tracker_snapshot("peak").values())
            if total > peak:
                peak, peak_step = total, step + 1
    snaps = list(tracker.get_tracker_snapshot("peak").values())
    assert len(snaps) <= 1, "one device expected"
    return (snaps[0] if snaps else {}), peak_step


@dataclass
class MemoryEstimate:
    bytes: dict[str, int]  # ROWS labels and "total", at the moment of the peak
    peak_step: int
    steps: int
    fake: bool
    precision: str
    job: str
    vocab_size: int
    vocab_note: str
    num_params: int
    micro_batch: tuple[int, int]  # sequences x tokens
    accumulation: int
    overrides: list[str] = field(default_factory=list)
    wall_s: float = 0.0


def estimate(overrides: list[str], steps: int = 2, real: bool = False) -> MemoryEstimate:
    start = time.perf_counter()
    cfg = load_config(overrides)
    check_world(cfg, 1)
    mode, job_note = target_precision(cfg)
    vocab = cfg.model.vocab_size or LLAMA_VOCAB
    note = "model.vocab_size" if cfg.model.vocab_size else "model.vocab_size unset: the LLaMA tokenizer's"
    with nullcontext() if real else FakeTensorMode():
        job = build(cfg, vocab, mode, real, steps)
        num_params = sum(p.numel() for p in job.model.parameters())
        snap, peak_step = track_steps(job, PeakTracker())
    by_row = {label: sum(snap.get(kind, 0) for kind in kinds) for label, kinds in ROWS}
    by_row["total"] = snap.get(_TOTAL_KEY, 0)
    return MemoryEstimate(by_row, peak_step, steps, not real, mode, job_note, vocab, note, num_params,
                          (cfg.train.micro_batch_size, cfg.data.seq_len), job.accumulation, list(overrides),
                          time.perf_counter() - start)


def report(est: MemoryEstimate, budget: int | None) -> list[str]:
    kind = "fake tensors (nothing allocated)" if est.fake else "real CPU tensors"
    micro, seq = est.micro_batch
    lines = [f"memory of one training process: {est.steps} step(s) on {kind}, {est.num_params / 1e9:.3f}B parameters",
             f"  vocabulary {est.vocab_size} ({est.vocab_note}); precision {est.precision}, estimated for {est.job}",
             f"  {micro} x {seq} tokens per micro-batch, {est.accumulation} micro-batch(es) per step",
             f"peak at step {est.peak_step}, by kind at that moment:"]
    for label in [*LABELS, "total"]:
        n = est.bytes[label]
        lines.append(f"  {LABELS.get(label, 'total'):<28}{format_bytes(n):>12}{n:>18,d} B")
    if budget is not None:
        total = est.bytes["total"]
        verdict = "FITS" if total <= budget else "DOES NOT FIT"
        lines.append(f"{verdict}: peak {format_bytes(total)} vs budget {format_bytes(budget)} "
                     f"({format_bytes(abs(budget - total))} {'to spare' if total <= budget else 'over'})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py")
    parser.add_argument("--budget", help="memory to fit in: 24GiB, 16GB, 1.5TiB or bytes")
    parser.add_argument("--real", action="store_true", help="real CPU tensors instead of fake ones (checking)")
    parser.add_argument("--steps", type=int, default=2, help="training steps to run (default 2)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    try:
        budget = None if args.budget is None else parse_bytes(args.budget)
        if args.steps < 1:
            raise ValueError(f"--steps {args.steps}: must be at least 1")
        est = estimate(args.overrides, args.steps, args.real)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print("\n".join(report(est, budget)), flush=True)
    if args.json:
        out = {**asdict(est), "budget": budget, "fits": None if budget is None else est.bytes["total"] <= budget}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
