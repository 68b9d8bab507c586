"""Robustness run: 4 CPU processes, 1 Byzantine rank, each attack; final validation loss of `mean` and of
`flag` variants (and any other aggregator listed) against a clean run with the same seed and steps.

    python benchmarks/flag_robustness.py          # mean, flag, flag normalized, flag normalized m=1: 32 runs, ~25 min on 2 cores
    python benchmarks/flag_robustness.py --aggs median multi_krum --out benchmarks/results/flag_robustness_baselines.json
    python benchmarks/flag_robustness.py --steps 40 --attacks sign_flip nan --aggs mean flag

Prints a table and writes benchmarks/results/flag_robustness.json. Each run is train.py under torchrun
(the debug model on the built-in corpus), exactly as a user would start it.

The default global batch, 256 sequences (64 per worker), is where the honest workers' gradients agree
enough for a subspace method to tell them from an attacker: the logged `agg/mean_cosine` of the clean Flag
run is recorded with the results. With 4 sequences per worker (`--batch 16`) the gradients are nearly
orthogonal (mean pairwise cosine ~0.03-0.1 on the debug model), every 3 of the 4 workers span an equally
good flag, and no flag-based aggregate can single the attacker out.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import train_command, train_env  # noqa: E402

ATTACKS = ["sign_flip", "gaussian", "uniform_random", "alie", "fall_of_empires", "zero", "nan"]
AGGS = {  # label -> overrides
    "mean": ["agg=mean"],
    "flag": ["agg=flag"],
    "flag_normalized": ["agg=flag", "agg.normalized=true"],
    "flag_m1": ["agg=flag", "agg.m=1"],
    "flag_normalized_m1": ["agg=flag", "agg.normalized=true", "agg.m=1"],
    "median": ["agg=median"],
    "trimmed_mean": ["agg=trimmed_mean"],
    "multi_krum": ["agg=multi_krum"],
}


def base_overrides(args, out_dir: Path, cache: Path) -> list[str]:
    return [
        "model.size=debug", f"data.seq_len={args.seq_len}", "data.vocab_size=512", f"train.steps={args.steps}",
        f"train.global_batch_size={args.batch}", f"train.micro_batch_size={args.batch // args.nproc}",
        f"train.eval_every={args.steps}", f"train.eval_batches={args.eval_batches}", f"train.log_every={args.steps}",
        f"train.save_every={args.steps}", "train.threads=1", f"train.seed={args.seed}", "train.resume=never",
        "log.progress=lines", f"run.out_dir={out_dir}", f"data.cache_dir={cache}",
    ]


def final_val_loss(run_dir: Path) -> float:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val/loss"] for r in records if "val/loss" in r and r["step"] > 0]
    return float(vals[-1]) if vals else float("nan")


def logged_median(run_dir: Path, key: str) -> float | None:
    """The median over steps of a logged metric (None if the aggregator logs none)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    values = sorted(r[key] for r in records if key in r)
    return values[len(values) // 2] if values else None


def run_one(args, name: str, overrides: list[str], out_dir: Path, cache: Path) -> dict:
    start = time.perf_counter()
    cmd = train_command([*base_overrides(args, out_dir, cache), f"run.name={name}", *overrides], args.nproc)
    proc = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    run_dir = out_dir / name
    result = {"val_loss": final_val_loss(run_dir), "byzantine_weight": logged_median(run_dir, f"agg/weight_rank{args.byzantine_rank}"),
              "mean_cosine": logged_median(run_dir, "agg/mean_cosine"), "wall_s": time.perf_counter() - start}
    print(f"  {name:<32} val loss {result['val_loss']:.4f}  ({result['wall_s']:.0f} s)", flush=True)
    return result


def loss_table(args, results: dict, clean: float) -> list[str]:
    header = f"{'attack':<16}" + "".join(f"{a:>20}" for a in args.aggs)
    lines = [f"final val loss (ratio to the clean mean run, {clean:.4f}); 1 Byzantine of {args.nproc}", header]
    for attack in ["clean", *args.attacks]:
        cells = []
        for agg in args.aggs:
            r = results.get(f"{attack}/{agg}")
            loss = r["val_loss"] if r else float("nan")
            cells.append(f"{loss:9.4f} ({loss / clean:5.3f})" if math.isfinite(loss) else f"{'nan':>9} {'(broken)':>7}")
        lines.append(f"{attack:<16}" + "".join(f"{c:>20}" for c in cells))
    return lines


def weight_table(args, results: dict) -> list[str]:
    """The Byzantine rank's logged weight (median over steps) for the aggregators that log one."""
    aggs = [a for a in args.aggs if any(results.get(f"{t}/{a}", {}).get("byzantine_weight") is not None for t in args.attacks)]
    if not aggs:
        return []
    cosines = [results[f"clean/{a}"]["mean_cosine"] for a in aggs if results.get(f"clean/{a}", {}).get("mean_cosine") is not None]
    lines = ["", f"weight of Byzantine rank {args.byzantine_rank} in the aggregate (median over steps; 1 = fully used, 0 = ignored)"]
    if cosines:
        lines.append(f"workers' mean pairwise gradient cosine in the clean {aggs[0]} run (median over steps): {cosines[0]:.3f}")
    lines.append(f"{'attack':<16}" + "".join(f"{a:>20}" for a in aggs))
    for attack in args.attacks:
        ws = [results.get(f"{attack}/{a}", {}).get("byzantine_weight") for a in aggs]
        lines.append(f"{attack:<16}" + "".join(f"{w:>20.3f}" if w is not None else f"{'-':>20}" for w in ws))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256, help="global batch (sequences per step)")
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--nproc", type=int, default=4)
    parser.add_argument("--byzantine-rank", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attacks", nargs="+", default=ATTACKS, choices=ATTACKS)
    parser.add_argument("--aggs", nargs="+", default=["mean", "flag", "flag_normalized", "flag_normalized_m1"], choices=list(AGGS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "flag_robustness.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="flag-robustness-"))
    out_dir, cache = work / "runs", work / "cache"
    results: dict[str, dict] = {}
    print(f"{args.nproc} processes, debug model, {args.steps} steps, seq {args.seq_len}, batch {args.batch}, "
          f"Byzantine rank {args.byzantine_rank}, seed {args.seed}", flush=True)
    results["clean/mean"] = run_one(args, "clean-mean", AGGS["mean"], out_dir, cache)
    for agg in args.aggs:
        if agg != "mean":
            results[f"clean/{agg}"] = run_one(args, f"clean-{agg}", AGGS[agg], out_dir, cache)
    for attack in args.attacks:
        faults = [f"faults.byzantine_ranks=[{args.byzantine_rank}]", f"faults.attack={attack}"]
        for agg in args.aggs:
            results[f"{attack}/{agg}"] = run_one(args, f"{attack}-{agg}", [*AGGS[agg], *faults], out_dir, cache)

    clean = results["clean/mean"]["val_loss"]
    lines = loss_table(args, results, clean) + weight_table(args, results)
    print("\n".join(lines))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": {**vars(args), "out": os.path.relpath(args.out, ROOT)}, "clean_val_loss": clean, "results": results, "table": lines}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
