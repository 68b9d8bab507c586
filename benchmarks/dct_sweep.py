"""DCT low-rank AdamW defaults: sweep lr x scale x update_gap on the 20m quality run, with galore_adamw and full-rank
AdamW at their defaults as references.

    python benchmarks/dct_sweep.py [--parallel 12] [--lrs 0.001 0.003 0.01] [--scales 0.25 1.0] [--gaps 1 10 50 200]
        [quality.py's options: --steps 400 --seq-len 128 --batch 16 --micro-batch 16 ...] [-- extra overrides]

Every run is benchmarks/quality.py's run (train.py for real, same data, seed and token budget); `--parallel` runs
that many at once (on a GPU the 20m runs leave it mostly idle, so a sweep is minutes; its tokens/s are then not a
speed figure: benchmarks/speed.py measures speed alone). Extra overrides after `--` go to every run (e.g.
`train.precision=fp32` to match the CPU runs' arithmetic on a GPU). Writes benchmarks/results/dct_sweep.json and
prints the table, best first, with each run's loss relative to the best.
"""
from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402

REFERENCES = {"galore_adamw (defaults)": "optim=galore_adamw", "full adamw (defaults)": "optim=adamw"}


def grid(args) -> dict[str, str]:
    runs = {}
    for lr, scale, gap in itertools.product(args.lrs, args.scales, args.gaps):
        runs[f"dct lr={lr:g} scale={scale:g} T={gap}"] = f"optim=dct_adamw optim.lr={lr} optim.scale={scale} optim.update_gap={gap}"
    runs["dct_adamw (defaults)"] = "optim=dct_adamw"
    return runs | REFERENCES


def run_all(runs: dict[str, str], args) -> list[dict]:
    def one(item):
        label, extra = item
        safe = label.replace(" ", "_").replace("=", "").replace("(", "").replace(")", "")
        try:
            result = quality.run_one(safe, f"{extra} {args.extra}", args)
        except SystemExit as e:  # quality.run_one exits on a failed run; the sweep records it and goes on
            print(f"[sweep] {label}: FAILED {str(e)[-500:]}", flush=True)
            return {"label": label, "overrides": extra, "error": str(e)[-2000:]}
        print(f"[sweep] {label}: final val loss {result['final_val_loss']:.4f} ({result['wall_s']:.0f} s)", flush=True)
        return {**result, "label": label, "overrides": extra}

    with ThreadPoolExecutor(args.parallel) as pool:
        return list(pool.map(one, runs.items()))


def table(results: list[dict]) -> str:
    done = [r for r in results if "error" not in r]
    best = min(r["final_val_loss"] for r in done)
    lines = ["| run | overrides | final val loss | / best |", "|---|---|---|---|"]
    lines += [f"| {r['label']} | `{r['overrides']}` | failed | |" for r in results if "error" in r]
    for r in sorted(done, key=lambda r: r["final_val_loss"]):
        lines.append(f"| {r['label']} | `{r['overrides']}` | {r['final_val_loss']:.4f} | {r['final_val_loss'] / best:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.001, 0.003, 0.01])
    parser.add_argument("--scales", type=float, nargs="+", default=[0.25, 1.0])
    parser.add_argument("--gaps", type=int, nargs="+", default=[1, 10, 50, 200])
    parser.add_argument("--out", default="dct_sweep")
    parser.add_argument("--model", default="20m")
    parser.add_argument("--data", default=str(quality.WIKITEXT))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--evals", type=int, default=5)
    parser.add_argument("--eval-batches", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    args.nproc, args.extra = 1, " ".join(shlex.quote(e) for e in extra)
    results = run_all(grid(args), args)
    report = {"date": time.strftime("%Y-%m-%d"), "command": quality.relative(" ".join(map(shlex.quote, sys.argv))),
              "settings": [quality.relative(o) for o in quality.base_overrides(args)] + extra, "results": results}
    quality.RESULTS.mkdir(parents=True, exist_ok=True)
    (quality.RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
