"""Quality comparison: train each labelled configuration on the same data, seed and budget; compare losses.

    python -m benchmarks quality --out quality_sltrain --steps 300 -- \\
        full "param=full" sltrain "param=sltrain" lowrank "param=lowrank"
    python -m benchmarks quality --out dct_sweep --parallel 12 --grid optim=dct_adamw optim.lr=0.001,0.003 \\
        optim.update_gap=10,50 --extra train.precision=fp32 -- "full adamw (defaults)" optim=adamw

Each label runs train.py on ../shared/data/wikitext103_valid.txt, 20m model (base_overrides; its overrides or --extra
change them). A failed grid run is recorded. Under --parallel the runs share the machine: tokens/s is no speed figure.
"""

from __future__ import annotations

import itertools
import shlex
import shutil
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from benchmarks.harness import ROOT, command, parser, pyplot, relative, split_overrides, write_json
from benchmarks.processes import read_metrics, run_train
from benchmarks.report import quality_table

WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext103_valid.txt"


def base_overrides(args) -> list[str]:
    return [
        "model.size=20m",
        f"data.source={WIKITEXT}",
        *f"data.val_fraction=0.1 data.seq_len={args.seq_len} data.vocab_size=4096 train.steps={args.steps}".split(),
        *f"train.global_batch_size={args.batch} train.micro_batch_size={args.micro_batch}".split(),
        *f"train.eval_every={max(1, args.steps // 5)} train.eval_batches=16 train.save_every={args.steps}".split(),
        *"train.resume=never train.seed=0 train.threads=1 log.progress=lines log.wandb=disabled".split(),
        f"run.out_dir={args.results_dir / 'runs' / args.out}",
    ]


def run_one(label: str, extra: str, args) -> dict:
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in label)
    run_dir = args.results_dir / "runs" / args.out / name
    shutil.rmtree(run_dir, ignore_errors=True)  # its own output; a fresh run would append to metrics.jsonl
    proc, wall = run_train([*base_overrides(args), f"run.name={name}", *shlex.split(extra), *args.extra])
    result = {"label": label, "overrides": extra}
    if proc.returncode != 0:
        error = f"{label}: train.py exited {proc.returncode}\n{proc.stderr[-3000:]}"
        if not args.grid:
            sys.exit(error)
        print(f"[quality] {label}: FAILED {error[-500:]}", flush=True)
        return {**result, "error": error[-2000:]}
    records = read_metrics(run_dir)
    val = [(r["step"], r["val/loss"]) for r in records if "val/loss" in r]
    train = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
    speed = [r["train/tokens_per_s"] for r in records if "train/tokens_per_s" in r][1:]  # skip the warm-up step
    print(f"[quality] {label}: final val loss {val[-1][1]:.4f} ({wall:.0f} s)", flush=True)
    return {
        **result,
        "final_val_loss": val[-1][1],
        "first_val_loss": val[0][1],
        "val_curve": val,
        "train_curve": train,
        "tokens_per_s_median": statistics.median(speed) if speed else None,
        "params_trainable": next((r.get("params/trainable") for r in records if "params/total" in r), None),
        "wall_s": wall,
    }


def plot(results: list[dict], path: Path, title: str) -> None:
    plt = pyplot()
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for r in (r for r in results if "error" not in r):
        steps, losses = zip(*r["train_curve"])
        window = max(1, len(losses) // 30)
        smooth = [statistics.fmean(losses[max(0, i - window + 1) : i + 1]) for i in range(len(losses))]
        ax_train.plot(steps, smooth, label=r["label"])
        ax_val.plot(*zip(*r["val_curve"]), marker="o", label=r["label"])
    ax_train.set(xlabel="step", ylabel="train loss (smoothed)", title=title)
    ax_val.set(xlabel="step", ylabel="validation loss", title="validation")
    for ax in (ax_train, ax_val):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse(argv):
    options, pairs = split_overrides(argv)
    p = parser(__doc__, None, steps=300, seq_len=128, batch=16, micro_batch=16, extra=([], "overrides for every run"))
    p.add_argument("--parallel", type=int, default=1, help="runs at once (on a GPU the 20m runs leave it mostly idle)")
    p.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2", help="a sweep: a run per point of the product")
    args = p.parse_args(options)
    if len(pairs) % 2:
        p.error('runs come in pairs after `--`: label "overrides"')
    axes = [[f"{item.split('=', 1)[0]}={v}" for v in item.split("=", 1)[1].split(",")] for item in args.grid]
    grid = [(" ".join(point), " ".join(point)) for point in itertools.product(*axes)] if args.grid else []
    return args, grid + list(zip(pairs[::2], pairs[1::2]))


def main(argv=None) -> dict:
    args, runs = parse(argv)
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda run: run_one(*run, args), runs))
    settings = [relative(o) for o in base_overrides(args) + args.extra]
    report = {"command": command("quality", argv), "settings": settings, "results": results}
    table = partial(quality_table, best_first=bool(args.grid))
    return write_json(args, report, table, partial(plot, results, title=f"20m, {args.steps} steps"))
