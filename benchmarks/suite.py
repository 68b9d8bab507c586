"""The suite: every run whose figures docs/ and README cite, as one registered list, then docs/RESULTS.md.

    python -m benchmarks suite                       # every CPU entry (GPU ones where a GPU is), then the report
    python -m benchmarks suite --only memory speed   # these entries; --skip NAME ... leaves some out

An entry's name is its results file's stem (`sltrain_memory` writes benchmarks/results/sltrain_memory.json),
and docs/RESULTS.md is rendered only from these files. Times are a 2-core CPU's (GPU entries: one H200).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from dataclasses import dataclass

import torch

from benchmarks.harness import ROOT, timed

PLOTS = {"memory", "quality", "memory_scale"}  # the benchmarks that also draw <out>.png
LONG = "--steps 400 --seq-len 128 --batch 16 --micro-batch 16"  # 20m, 400 steps x 2048 tokens
SHORT = "--steps 200 --seq-len 64 --batch 8 --micro-batch 8"  # 20m, 200 steps x 512 tokens
LOWMEM = "train.precision=pure_bf16 optim.state_dtype=int8 optim.step_in_backward=true"
DCT_DEFAULTS = (
    "'dct_adamw (defaults)' optim=dct_adamw 'galore_adamw (defaults)' optim=galore_adamw "
    "'full adamw (defaults)' optim=adamw"
)
GPU = "--device cuda --bf16"


@dataclass
class Entry:
    name: str  # the results file's stem
    command_line: str  # `python -m benchmarks <this>`, shell-quoted
    minutes: float  # about, on the machine that measured it
    device: str = "cpu"

    @property
    def benchmark(self) -> str:
        return self.command_line.split()[0]

    def command(self) -> list[str]:
        benchmark, *args = shlex.split(self.command_line)
        return [sys.executable, "-m", "benchmarks", benchmark, "--out", self.name, *args]

    def outputs(self) -> list[str]:
        return [f"{self.name}.json"] + [f"{self.name}.png"] * (self.benchmark in PLOTS)


ENTRIES = [
    Entry("memory", "memory --sizes 60m 130m --peak-size 130m", 6),
    Entry("speed", "speed --size 20m", 3),
    Entry("dct_vs_galore", "dct_vs_galore --size 130m --rank 256 --gap 4 --steps 13", 5),
    Entry("flag_cost", "flag_cost", 2),
    Entry("memory_scale", "memory_scale --real", 35),
    Entry(
        "quality_suite",
        f"quality {SHORT} -- full 'param=full optim=adamw' sltrain param=sltrain lowrank param=lowrank "
        "sst param=sst dct_adamw optim=dct_adamw galore_adamw optim=galore_adamw "
        "galore_torch optim=galore_torch",
        12,
    ),
    Entry("speed_compile", "speed --compile --params full sltrain --optims adamw", 4),
    Entry(
        "speed_dct_gap",
        "speed --params full --optims adamw dct_adamw --repeats 5 --steps-per-sample 10 --variant "
        "'full+dct_adamw T=10' optim.update_gap=10 --variant 'full+dct_adamw T=50' optim.update_gap=50",
        8,
    ),
    Entry("sltrain_memory", "memory --sizes 130m --params full sltrain lowrank --optims adamw --batch 2", 4),
    Entry("sltrain_speed", "speed --params full sltrain lowrank --optims adamw --batch 16 --repeats 10", 6),
    Entry("sst_memory", "memory --sizes 130m --params full sst --optims adamw --peak-size none", 5),
    Entry("sst_throughput", "speed --params full sst --optims adamw --batch 16 --repeats 6 --hook-steps 1200", 6),
    Entry("quality_sltrain", f"quality {LONG} -- full param=full sltrain param=sltrain lowrank param=lowrank", 60),
    Entry(
        "quality_sst",
        f"quality {LONG} -- full param=full sst 'param=sst param.rank=64 param.update_every=50 "
        "param.rewarm_steps=5' lowrank64 'param=lowrank param.rank=64 param.alpha=16'",
        60,
    ),
    Entry(
        "quality_dct",
        f"quality {SHORT} -- dct_adamw_recipe 'optim=dct_adamw optim.lr=0.01 optim.scale=0.25' "
        "galore_adamw 'optim=galore_adamw optim.update_gap=20' "
        "galore_torch 'optim=galore_torch optim.update_proj_gap=20'",
        6,
    ),
    Entry("quality_lowmem_full", f"quality {LONG} -- full param=full full_low 'param=full {LOWMEM}'", 40),
    Entry(
        "quality_lowmem_sltrain", f"quality {LONG} -- sltrain param=sltrain sltrain_low 'param=sltrain {LOWMEM}'", 40
    ),
    Entry(
        "dct_sweep_suite",
        f"quality {SHORT} --parallel 5 --grid optim=dct_adamw optim.lr=0.003 optim.scale=1.0 "
        f"optim.update_gap=10,50 -- {DCT_DEFAULTS}",
        20,
    ),
    Entry("flag_robustness", "flag_robustness --aggs mean flag flag_raw flag_m_spec", 35),
    Entry("flag_robustness_p8", "flag_robustness --nproc 8 --byzantine 2 --aggs mean flag flag_m_spec", 32),
    Entry("flag_robustness_baselines", "flag_robustness --aggs median trimmed_mean multi_krum", 25),
    Entry("checkpoint_io", "checkpoint_io --size 350m", 3),
    # The tree before per-rank hashing (the "before" row of docs/cluster.md), with the script that measured it.
    Entry("checkpoint_io_main", "checkpoint_io --size 350m --rev d83f4ee^ --script-rev d83f4ee", 3),
    Entry("prepare_speed", "prepare_speed", 10),
    Entry(
        "dct_sweep",
        f"quality {LONG} --parallel 26 --grid optim=dct_adamw optim.lr=0.001,0.003,0.01 "
        "optim.scale=0.25,1.0 optim.update_gap=1,10,50,200 --extra train.precision=fp32 train.device=cuda "
        f"-- {DCT_DEFAULTS}",
        15,
        "cuda",
    ),
    Entry(
        "gpu",
        f"speed {GPU} --sizes 350m 1b --seq-len 256 --repeats 10 --params full --optims adamw dct_adamw "
        "galore_torch --variant sltrain+adamw '' --variant sst+adamw ''",
        5,
        "cuda",
    ),
    Entry(
        "gpu_memory",
        f"memory {GPU} --sizes 350m 1b 7b --fit --params full sltrain sst --optims adamw dct_adamw",
        10,
        "cuda",
    ),
]


def produced() -> set[str]:
    """Every results file the suite writes (the only files docs/RESULTS.md may be rendered from)."""
    return {name for e in ENTRIES for name in e.outputs()}


def selected(args) -> list[Entry]:
    unknown = (set(args.only or []) | set(args.skip)) - {e.name for e in ENTRIES}
    if unknown:
        sys.exit(f"suite: no entry named {', '.join(sorted(unknown))}")
    return [e for e in ENTRIES if (args.only is None or e.name in args.only) and e.name not in args.skip]


def run(entry: Entry, dry_run: bool) -> float | None:
    shown = shlex.join(["python", *entry.command()[1:]])
    print(f"=== {entry.name} (~{entry.minutes:g} min, {entry.device}): {shown}", flush=True)
    if dry_run:
        return None
    if entry.device == "cuda" and not torch.cuda.is_available():
        print(f"=== {entry.name}: skipped, no CUDA GPU visible", flush=True)
        return None
    return timed(subprocess.run, entry.command(), cwd=ROOT, check=True)[1]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", default=None, metavar="ENTRY")
    p.add_argument("--skip", nargs="+", default=[], metavar="ENTRY")
    p.add_argument("--dry-run", action="store_true", help="print each entry's command; run nothing")
    p.add_argument("--report-only", action="store_true", help="only re-render docs/RESULTS.md")
    args = p.parse_args(argv)
    entries = [] if args.report_only else selected(args)
    took = {e.name: run(e, args.dry_run) for e in entries}
    if took and not args.dry_run:
        print("suite (s): " + ", ".join(f"{k} {v:.0f}" for k, v in took.items() if v is not None), flush=True)
    if not args.dry_run:
        from benchmarks.report import write_report

        print(f"wrote {write_report().relative_to(ROOT)}")
