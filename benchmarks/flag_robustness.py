"""Robustness run: p CPU processes, f of them Byzantine, each attack; final validation loss of each aggregator
against a clean `mean` run with the same seed and steps (acceptance: every attack within 5%).

    python -m benchmarks flag_robustness   # p = 4, rank 1 Byzantine: mean, flag: 16 runs, ~15 min on 2 cores
    python -m benchmarks flag_robustness --nproc 8 --byzantine 2 --out flag_robustness_p8   # ~20 min

Each run is train.py under torchrun. A global batch of 256 sequences lets a subspace method tell honest workers'
gradients from an attacker's: at 4 sequences per worker they are nearly orthogonal (mean pairwise cosine ~0.03-0.1)
and any 3 of 4 span an equally good flag.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from benchmarks.harness import parser, relative, write_json
from benchmarks.processes import read_metrics, run_train

ATTACKS = ["sign_flip", "gaussian", "uniform_random", "alie", "fall_of_empires", "zero", "nan"]
AGGS = {  # label -> overrides; {m_spec} is the spec's flag dimension ceil((p + 1) / 2), {f} the Byzantine count
    "mean": ["agg=mean"],
    "flag": ["agg=flag"],  # the defaults: normalized aggregate, m = 1
    "flag_raw": ["agg=flag", "agg.normalized=false"],  # the spec (METHODS.md 5): raw aggregate, m = ceil((p + 1) / 2)
    "flag_m_spec": ["agg=flag", "agg.m={m_spec}"],  # normalized, m = ceil((p + 1) / 2)
    "median": ["agg=median"],
    "trimmed_mean": ["agg=trimmed_mean", "agg.num_trim={f}"],
    "multi_krum": ["agg=multi_krum", "agg.num_byzantine={f}"],
}
SETTINGS = {"steps": 100, "seq_len": 64, "batch": 256, "eval_batches": 8, "seed": 0, "tolerance": 0.05}


def agg_overrides(args, agg: str) -> list[str]:
    return [o.format(m_spec=math.ceil((args.nproc + 1) / 2), f=args.byzantine) for o in AGGS[agg]]


def base_overrides(args, work: Path) -> list[str]:
    steps = args.steps
    return [
        *f"model.size=debug data.seq_len={args.seq_len} data.vocab_size=512 log.progress=lines train.threads=1".split(),
        *f"train.steps={steps} train.eval_every={steps} train.log_every={steps} train.resume=never".split(),
        *f"train.save_every={steps} train.eval_batches={args.eval_batches} train.seed={args.seed}".split(),
        *f"train.global_batch_size={args.batch} train.micro_batch_size={args.batch // args.nproc}".split(),
        f"run.out_dir={work / 'runs'}",
        f"data.cache_dir={work / 'cache'}",
    ]


def run_one(args, name: str, overrides: list[str], work: Path) -> dict:
    proc, wall = run_train([*base_overrides(args, work), f"run.name={name}", *overrides], args.nproc)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    records = read_metrics(work / "runs" / name)

    def median(key: str) -> float | None:  # over steps (None if the aggregator logs none)
        values = sorted(r[key] for r in records if key in r)
        return values[len(values) // 2] if values else None

    vals = [r["val/loss"] for r in records if "val/loss" in r and r["step"] > 0]
    weights = [median(f"agg/weight_rank{r}") for r in args.byzantine_ranks]
    result = {
        "val_loss": float(vals[-1]) if vals else float("nan"),
        "byzantine_weights": weights,
        "byzantine_weight": max(weights) if None not in weights else None,
        "mean_cosine": median("agg/mean_cosine"),
        "wall_s": wall,
    }
    print(f"  {name:<32} val loss {result['val_loss']:.4f}  ({result['wall_s']:.0f} s)", flush=True)
    return result


def row(first: str, cells) -> str:
    return f"{first:<16}" + "".join(f"{c:>20}" for c in cells)


def loss_tables(args, results: dict, clean: float) -> tuple[dict, list[str]]:
    title = f"final val loss (ratio to the clean mean run, {clean:.4f}); Byzantine ranks {args.byzantine_ranks}"
    lines = [f"{title} of {args.nproc}", row("attack", args.aggs)]
    for attack in ["clean", *args.attacks]:
        losses = [results[f"{attack}/{agg}"]["val_loss"] for agg in args.aggs]
        cells = [f"{x:9.4f} ({x / clean:5.3f})" if math.isfinite(x) else f"{'nan':>9} {'(broken)':>7}" for x in losses]
        lines.append(row(attack, cells))
    verdict = {}
    lines += ["", f"worst ratio to the clean loss (tolerance {1 + args.tolerance:.2f})"]
    for agg in args.aggs:
        losses = {t: results[f"{t}/{agg}"]["val_loss"] for t in ["clean", *args.attacks]}
        ratios = {t: loss / clean if math.isfinite(loss) else float("inf") for t, loss in losses.items()}
        worst = max(ratios, key=ratios.get)
        ratio = ratios[worst] if math.isfinite(ratios[worst]) else None  # a nan loss (diverged): JSON has no inf
        ok = ratio is not None and ratio <= 1 + args.tolerance
        verdict[agg] = {"worst_attack": worst, "worst_ratio": ratio, "within_tolerance": ok}
        shown = "nan" if ratio is None else f"{ratio:.3f}"
        lines.append(f"{agg:<20} {shown:>8} ({worst})  {'within' if ok else 'NOT within'}")
    return verdict, lines


def weight_table(args, results: dict) -> list[str]:
    aggs = [a for a in args.aggs if any(results[f"{t}/{a}"]["byzantine_weight"] is not None for t in args.attacks)]
    if not aggs:
        return []
    title = f"weight of Byzantine ranks {args.byzantine_ranks} in the aggregate"
    lines = ["", f"{title} (the largest, median over steps; 1 = fully used, 0 = ignored)"]
    agg = next((a for a in aggs if results[f"clean/{a}"]["mean_cosine"] is not None), None)
    if agg is not None:
        cosine = results[f"clean/{agg}"]["mean_cosine"]
        lines.append(f"workers' mean pairwise gradient cosine in the clean {agg} run (median over steps): {cosine:.3f}")
    lines.append(row("attack", aggs))
    for attack in args.attacks:
        weights = [results[f"{attack}/{a}"]["byzantine_weight"] for a in aggs]
        lines.append(row(attack, ("-" if w is None else f"{w:.3f}" for w in weights)))
    return lines


def parse_args(argv):
    p = parser(__doc__, "flag_robustness", nproc=(4, "workers p (torchrun processes)"), byzantine=(1, "ranks 1..f"))
    p.add_argument("--aggs", nargs="+", default=["mean", "flag"], choices=list(AGGS))
    p.set_defaults(**SETTINGS, attacks=ATTACKS)  # fixed: no command changes them
    args = p.parse_args(argv)
    if not 1 <= args.byzantine < args.nproc or SETTINGS["batch"] % args.nproc:
        p.error(f"--byzantine must be in 1..nproc-1 and --nproc divide the batch, {SETTINGS['batch']}")
    args.byzantine_ranks = list(range(1, args.byzantine + 1))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    print(f"{args.nproc} processes, Byzantine ranks {args.byzantine_ranks}, {SETTINGS}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="flag-robustness-"))
    faults = [f"faults.byzantine_ranks=[{','.join(map(str, args.byzantine_ranks))}]"]
    runs = {f"clean/{agg}": agg_overrides(args, agg) for agg in ["mean", *args.aggs]}
    for attack in args.attacks:
        for agg in args.aggs:
            runs[f"{attack}/{agg}"] = [*agg_overrides(args, agg), *faults, f"faults.attack={attack}"]
    results = {key: run_one(args, key.replace("/", "-"), overrides, work) for key, overrides in runs.items()}
    clean = results["clean/mean"]["val_loss"]
    verdict, lines = loss_tables(args, results, clean)
    lines += weight_table(args, results)
    print("\n".join(lines))
    report = {"args": {**vars(args), "results_dir": relative(str(args.results_dir))}, "clean_val_loss": clean}
    return write_json(args, {**report, "results": results, "verdict": verdict, "table": lines})
