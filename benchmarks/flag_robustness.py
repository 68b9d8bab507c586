"""Robustness run: p CPU processes, f of them Byzantine, each attack; final validation loss of each aggregator
against a clean `mean` run with the same seed and steps (acceptance: every attack within --tolerance).

    python -m benchmarks flag_robustness   # p = 4, rank 1 Byzantine: mean, flag: 16 runs, ~15 min on 2 cores
    python -m benchmarks flag_robustness --nproc 8 --byzantine 2 --out flag_robustness_p8   # ~20 min

Each run is train.py under torchrun (the debug model on the built-in corpus), as a user would start it.
The default global batch, 256 sequences, is where the honest workers' gradients agree enough for a subspace
method to tell them from an attacker: with 4 sequences per worker (`--batch 16`) they are nearly orthogonal
(mean pairwise cosine ~0.03-0.1), every 3 of 4 workers span an equally good flag, and no flag-based aggregate
can single the attacker out.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from benchmarks.harness import parser, relative, write_json
from benchmarks.processes import read_metrics, run_train

ATTACKS = ["sign_flip", "gaussian", "uniform_random", "alie", "fall_of_empires", "zero", "nan"]
AGGS = {  # label -> overrides; {m_spec} is the spec's flag dimension ceil((p + 1) / 2)
    "mean": ["agg=mean"],
    "flag": ["agg=flag"],  # the defaults: normalized aggregate, m = 1
    "flag_raw": ["agg=flag", "agg.normalized=false"],  # the spec (METHODS.md 5): raw aggregate, m = ceil((p + 1) / 2)
    "flag_m_spec": ["agg=flag", "agg.m={m_spec}"],  # normalized, m = ceil((p + 1) / 2)
    "median": ["agg=median"],
    "trimmed_mean": ["agg=trimmed_mean"],
    "multi_krum": ["agg=multi_krum"],
}


def agg_overrides(args, agg: str) -> list[str]:
    m_spec = math.ceil((args.nproc + 1) / 2)
    f = args.byzantine  # the aggregators that take f are told it
    extra = {"multi_krum": [f"agg.num_byzantine={f}"], "trimmed_mean": [f"agg.num_trim={f}"]}.get(agg, [])
    return [o.format(m_spec=m_spec) for o in AGGS[agg]] + extra


def base_overrides(args, out_dir: Path, cache: Path) -> list[str]:
    return [
        "model.size=debug",
        f"data.seq_len={args.seq_len}",
        "data.vocab_size=512",
        f"train.steps={args.steps}",
        f"train.global_batch_size={args.batch}",
        f"train.micro_batch_size={args.batch // args.nproc}",
        f"train.eval_every={args.steps}",
        f"train.eval_batches={args.eval_batches}",
        f"train.log_every={args.steps}",
        f"train.save_every={args.steps}",
        "train.threads=1",
        f"train.seed={args.seed}",
        "train.resume=never",
        "log.progress=lines",
        f"run.out_dir={out_dir}",
        f"data.cache_dir={cache}",
    ]


def run_one(args, name: str, overrides: list[str], out_dir: Path, cache: Path) -> dict:
    proc, wall = run_train([*base_overrides(args, out_dir, cache), f"run.name={name}", *overrides], args.nproc)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    records = read_metrics(out_dir / name)

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


def loss_table(args, results: dict, clean: float) -> list[str]:
    header = f"{'attack':<16}" + "".join(f"{a:>20}" for a in args.aggs)
    lines = [
        f"final val loss (ratio to the clean mean run, {clean:.4f}); Byzantine ranks {args.byzantine_ranks} of "
        f"{args.nproc}",
        header,
    ]
    for attack in ["clean", *args.attacks]:
        cells = []
        for agg in args.aggs:
            r = results.get(f"{attack}/{agg}")
            loss = r["val_loss"] if r else float("nan")
            cells.append(f"{loss:9.4f} ({loss / clean:5.3f})" if math.isfinite(loss) else f"{'nan':>9} {'(broken)':>7}")
        lines.append(f"{attack:<16}" + "".join(f"{c:>20}" for c in cells))
    return lines


def verdicts(args, results: dict, clean: float) -> dict[str, dict]:
    """Each aggregator's worst ratio to the clean loss over the clean run and every attack."""
    out = {}
    for agg in args.aggs:
        losses = {t: results.get(f"{t}/{agg}", {}).get("val_loss", float("nan")) for t in ["clean", *args.attacks]}
        ratios = {t: loss / clean if math.isfinite(loss) else float("inf") for t, loss in losses.items()}
        worst = max(ratios, key=ratios.get)
        finite = math.isfinite(ratios[worst])  # a nan loss (diverged) is stored as None, JSON has no inf
        out[agg] = {
            "worst_attack": worst,
            "worst_ratio": ratios[worst] if finite else None,
            "within_tolerance": finite and ratios[worst] <= 1 + args.tolerance,
        }
    return out


