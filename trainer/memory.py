"""Memory estimator: the peak bytes of a training step of one configuration, counted without a GPU.

    python -m tools.memory <train.py's overrides> [--budget 24GiB] [--real] [--steps 2] [--json out.json]

The command is tools/memory.py, which registers the strategies (this library in trainer/ imports none of them).
It composes the config as train.py does, builds the model on the meta device, makes every parameter and
buffer a fake tensor on "cpu" (torch's FakeTensorMode: shapes and dtypes, no storage), and runs `--steps`
training steps of the configured strategies (trainer/memtrack.py, which mirrors the engine and the loop)
while torch's MemTracker counts every live tensor by kind. The first step allocates gradients and
optimizer state, so the peak usually comes in the second. `--real` runs the same on real CPU tensors (real
init): the tests check that both give the same bytes. Bytes are reported by kind at the moment of the peak;
"optimizer state" includes the update's own transients, also for an update made inside backward.

What it counts: the tensors of one process at world size 1 with ZeRO-0 (other stages are refused), as the
CUDA caching allocator would hand them out, without its rounding and fragmentation, the CUDA context,
or NCCL's buffers. `train.device=auto` estimates the GPU job (train.precision=auto -> amp_bf16). The
kernels are CPU ones: attention runs through CPU SDPA rather than flash-attn, and optim.fast_dct=auto picks
the FFT from size 256 as on CPU (a GPU uses the matmul below 4096); both change only transient bytes.
A fake "cuda" device cannot run backward on a CPU-only torch build, hence "cpu".
"""

from __future__ import annotations

import re
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import _TOTAL_KEY, _MemRefType

from trainer import precision as prec
from trainer.cli import compose_config as load_config
from trainer.config import Config, check_world
from trainer.memtrack import PeakTracker, build, track_steps

LLAMA_VOCAB = 32000  # the LLaMA tokenizer, which the papers' memory figures use
UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
K = _MemRefType
ROWS = (
    ("weights", "weights (params + buffers)", (K.PARAM, K.BUFFER)),
    ("gradients", "gradients", (K.GRAD,)),
    ("optimizer_state", "optimizer state + update", (K.OPT,)),
    ("activations", "activations", (K.ACT,)),
    ("temporaries", "backward temporaries", (K.TEMP,)),
    ("inputs", "inputs (token ids)", (K.OTH,)),
)


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


def target_precision(cfg: Config) -> tuple[str, str]:
    """(resolved train.precision, the job it is estimated for): auto and cuda devices mean the GPU job."""
    device_type = "cpu" if cfg.train.device == "cpu" else "cuda"
    target = ("a GPU job" if device_type == "cuda" else "a CPU job") + f" (train.device={cfg.train.device})"
    return prec.resolve(cfg.train.precision, device_type), target


@dataclass
class MemoryEstimate:
    """The peak of a run of `steps` steps; `bytes`: each ROWS key and "total", at the moment of the peak."""

    bytes: dict[str, int]
    peak_step: int
    steps: int
    fake: bool
    precision: str
    target: str  # the job the estimate is for (a GPU job unless train.device=cpu)
    vocab_size: int
    vocab_note: str
    num_params: int
    micro_batch: tuple[int, int]  # sequences x tokens
    accumulation: int
    overrides: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    allocator_peak: int | None = None  # a real CUDA run: torch.cuda.max_memory_allocated over the steps


class AllocatorPeak:
    """The CUDA caching allocator's peak from construction on (the model, built before, is counted as live)."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int | None:
        if not self.cuda:
            return None
        import torch

        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()


def estimate(overrides: list[str], steps: int = 2, real: bool = False, device: str = "cpu") -> MemoryEstimate:
    """`device` (real tensors only): "cuda" runs the steps on the GPU and also records the caching allocator's
    peak (torch.cuda.max_memory_allocated, from after the model is built) in `allocator_peak`."""
    start = time.perf_counter()
    cfg = load_config(overrides)
    check_world(cfg, 1)
    if cfg.train.zero_stage:
        raise ValueError(
            f"train.zero_stage={cfg.train.zero_stage}: the estimator counts ZeRO-0 at world size 1 (ZeRO-1/2 "
            f"add flat fp32 partitions it does not model); set train.zero_stage=0"
        )
    mode, target = target_precision(cfg)
    vocab = cfg.model.vocab_size or LLAMA_VOCAB
    note = "model.vocab_size" if cfg.model.vocab_size else "model.vocab_size unset: the LLaMA tokenizer's"
    with nullcontext() if real else FakeTensorMode():
        job = build(cfg, vocab, mode, real, steps, device)
        num_params = sum(p.numel() for p in job.model.parameters())
        allocator = AllocatorPeak(device)
        snap, peak_step = track_steps(job, PeakTracker())
    by_row = {key: sum(snap.get(kind, 0) for kind in kinds) for key, _, kinds in ROWS} | {
        "total": snap.get(_TOTAL_KEY, 0)
    }
    return MemoryEstimate(
        by_row,
        peak_step,
        steps,
        not real,
        mode,
        target,
        vocab,
        note,
        num_params,
        (cfg.train.micro_batch_size, cfg.data.seq_len),
        job.accumulation,
        list(overrides),
        time.perf_counter() - start,
        allocator.peak(),
    )


def report(est: MemoryEstimate, budget: int | None) -> list[str]:
    kind = "fake tensors (nothing allocated)" if est.fake else "real tensors"
    micro, seq = est.micro_batch
    params = f"{est.num_params / 1e9:.2f}B" if est.num_params >= 1e9 else f"{est.num_params / 1e6:.1f}M"
    lines = [
        f"memory of one training process: {est.steps} step(s) on {kind}, {params} parameters",
        f"  vocabulary {est.vocab_size} ({est.vocab_note}); precision {est.precision}, estimated for {est.target}",
        f"  {micro} x {seq} tokens per micro-batch, {est.accumulation} micro-batch(es) per step",
        f"peak at step {est.peak_step}, by kind at that moment:",
    ]
    for key, label, _ in [*ROWS, ("total", "total", ())]:
        lines.append(f"  {label:<28}{format_bytes(est.bytes[key]):>12}{est.bytes[key]:>18,d} B")
    if est.allocator_peak is not None:
        lines.append(f"  {'CUDA allocator peak':<28}{format_bytes(est.allocator_peak):>12}{est.allocator_peak:>18,d} B")
    if budget is not None:
        total = est.bytes["total"]
        verdict = "FITS" if total <= budget else "DOES NOT FIT"
        lines.append(
            f"{verdict}: peak {format_bytes(total)} vs budget {format_bytes(budget)} "
            f"({format_bytes(abs(budget - total))} {'to spare' if total <= budget else 'over'})"
        )
    return lines
