"""The CPU benchmark suite, end to end, then the report docs/RESULTS.md.

    python benchmarks/suite.py                 # everything below, then the report
    python benchmarks/suite.py --report-only   # re-render docs/RESULTS.md from benchmarks/results/*.json

1. memory.py: bytes of weights / gradients / optimizer state of every param x optim combination
   (60m and 130m, vocab 32000), and the peak memory of a 130m training step;
2. speed.py: interleaved step timing of every combination on the 20m model;
3. quality.py: every strategy and the galore-torch peer on ../shared/data/wikitext103_valid.txt, 20m
   model, the same seed and token budget;
4. dct_vs_galore.py: the DCT optimizer against galore-torch on the 130m projections, rank 256;
5. flag_cost.py: the aggregation cost of Flag vs mean;
6. memory_scale.py --real: the estimator's peak of a 1b and 7b step per low-memory configuration, and two
   real-tensor checks of it (about 35 minutes).
The low-memory quality runs (quality_lowmem_*.json) come from their commands in docs/RESULTS.md.
The Byzantine robustness table comes from benchmarks/flag_robustness.py (about 30 minutes on its
own), included in the report when its results exist. GPU figures come from benchmarks/gpu.py.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

QUALITY_RUNS = [
    ("full", "param=full optim=adamw"),
    ("sltrain", "param=sltrain"),
    ("lowrank", "param=lowrank"),
    ("sst", "param=sst"),
    ("dct_adamw", "optim=dct_adamw"),
    ("galore_adamw", "optim=galore_adamw"),
    ("galore_torch", "optim=galore_torch"),
]


def stage(name: str, args: list[str]) -> float:
    print(f"\n=== {name}: python {' '.join(args)}", flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)
    took = time.perf_counter() - start
    print(f"=== {name}: {took:.0f} s", flush=True)
    return took


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--quality-steps", type=int, default=200)
    parser.add_argument("--skip", nargs="*", default=[], choices=["memory", "speed", "quality", "dct", "flag", "memory_scale"])
    args = parser.parse_args(argv)
    if not args.report_only:
        b = "benchmarks/"
        timings = {}
        if "memory" not in args.skip:
            timings["memory"] = stage("memory", [b + "memory.py", "--sizes", "60m", "130m", "--peak-size", "130m"])
        if "speed" not in args.skip:
            timings["speed"] = stage("speed", [b + "speed.py", "--size", "20m"])
        if "dct" not in args.skip:
            timings["dct"] = stage("dct vs galore-torch", [b + "dct_vs_galore.py", "--size", "130m", "--rank", "256", "--gap", "4", "--steps", "13"])
        if "flag" not in args.skip:
            timings["flag"] = stage("flag cost", [b + "flag_cost.py"])
        if "memory_scale" not in args.skip:
            timings["memory_scale"] = stage("memory at scale", [b + "memory_scale.py", "--real"])
        if "quality" not in args.skip:
            runs = [x for pair in QUALITY_RUNS for x in pair]
            timings["quality"] = stage("quality", [b + "quality.py", "--out", "suite", "--steps", str(args.quality_steps),
                                                   "--seq-len", "64", "--batch", "8", "--micro-batch", "8", "--", *runs])
        print("\nsuite stages (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), flush=True)
    from report import write_report

    path = write_report()
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
