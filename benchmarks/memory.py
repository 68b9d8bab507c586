"""Memory of every param x optim combination: weights, gradients, optimizer state, peak step memory.

    python -m benchmarks memory [--sizes 60m 130m 350m] [--peak-size 130m] [--params ...] [--optims ...]
    python -m benchmarks memory --device cuda --bf16 --sizes 350m 1b 7b --fit --out gpu_memory   # largest that fits

Each size and combination runs in a fresh process (so one's peak is not another's), built as train.py builds it
(vocab 32000, fp32): two optimizer steps on random tokens, then its tensors' bytes, whole model and block projections.
Peak step memory on a CPU: the resident set's peak (heap trimmed, VmHWM reset) minus the process's before the model
existed; on a GPU, the allocator's peak. Ratios are against full-rank AdamW.
"""

from __future__ import annotations

import ctypes
import json
import re
import subprocess
import sys

from benchmarks import harness
from benchmarks.report import memory_section

PEAK_KEYS = ("peak_step_rss", "peak_step_allocated")  # CPU, GPU


def trim_and_reset_peak() -> None:
    """Return freed heap to the OS and reset the kernel's peak-RSS counter (VmHWM) of this process."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc's, as /proc is Linux's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def rss_bytes(field: str = "VmRSS") -> int:
    """This process's resident set (VmRSS) or its peak (VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def child(size: str, combo: dict, batch: int, seq_len: int, peak: bool, device: str, bf16: bool) -> dict:
    import torch

    from models import projection_modules

    torch.set_num_threads(1)
    baseline = rss_bytes()  # the interpreter and libraries, before any model tensor exists
    b = harness.build(size, combo["param"], combo["optim"], combo["extra"], seq_len=seq_len, device=device)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, harness.VOCAB, (batch, seq_len + 1), generator=gen).to(device)
    harness.train_step(b, tokens, autocast=bf16)  # the first step allocates gradients and optimizer state
    prefixes = tuple(f"{name}." for name, _, _, _ in projection_modules(b.model))  # the seven block projections
    out = {"size": size, **{k: combo[k] for k in ("label", "param", "optim")}, **harness.state_bytes(b)}
    out["projections"] = harness.state_bytes(b, lambda n: n.startswith(prefixes))  # what a weight-side method replaces
    if peak and device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        harness.train_step(b, tokens, autocast=bf16)
        out["peak_step_allocated"] = torch.cuda.max_memory_allocated()
    elif peak:
        trim_and_reset_peak()
        before = rss_bytes()
        harness.train_step(b, tokens, autocast=bf16)
        out |= {"rss_before_step": before - baseline, "peak_step_rss": rss_bytes("VmHWM") - baseline}
    return out


def run_child(args, size: str, combo, peak: bool, refused: str | None) -> dict:
    """child() in a fresh process; a refused or failed combination's row holds its one-line error instead."""
    spec = [size, combo._asdict(), args.batch, args.seq_len, peak, args.device, args.bf16]
    child_cmd = [sys.executable, "-m", "benchmarks", "memory", "--child", json.dumps(spec)]
    proc = refused or subprocess.run(child_cmd, capture_output=True, text=True, cwd=harness.ROOT)
    if refused or proc.returncode != 0:
        error = refused or (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return {"size": size, "label": combo.label, "param": combo.param, "optim": combo.optim, "error": error}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def with_ratios(rows: list[dict]) -> list[dict]:
    ref = {r["size"]: r for r in rows if r["param"] == "full" and r["optim"] == "adamw" and "error" not in r}
    for r in rows:
        base = ref.get(r["size"])
        if "error" in r or base is None:
            continue
        state = lambda x: x["trainable"] + x["grads"] + x["optim_state"]  # noqa: E731
        r["model_state_ratio"] = state(r) / state(base)  # trainable params + grads + optimizer state
        r["optim_state_ratio"] = r["optim_state"] / base["optim_state"]
        r["grad_optim_ratio"] = (r["grads"] + r["optim_state"]) / (base["grads"] + base["optim_state"])
        r["weights_ratio"] = r["weights"] / base["weights"]
        for key in (k for k in PEAK_KEYS if k in r and k in base):
            r["peak_step_ratio"] = r[key] / base[key]
    return rows


def plot(rows: list[dict], path) -> None:
    plt = harness.pyplot()
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4.5), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        ok = [r for r in rows if r["size"] == size and "error" not in r]
        parts = {key: [r[key] / 2**20 for r in ok] for key in ("weights", "grads", "optim_state")}
        harness.stacked_bars(ax, [r["label"].replace("+", "\n") for r in ok], parts)
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        ax.set(title=f"{size} (fp32, vocab 32000)", ylabel="MB")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def measure(args, overrides: list[str]) -> tuple[list[dict], dict]:
    rows, fits = [], {}
    for combo in harness.combos(args, overrides):
        try:  # a combination the strategies refuse: its one-line error, found cheaply on the debug model
            harness.build("debug", combo.param, combo.optim, combo.extra, vocab=256, seq_len=16)
            refused = None
        except ValueError as e:
            refused = f"ValueError: {e}"
        for size in args.sizes:
            rows.append(row := run_child(args, size, combo, args.fit or size == args.peak_size, refused))
            print(f"[memory] {size} {combo.label}: {row.get('error', 'ok')}", flush=True)
            if "error" in row and args.fit:
                break  # the next size would not fit either
            fits[combo.label] = size
    return rows, fits


def main(argv=None) -> dict:
    options, overrides = harness.split_overrides(argv)
    if options[:1] == ["--child"]:
        return print(json.dumps(child(*json.loads(options[1]))))
    p = harness.parser(__doc__, "memory", sizes=["60m", "130m", "350m"], batch=4, seq_len=256)
    p.add_argument("--peak-size", default="130m", help="the size whose peak step memory is measured ('none': none)")
    p.add_argument("--fit", action="store_true", help="the largest of --sizes (in order) each combination fits")
    harness.add_combo_args(p)
    args = p.parse_args(options)
    rows, fits = measure(args, overrides)
    rows = sorted(with_ratios(rows), key=lambda r: args.sizes.index(r["size"]))
    report = {"command": harness.command("memory", argv)} | {k: vars(args)[k] for k in ("batch", "seq_len", "device")}
    report |= {"rows": rows, **({"largest_fit": fits} if args.fit else {})}
    return harness.write_json(args, report, memory_section, lambda path: plot(rows, path))
