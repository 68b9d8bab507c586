"""Cost of robust aggregation, p gloo processes on the CPU: time per aggregate() call and bytes sent per rank,
`mean` (a bucketed all-reduce) against `flag` sharded and all-gather forms and the other robust aggregators.

    python -m benchmarks flag_cost                     # n = the debug model's 166k and 4M coordinates

Time: the slowest rank's (a barrier first), median over repeats. Bytes: counted from the collectives issued.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from benchmarks.harness import parser, relative, timed, write_json  # (and the strategies registered)
from benchmarks.processes import run_distributed
from trainer.registry import AGG
from trainer.strategy import BuildContext

VARIANTS = {  # label -> (registry name, config overrides)
    "mean": ("mean", {}),
    "flag sharded": ("flag", {"mode": "sharded"}),
    "flag allgather": ("flag", {"mode": "allgather"}),
    **{f"{name} sharded": (name, {"mode": "sharded"}) for name in ("median", "trimmed_mean", "multi_krum")},
}


def measure(rank, world_size, numels, repeats, out_path):
    torch.set_num_threads(1)
    ctx = BuildContext("debug", rank=rank, world_size=world_size)
    results = {}
    for numel in numels:
        gen = torch.Generator().manual_seed(rank)
        shapes = [numel // 4, numel // 4, numel - 2 * (numel // 4)]  # a few tensors, like a model's gradients
        base = [torch.randn(s, generator=gen) for s in shapes]
        for label, (name, overrides) in VARIANTS.items():
            aggregator = AGG.build(name, AGG.get(name).config_cls(**overrides), ctx)
            times = []
            for i in range(repeats + 2):  # two warm-up calls
                grads = [g.clone() for g in base]
                dist.barrier()
                metrics, seconds = timed(aggregator.aggregate, grads, step=i)
                elapsed = torch.tensor([seconds])
                dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
                times.append(float(elapsed))
            sent = metrics.get("agg/bytes_sent", 0.0)
            results[f"{numel}/{label}"] = {"numel": numel, "time_s": statistics.median(times[2:]), "bytes_sent": sent}
    if rank == 0:
        Path(out_path).write_text(json.dumps(results))


def main(argv=None) -> dict:
    args = parser(__doc__, "flag_cost", numel=[166_208, 4_194_304], repeats=10, nproc=4).parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    tmp = Path(tempfile.mkdtemp(prefix="flag-cost-")) / "raw.json"
    run_distributed(measure, args.nproc, args.numel, args.repeats, str(tmp))
    results = json.loads(tmp.read_text())
    header = f"{'n':>9} {'aggregator':<22} {'time ms':>9} {'x mean':>7} {'MB sent/rank':>13} {'x mean':>7}"
    lines = [f"p = {args.nproc} processes (gloo, CPU), median of {args.repeats} calls", header]
    ratios = {}
    for numel in args.numel:
        mean, sharded, gathered = (results[f"{numel}/{k}"] for k in ("mean", "flag sharded", "flag allgather"))
        for label in VARIANTS:
            r = results[f"{numel}/{label}"]
            lines.append(
                f"{numel:>9} {label:<22} {1e3 * r['time_s']:9.2f} {r['time_s'] / mean['time_s']:7.2f} "
                f"{r['bytes_sent'] / 2**20:13.3f} {r['bytes_sent'] / max(1.0, mean['bytes_sent']):7.2f}"
            )
        x = ratios[numel] = {
            "flag_time_over_mean": sharded["time_s"] / mean["time_s"],
            "allgather_bytes_over_sharded": gathered["bytes_sent"] / sharded["bytes_sent"],
            "allgather_time_over_sharded": gathered["time_s"] / sharded["time_s"],
        }
        lines.append(
            f"{'':>9} ratios: flag(sharded)/mean time {x['flag_time_over_mean']:.2f}x; all-gather/sharded bytes "
            f"{x['allgather_bytes_over_sharded']:.2f}x (counted; (p-1)n vs 2(p-1)n/p = p/2), "
            f"time {x['allgather_time_over_sharded']:.2f}x"
        )
    print("\n".join(lines))
    report = {"args": {**vars(args), "results_dir": relative(str(args.results_dir))}, "results": results}
    return write_json(args, {**report, "ratios": ratios, "table": lines})
