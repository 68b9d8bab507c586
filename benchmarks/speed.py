"""Training speed of every param x optim combination vs full-rank AdamW: tokens/s and step-time ratio.

    python benchmarks/speed.py [--size 20m] [--batch 8] [--seq-len 128] [--repeats 12]
    python benchmarks/speed.py --compile --params full sltrain --optims adamw   # train.compile vs eager
    python benchmarks/speed.py --params full --optims adamw dct_adamw --steps-per-sample 10 \
        --variant "full+dct_adamw T=10" "optim.update_gap=10"     # extra combinations: "param+optim label", overrides

All combinations are built in one process on the same model size and batch; their training steps
(forward, backward, optimizer step) are timed interleaved, round-robin, so each sees the same machine
load, and the median of --repeats samples is reported. A sample is --steps-per-sample training steps (per
step in the table): optimizers with a periodic refresh (a new projection every T steps) are timed including
their refreshes at the configured gap, exactly amortised when the sample length is a multiple of T. Writes
benchmarks/results/speed.json. With --compile each combination also runs with its blocks compiled as
`train.compile=true` does (trainer/compile.py; compiled in the untimed warm-up step), and the
compiled/eager tokens/s ratio is printed and written to benchmarks/results/speed_compile.json instead.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from harness import RESULTS, build, timed_round_robin, train_step
from memory import OPTIMS, PARAMS

from trainer.compile import maybe_compile  # noqa: E402  (harness put the repository on sys.path)


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
    parser.add_argument("--compile", action="store_true", help="also time each combination with compiled blocks")
    parser.add_argument("--out", default="speed", help="results file benchmarks/results/<out>.json")
    parser.add_argument("--steps-per-sample", type=int, default=1, help="training steps per timed sample")
    parser.add_argument("--variant", nargs=2, action="append", default=[], metavar=("LABEL", "OVERRIDES"),
                        help="an extra combination: its label ('param+optim' then any words) and its overrides")
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
    for label, overrides in args.variant:
        param_name, optim_name = label.split()[0].split("+")  # "full+dct_adamw T=10": full, dct_adamw
        built[label] = build(args.size, param_name, optim_name, extra=overrides.split(), vocab=args.vocab, seq_len=args.seq_len)
    if args.compile:
        return compare_compiled(built, tokens, args, argv)
    for b in built.values():  # warm-up: allocate state, first refresh
        train_step(b, tokens)
    n = args.steps_per_sample
    samples = {k: (lambda b=b: [train_step(b, tokens) for _ in range(n)]) for k, b in built.items()}
    medians = {k: t / n for k, t in timed_round_robin(samples, args.repeats).items()}
    ref = medians["full+adamw"]
    rows = [{"combo": k, "param": k.split("+")[0], "optim": k.split("+")[1].split()[0], "step_s": t,
             "tokens_per_s": args.batch * args.seq_len / t, "speed_ratio": ref / t} for k, t in medians.items()]
    report = {"date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/speed.py " + " ".join(argv or sys.argv[1:]),
              "size": args.size, "batch": args.batch, "seq_len": args.seq_len, "threads": args.threads,
              "rows": rows, "not_supported": skipped}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=1))
    print(f"{'combination':<24} {'ms/step':>9} {'tokens/s':>9} {'speed vs full':>13}")
    for r in rows:
        print(f"{r['combo']:<24} {r['step_s'] * 1000:>9.1f} {r['tokens_per_s']:>9.0f} {r['speed_ratio']:>13.3f}")
    for k, why in skipped.items():
        print(f"{k:<24} not supported: {why[:90]}")
    return report


def compare_compiled(built: dict, tokens: torch.Tensor, args, argv) -> dict:
    """Eager vs compiled blocks, the same combinations and weights, timed interleaved."""
    runs, compile_s = {}, {}
    for key in list(built):
        compiled = build(args.size, key.split("+")[0], key.split("+")[1], vocab=args.vocab, seq_len=args.seq_len)
        maybe_compile(compiled.model, True)
        runs[f"{key} eager"], runs[f"{key} compiled"] = built[key], compiled
    for key, b in runs.items():  # warm-up; the compiled runs compile here
        start = time.perf_counter()
        train_step(b, tokens)
        compile_s[key] = time.perf_counter() - start
    medians = timed_round_robin({k: (lambda b=b: train_step(b, tokens)) for k, b in runs.items()}, args.repeats)
    rows = [{"combo": key, "eager_step_s": medians[f"{key} eager"], "compiled_step_s": medians[f"{key} compiled"],
             "eager_tokens_per_s": tokens[:, 1:].numel() / medians[f"{key} eager"],
             "compiled_tokens_per_s": tokens[:, 1:].numel() / medians[f"{key} compiled"],
             "compiled_over_eager": medians[f"{key} eager"] / medians[f"{key} compiled"],
             "first_step_compiled_s": compile_s[f"{key} compiled"]} for key in built]
    report = {"date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/speed.py " + " ".join(argv or sys.argv[1:]),
              "size": args.size, "batch": args.batch, "seq_len": args.seq_len, "threads": args.threads, "device": "cpu",
              "torch": torch.__version__, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "speed_compile.json").write_text(json.dumps(report, indent=1))
    print(f"{'combination':<24} {'eager tok/s':>11} {'compiled tok/s':>14} {'compiled/eager':>14} {'first step (s)':>14}")
    for r in rows:
        print(f"{r['combo']:<24} {r['eager_tokens_per_s']:>11.0f} {r['compiled_tokens_per_s']:>14.0f} "
              f"{r['compiled_over_eager']:>14.3f} {r['first_step_compiled_s']:>14.1f}")
    return report


if __name__ == "__main__":
    main()
