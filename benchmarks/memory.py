"""Memory of every param x optim combination: weights, gradients, optimizer state, peak step memory.

    python benchmarks/memory.py [--sizes 60m 130m 350m] [--peak-size 130m] [--params ...] [--optims ...]

For each size and combination, in a fresh process: build the model as train.py does (vocab 32000, fp32),
run two optimizer steps on random tokens, and count the bytes of the tensors (parameters + buffers,
gradients, optimizer state). For --peak-size it also measures the peak resident memory of one
training step (heap trimmed and the kernel's peak-RSS counter reset just before the step), minus the
process's resident memory before the model was built (the interpreter and libraries). Ratios are
against full-rank AdamW of the same size. Writes benchmarks/results/memory.json and memory.png.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from harness import RESULTS, ROOT

PARAMS = ["full", "sltrain", "lowrank", "sst"]
OPTIMS = ["adamw", "dct_adamw", "galore_adamw", "galore_torch"]


def child(size: str, param_name: str, optim_name: str, batch: int, seq_len: int, peak: bool) -> dict:
    import torch

    from harness import VOCAB, build, rss_bytes, state_bytes, train_step, trim_and_reset_peak

    torch.set_num_threads(1)
    baseline = rss_bytes()  # the interpreter and libraries, before any model tensor exists
    b = build(size, param_name, optim_name, seq_len=seq_len)
    tokens = torch.randint(0, VOCAB, (batch, seq_len + 1), generator=torch.Generator().manual_seed(0))
    train_step(b, tokens)  # the first step allocates gradients and optimizer state
    out = {"size": size, "param": param_name, "optim": optim_name, **state_bytes(b)}
    if peak:
        trim_and_reset_peak()
        before = rss_bytes()
        train_step(b, tokens)
        out |= {"rss_before_step": before - baseline, "peak_step_rss": rss_bytes("VmHWM") - baseline}
    return out


def run_child(args, size, p, o, peak) -> dict:
    cmd = [sys.executable, __file__, "--child", size, p, o, str(args.batch), str(args.seq_len), str(int(peak))]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        error = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return {"size": size, "param": p, "optim": o, "error": error}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def refusal(p: str, o: str) -> str | None:
    """The one-line error of a combination the strategies refuse, found cheaply on the debug model."""
    from harness import build

    try:
        build("debug", p, o, vocab=256, seq_len=16)
    except ValueError as e:
        return f"ValueError: {e}"
    return None


def with_ratios(rows: list[dict]) -> list[dict]:
    ref = {r["size"]: r for r in rows if r["param"] == "full" and r["optim"] == "adamw" and "error" not in r}
    for r in rows:
        base = ref.get(r["size"])
        if "error" in r or base is None:
            continue
        state, base_state = (r["trainable"] + r["grads"] + r["optim_state"]), (base["trainable"] + base["grads"] + base["optim_state"])
        r["model_state_ratio"] = state / base_state  # trainable params + grads + optimizer state
        r["optim_state_ratio"] = r["optim_state"] / base["optim_state"]
        r["grad_optim_ratio"] = (r["grads"] + r["optim_state"]) / (base["grads"] + base["optim_state"])
        r["weights_ratio"] = r["weights"] / base["weights"]
        if "peak_step_rss" in r and "peak_step_rss" in base:
            r["peak_step_ratio"] = r["peak_step_rss"] / base["peak_step_rss"]
    return rows


def table(rows: list[dict]) -> str:
    mb = 2**20
    head = f"{'size':<6} {'param':<8} {'optim':<13} {'weights MB':>10} {'grads MB':>9} {'optim MB':>9} {'state/full':>10} {'peak MB':>8} {'peak/full':>9}"
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['size']:<6} {r['param']:<8} {r['optim']:<13} not supported: {r['error'][:90]}")
            continue
        peak = f"{r['peak_step_rss'] / mb:>8.0f}" if "peak_step_rss" in r else f"{'-':>8}"
        peak_ratio = f"{r['peak_step_ratio']:>9.3f}" if "peak_step_ratio" in r else f"{'-':>9}"
        lines.append(f"{r['size']:<6} {r['param']:<8} {r['optim']:<13} {r['weights'] / mb:>10.1f} {r['grads'] / mb:>9.1f} "
                     f"{r['optim_state'] / mb:>9.1f} {r.get('model_state_ratio', float('nan')):>10.3f} {peak} {peak_ratio}")
    return "\n".join(lines)


def plot(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for r in rows}, key=lambda s: [r["size"] for r in rows].index(s))
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4.5), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        ok = [r for r in rows if r["size"] == size and "error" not in r]
        labels = [f"{r['param']}\n{r['optim']}" for r in ok]
        bottom = [0.0] * len(ok)
        for key, color in (("weights", "tab:blue"), ("grads", "tab:orange"), ("optim_state", "tab:green")):
            vals = [r[key] / 2**20 for r in ok]
            ax.bar(range(len(ok)), vals, bottom=bottom, color=color, label=key)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xticks(range(len(ok)), labels, rotation=60, fontsize=7)
        ax.set(title=f"{size} (fp32, vocab 32000)", ylabel="MB")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["60m", "130m", "350m"])
    parser.add_argument("--peak-size", default="130m")
    parser.add_argument("--params", nargs="+", default=PARAMS)
    parser.add_argument("--optims", nargs="+", default=OPTIMS)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    args = parser.parse_args(argv)
    rows = []
    for size in args.sizes:
        for p in args.params:
            for o in args.optims:
                refused = refusal(p, o)
                rows.append({"size": size, "param": p, "optim": o, "error": refused} if refused
                            else run_child(args, size, p, o, peak=size == args.peak_size))
                print(f"[memory] {size} {p} {o}: {'error' if 'error' in rows[-1] else 'ok'}", flush=True)
    rows = with_ratios(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/memory.py " + " ".join(argv or sys.argv[1:]),
              "batch": args.batch, "seq_len": args.seq_len, "rows": rows}
    (RESULTS / "memory.json").write_text(json.dumps(report, indent=1))
    plot(rows, RESULTS / "memory.png")
    print(table(rows))
    return report


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        size, p, o, batch, seq_len, peak = sys.argv[2:8]
        print(json.dumps(child(size, p, o, int(batch), int(seq_len), peak == "1")))
    else:
        main()
