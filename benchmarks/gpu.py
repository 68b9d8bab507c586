"""GPU figures: throughput of each strategy vs full rank in bf16, MFU of full-rank 1b, the largest model each fits.

    python benchmarks/gpu.py [--sizes 350m 1b] [--batch 8] [--seq-len 256] [--peak-tflops auto]

Skips with a message (and writes nothing) where no CUDA GPU is visible, so the report keeps showing
"not yet measured". Steps run under bf16 autocast with fp32 weights (as train.py does), attention through
flash-attn when installed, else scaled_dot_product_attention; timings are interleaved medians.
MFU = tokens/s x (6 N + 12 L H Q T) / the GPU's dense bf16 peak, the formula and peak table the training
loop logs (trainer/throughput.py).
Writes benchmarks/results/gpu.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from harness import RESULTS, VOCAB, build, timed_round_robin, train_step

from models import shape_for  # noqa: E402  (harness put the repository on sys.path)
from trainer import throughput as tp  # noqa: E402  (not `throughput`: a function below has that name)

COMBOS = [("full", "adamw"), ("sltrain", "adamw"), ("full", "dct_adamw"), ("sst", "adamw"), ("full", "galore_torch")]


def peak_tflops(arg: str) -> float:
    if arg != "auto":
        return float(arg)
    return tp.peak_tflops(torch.cuda.get_device_name()) or float("nan")


def bf16_step(b, tokens):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = train_step(b, tokens)
    torch.cuda.synchronize()
    return loss


def throughput(size: str, args) -> list[dict]:
    rows = []
    tokens = torch.randint(0, 32000, (args.batch, args.seq_len + 1), device="cuda")
    for p, o in COMBOS:
        try:
            b = build(size, p, o, seq_len=args.seq_len, device="cuda")
            bf16_step(b, tokens)
            t = timed_round_robin({"step": lambda: bf16_step(b, tokens)}, args.repeats)["step"]
            n_params = sum(x.numel() for x in b.model.parameters())
            rows.append({"size": size, "param": p, "optim": o, "step_s": t, "tokens_per_s": tokens[:, 1:].numel() / t,
                         "params": n_params, "peak_allocated": torch.cuda.max_memory_allocated()})
        except (ValueError, ImportError, torch.OutOfMemoryError) as e:
            rows.append({"size": size, "param": p, "optim": o, "error": str(e).splitlines()[0][:200]})
        finally:
            b = None
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        print(f"[gpu] {rows[-1]}", flush=True)  # as it goes: a run cut short still shows its rows
    full = next((r for r in rows if r["param"] == "full" and r["optim"] == "adamw" and "error" not in r), None)
    for r in rows:
        if full and "error" not in r:
            r["speed_ratio"] = r["tokens_per_s"] / full["tokens_per_s"]
    return rows


def largest_fit(args) -> dict:
    fits = {}
    if not args.fit_sizes:
        return fits
    tokens = torch.randint(0, 32000, (1, args.seq_len + 1), device="cuda")
    for p, o in COMBOS + [("sltrain", "dct_adamw")]:
        fits[f"{p}+{o}"] = None
        for size in args.fit_sizes:
            try:
                b = build(size, p, o, seq_len=args.seq_len, device="cuda")
                bf16_step(b, tokens)
                fits[f"{p}+{o}"] = size
            except (torch.OutOfMemoryError, ValueError):
                break
            finally:
                b = None
                torch.cuda.empty_cache()
    return fits


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["350m", "1b"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--peak-tflops", default="auto")
    parser.add_argument("--fit-sizes", nargs="*", default=["350m", "1b", "7b"],
                        help="sizes tried, in order, for the largest model each strategy fits (none: skip)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA GPU visible; skipped (the report marks GPU figures as not yet measured)")
        return
    rows = [r for size in args.sizes for r in throughput(size, args)]
    peak = peak_tflops(args.peak_tflops)
    for r in rows:
        if "error" not in r:
            flops = tp.flops_per_token(shape_for(r["size"]), VOCAB, args.seq_len)
            r["mfu"] = flops * r["tokens_per_s"] / (peak * 1e12)
    report = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(), "peak_bf16_tflops": peak,
              "command": "python benchmarks/gpu.py " + " ".join(argv or sys.argv[1:]), "rows": rows, "largest_fit": largest_fit(args)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gpu.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
