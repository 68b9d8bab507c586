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
    minutes: float  # about, on the machine that measured it
    device: str
    command_line: str  # `python -m benchmarks <this>`, shell-quoted

    @property
    def benchmark(self) -> str:
        return self.command_line.split()[0]

    def command(self) -> list[str]:
        benchmark, *args = shlex.split(self.command_line)
        return [sys.executable, "-m", "benchmarks", benchmark, "--out", self.name, *args]

    def outputs(self) -> list[str]:
        return [f"{self.name}.json"] + [f"{self.name}.png"] * (self.benchmark in PLOTS)


# name, about minutes, device, then the command after `python -m benchmarks` (an indented line continues it).
# checkpoint_io_main: the tree before per-rank hashing, run with its own script (docs/cluster.md's "before" row).
TABLE = f"""
memory                     6  cpu  memory --sizes 60m 130m --peak-size 130m
speed                      3  cpu  speed --size 20m
dct_vs_galore              5  cpu  dct_vs_galore --size 130m --rank 256 --gap 4 --steps 13
flag_cost                  2  cpu  flag_cost
memory_scale              35  cpu  memory_scale --real
quality_suite             12  cpu  quality {SHORT} -- full 'param=full optim=adamw' sltrain param=sltrain
    lowrank param=lowrank sst param=sst dct_adamw optim=dct_adamw galore_adamw optim=galore_adamw
    galore_torch optim=galore_torch
speed_compile              4  cpu  speed --compile --params full sltrain --optims adamw
speed_dct_gap              8  cpu  speed --params full --optims adamw dct_adamw --repeats 5 --steps-per-sample 10
    --variant 'full+dct_adamw T=10' optim.update_gap=10 --variant 'full+dct_adamw T=50' optim.update_gap=50
sltrain_memory             4  cpu  memory --sizes 130m --params full sltrain lowrank --optims adamw --batch 2
sltrain_speed              6  cpu  speed --params full sltrain lowrank --optims adamw --batch 16 --repeats 10
sst_memory                 5  cpu  memory --sizes 130m --params full sst --optims adamw --peak-size none
sst_throughput             6  cpu  speed --params full sst --optims adamw --batch 16 --repeats 6 --hook-steps 1200
quality_sltrain           60  cpu  quality {LONG} -- full param=full sltrain param=sltrain lowrank param=lowrank
quality_sst               60  cpu  quality {LONG} -- full param=full
    sst 'param=sst param.rank=64 param.update_every=50 param.rewarm_steps=5'
    lowrank64 'param=lowrank param.rank=64 param.alpha=16'
quality_dct                6  cpu  quality {SHORT} -- dct_adamw_recipe 'optim=dct_adamw optim.lr=0.01 optim.scale=0.25'
    galore_adamw 'optim=galore_adamw optim.update_gap=20' galore_torch 'optim=galore_torch optim.update_proj_gap=20'
quality_lowmem_full       40  cpu  quality {LONG} -- full param=full full_low 'param=full {LOWMEM}'
quality_lowmem_sltrain    40  cpu  quality {LONG} -- sltrain param=sltrain sltrain_low 'param=sltrain {LOWMEM}'
dct_sweep_suite           20  cpu  quality {SHORT} --parallel 5 --grid optim=dct_adamw optim.lr=0.003
    optim.scale=1.0 optim.update_gap=10,50 -- {DCT_DEFAULTS}
flag_robustness           35  cpu  flag_robustness --aggs mean flag flag_raw flag_m_spec
flag_robustness_p8        32  cpu  flag_robustness --nproc 8 --byzantine 2 --aggs mean flag flag_m_spec
flag_robustness_baselines 25  cpu  flag_robustness --aggs median trimmed_mean multi_krum
checkpoint_io              3  cpu  checkpoint_io --size 350m
checkpoint_io_main         3  cpu  checkpoint_io --size 350m --rev d83f4ee^ --script-rev d83f4ee
prepare_speed              1  cpu  prepare_speed
dct_sweep                 15  cuda quality {LONG} --parallel 26 --grid optim=dct_adamw optim.lr=0.001,0.003,0.01
    optim.scale=0.25,1.0 optim.update_gap=1,10,50,200 --extra train.precision=fp32 train.device=cuda
    -- {DCT_DEFAULTS}
gpu                        5  cuda speed {GPU} --sizes 350m 1b --seq-len 256 --repeats 10 --params full
    --optims adamw dct_adamw galore_torch --variant sltrain+adamw '' --variant sst+adamw ''
gpu_memory                10  cuda memory {GPU} --sizes 350m 1b 7b --fit --params full sltrain sst
    --optims adamw dct_adamw
"""
ENTRIES = [
    Entry(name, float(minutes), device, command)
    for name, minutes, device, command in (
        line.split(maxsplit=3) for line in TABLE.replace("\n    ", " ").strip().splitlines()
    )
]


def produced() -> set[str]:
    """Every results file the suite writes (the only files docs/RESULTS.md may be rendered from)."""
    return {name for e in ENTRIES for name in e.outputs()}


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
    names = [e.name for e in ENTRIES]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", default=names, choices=names, metavar="ENTRY")
    p.add_argument("--skip", nargs="+", default=[], choices=names, metavar="ENTRY")
    p.add_argument("--dry-run", action="store_true", help="print each entry's command; run nothing")
    p.add_argument("--report-only", action="store_true", help="only re-render docs/RESULTS.md")
    args = p.parse_args(argv)
    entries = [] if args.report_only else [e for e in ENTRIES if e.name in args.only and e.name not in args.skip]
    took = {e.name: run(e, args.dry_run) for e in entries}
    if args.dry_run:
        return
    if took:
        print("suite (s): " + ", ".join(f"{k} {v:.0f}" for k, v in took.items() if v is not None), flush=True)
    from benchmarks.report import write_report

    print(f"wrote {write_report().relative_to(ROOT)}")
