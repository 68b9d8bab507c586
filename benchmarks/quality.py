"""Quality comparison: train each labelled configuration on the same data, seed and budget; compare losses.

    python benchmarks/quality.py --out sltrain --steps 300 -- \\
        full "param=full" sltrain "param=sltrain" lowrank "param=lowrank"

Each label runs train.py for real (torchrun when --nproc > 1) on ../shared/data/wikitext103_valid.txt
(last 10% held out). Prints final validation loss / perplexity and the ratio to the first label, writes
benchmarks/results/quality_<out>.json and a loss-curve plot benchmarks/results/quality_<out>.png.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext103_valid.txt"


def relative(text: str) -> str:
    """Paths in the saved results relative to the repository, so they mean the same on every machine."""
    return text.replace(str(ROOT) + "/", "").replace(str(ROOT.parent) + "/", "../")


def base_overrides(args) -> list[str]:
    return [
        f"model.size={args.model}", f"data.source={args.data}", "data.val_fraction=0.1", f"data.seq_len={args.seq_len}",
        f"data.vocab_size={args.vocab_size}", f"train.steps={args.steps}", f"train.global_batch_size={args.batch}",
        f"train.micro_batch_size={args.micro_batch}", f"train.eval_every={max(1, args.steps // args.evals)}",
        f"train.eval_batches={args.eval_batches}", f"train.save_every={args.steps}", "train.resume=never",
        f"train.seed={args.seed}", f"train.threads={args.threads}", "log.progress=lines", "log.wandb=disabled",
        f"run.out_dir={RESULTS / 'runs' / args.out}",
    ]


def command(overrides: list[str], nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, str(ROOT / "train.py"), *overrides]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
            "--max-restarts=0", str(ROOT / "train.py"), *overrides]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_one(label: str, extra: str, args) -> dict:
    overrides = [*base_overrides(args), f"run.name={label}", *shlex.split(extra)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    run_dir = RESULTS / "runs" / args.out / label
    shutil.rmtree(run_dir, ignore_errors=True)  # its own output; a fresh run would append to metrics.jsonl
    start = time.perf_counter()
    proc = subprocess.run(command(overrides, args.nproc), cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{label}: train.py exited {proc.returncode}\n{proc.stderr[-3000:]}")
    return collect(label, extra, run_dir, wall)


def collect(label: str, extra: str, run_dir: Path, wall: float) -> dict:
    records = read_metrics(run_dir)
    val = [(r["step"], r["val/loss"]) for r in records if "val/loss" in r]
    train = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
    speed = [r["train/tokens_per_s"] for r in records if "train/tokens_per_s" in r][1:]  # skip the warm-up step
    counts = next((r for r in records if "params/total" in r), {})
    return {"label": label, "overrides": extra, "final_val_loss": val[-1][1], "first_val_loss": val[0][1],
            "val_curve": val, "train_curve": train, "tokens_per_s_median": statistics.median(speed) if speed else None,
            "params_trainable": counts.get("params/trainable"), "wall_s": wall}


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        steps, losses = zip(*r["train_curve"])
        window = max(1, len(losses) // 30)
        smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1]) for i in range(len(losses))]
        ax_train.plot(steps, smooth, label=r["label"])
        ax_val.plot(*zip(*r["val_curve"]), marker="o", label=r["label"])
    ax_train.set(xlabel="step", ylabel="train loss (smoothed)", title=title)
    ax_val.set(xlabel="step", ylabel="validation loss", title="validation")
    for ax in (ax_train, ax_val):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(results: list[dict]) -> str:
    ref = results[0]["final_val_loss"]
    ref_speed = results[0]["tokens_per_s_median"]
    lines = [f"{'label':<16} {'val loss':>9} {'ppl':>9} {'loss/ref':>9} {'tok/s':>9} {'speed/ref':>9} {'trainable':>11}"]
    for r in results:
        speed = r["tokens_per_s_median"] or 0.0
        lines.append(f"{r['label']:<16} {r['final_val_loss']:>9.4f} {2.718281828 ** r['final_val_loss']:>9.2f} "
                     f"{r['final_val_loss'] / ref:>9.4f} {speed:>9.0f} {speed / ref_speed if ref_speed else 0:>9.3f} "
                     f"{r['params_trainable'] or 0:>11,}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="tag for the results files")
    parser.add_argument("--model", default="20m")
    parser.add_argument("--data", default=str(WIKITEXT))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--evals", type=int, default=5, help="validation points per run")
    parser.add_argument("--eval-batches", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("runs", nargs="+", help="label overrides [label overrides ...]")
    args = parser.parse_args(argv)
    if len(args.runs) % 2:
        parser.error("runs come in pairs: label \"overrides\"")
    if not Path(args.data).is_file():
        parser.error(f"--data {args.data} does not exist")
    results = []
    for label, extra in zip(args.runs[::2], args.runs[1::2]):
        print(f"[quality] {label}: {extra}", flush=True)
        results.append(run_one(label, extra, args))
        print(f"[quality] {label}: final val loss {results[-1]['final_val_loss']:.4f} ({results[-1]['wall_s']:.0f} s)", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"date": time.strftime("%Y-%m-%d"), "command": relative(" ".join(shlex.quote(a) for a in sys.argv)),
              "settings": [relative(o) for o in base_overrides(args)], "results": results}
    (RESULTS / f"quality_{args.out}.json").write_text(json.dumps(report, indent=1))
    plot(results, RESULTS / f"quality_{args.out}.png", f"{args.model}, {args.steps} steps")
    print(table(results))


if __name__ == "__main__":
    main()
