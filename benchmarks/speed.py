"""Training speed of every param x optim combination vs full-rank AdamW: tokens/s and step-time ratio.

    python benchmarks/speed.py [--size 20m] [--batch 8] [--seq-len 128] [--repeats 12]

All combinations are built in one process on the same model size and batch; their training steps
(forward, backward, optimizer step) are timed interleaved, round-robin, so each sees the same machine
load, and the median of --repeats steps is reported. Optimizers with a periodic refresh (a new
projection every T steps) are timed including their refreshes at the configured gap. Writes
benchmarks/results/speed.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from harness import RESULTS, build, timed_round_robin, train_step
from memory import OPTIMS, PARAMS


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="20m")
    parser.add_argument("--vocab", type=int, default=4096, help="the trained tokenizer's size (as in the quality runs)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--params", nargs="+", default=PARAMS)
    parser.add_argument("--optims", nargs="+", default=OPTIMS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=torch.Generator().manual_seed(0))
    built, skipped = {}, {}
    for p in args.params:
        for o in args.optims:
            try:
                built[f"{p}+{o}"] = build(args.size, p, o, vocab=args.vocab, seq_len=args.seq_len)
            except ValueError as e:
                skipped[f"{p}+{o}"] = str(e)
    for b in built.values():  # warm-up: allocate state, first refresh
        train_step(b, tokens)
    medians = timed_round_robin({k: (lambda b=b: train_step(b, tokens)) for k, b in built.items()}, args.repeats)
    ref = medians["full+adamw"]
    rows = [{"combo": k, "param": k.split("+")[0], "optim": k.split("+")[1], "step_s": t, "tokens_per_s": args.batch * args.seq_len / t,
             "speed_ratio": ref / t} for k, t in medians.items()]
    report = {"date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/speed.py " + " ".join(argv or sys.argv[1:]),
              "size": args.size, "batch": args.batch, "seq_len": args.seq_len, "threads": args.threads,
              "rows": rows, "not_supported": skipped}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "speed.json").write_text(json.dumps(report, indent=1))
    print(f"{'combination':<24} {'ms/step':>9} {'tokens/s':>9} {'speed vs full':>13}")
    for r in rows:
        print(f"{r['combo']:<24} {r['step_s'] * 1000:>9.1f} {r['tokens_per_s']:>9.0f} {r['speed_ratio']:>13.3f}")
    for k, why in skipped.items():
        print(f"{k:<24} not supported: {why[:90]}")
    return report


if __name__ == "__main__":
    main()