def verdict_lines(args, verdict: dict) -> list[str]:
    lines = ["", f"worst ratio to the clean loss (tolerance {1 + args.tolerance:.2f})"]
    for agg, v in verdict.items():
        shown = "nan" if v["worst_ratio"] is None else f"{v['worst_ratio']:.3f}"
        lines.append(
            f"{agg:<20} {shown:>8} ({v['worst_attack']})  {'within' if v['within_tolerance'] else 'NOT within'}"
        )
    return lines


def weight_table(args, results: dict) -> list[str]:
    """The Byzantine ranks' largest logged weight (median over steps) for the aggregators that log one."""
    aggs = [
        a
        for a in args.aggs
        if any(results.get(f"{t}/{a}", {}).get("byzantine_weight") is not None for t in args.attacks)
    ]
    if not aggs:
        return []
    cosines = [
        results[f"clean/{a}"]["mean_cosine"]
        for a in aggs
        if results.get(f"clean/{a}", {}).get("mean_cosine") is not None
    ]
    lines = [
        "",
        f"weight of Byzantine ranks {args.byzantine_ranks} in the aggregate "
        "(the largest, median over steps; 1 = fully used, 0 = ignored)",
    ]
    if cosines:
        lines.append(
            f"workers' mean pairwise gradient cosine in the clean {aggs[0]} run (median over steps): {cosines[0]:.3f}"
        )
    lines.append(f"{'attack':<16}" + "".join(f"{a:>20}" for a in aggs))
    for attack in args.attacks:
        ws = [results.get(f"{attack}/{a}", {}).get("byzantine_weight") for a in aggs]
        lines.append(f"{attack:<16}" + "".join(f"{w:>20.3f}" if w is not None else f"{'-':>20}" for w in ws))
    return lines


def parse_args(argv):
    p = parser(
        __doc__,
        "flag_robustness",
        steps=100,
        seq_len=64,
        batch=(256, "global batch (sequences per step)"),
        eval_batches=8,
        nproc=(4, "workers p (torchrun processes)"),
        byzantine=(1, "Byzantine ranks f: 1..f"),
        seed=0,
        tolerance=(0.05, "allowed loss above the clean run"),
    )
    p.add_argument("--attacks", nargs="+", default=ATTACKS, choices=ATTACKS)
    p.add_argument("--aggs", nargs="+", default=["mean", "flag"], choices=list(AGGS))
    args = p.parse_args(argv)
    if not 1 <= args.byzantine < args.nproc or args.batch % args.nproc:
        p.error("--byzantine must be in 1..nproc-1 and --batch a multiple of --nproc")
    args.byzantine_ranks = list(range(1, args.byzantine + 1))
    return args


def run_all(args) -> dict[str, dict]:
    """The clean runs of every aggregator, then each attack against each."""
    work = Path(tempfile.mkdtemp(prefix="flag-robustness-"))
    out_dir, cache = work / "runs", work / "cache"
    results = {"clean/mean": run_one(args, "clean-mean", agg_overrides(args, "mean"), out_dir, cache)}
    for agg in args.aggs:
        if agg != "mean":
            results[f"clean/{agg}"] = run_one(args, f"clean-{agg}", agg_overrides(args, agg), out_dir, cache)
    faults = [f"faults.byzantine_ranks=[{','.join(map(str, args.byzantine_ranks))}]"]
    for attack in args.attacks:
        for agg in args.aggs:
            overrides = [*agg_overrides(args, agg), *faults, f"faults.attack={attack}"]
            results[f"{attack}/{agg}"] = run_one(args, f"{attack}-{agg}", overrides, out_dir, cache)
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    print(
        f"{args.nproc} processes, debug model, {args.steps} steps, seq {args.seq_len}, batch {args.batch}, "
        f"Byzantine ranks {args.byzantine_ranks}, seed {args.seed}",
        flush=True,
    )
    results = run_all(args)
    clean = results["clean/mean"]["val_loss"]
    verdict = verdicts(args, results, clean)
    lines = loss_table(args, results, clean) + verdict_lines(args, verdict) + weight_table(args, results)
    print("\n".join(lines))
    return write_json(
        args,
        {
            "args": {**vars(args), "results_dir": relative(str(args.results_dir))},
            "clean_val_loss": clean,
            "results": results,
            "verdict": verdict,
            "table": lines,
        },
    )
