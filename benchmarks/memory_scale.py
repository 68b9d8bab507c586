"""Memory at the sizes the methods exist for: the estimator's peak of one training step, per configuration.

    python benchmarks/memory_scale.py            # 1b and 7b at 1 x 256 tokens, 7b at 16 x 256 with checkpointing
    python benchmarks/memory_scale.py --real     # also: real CPU tensors for best@1b and today@350m, vs the estimate

Each row runs `python -m trainer.memory <overrides> --json` in its own process (FakeTensorMode + MemTracker: no
real allocation). Vocabulary 32000 (the LLaMA tokenizer of the papers' figures). Writes
benchmarks/results/memory_scale.json and memory_scale.png, and prints the tables of docs/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GIB = 2**30

LOW = ["train.precision=pure_bf16", "optim.step_in_backward=true", "optim.state_dtype=int8"]
ROWS = {  # label -> overrides; the rows, in its order
    "today: fp32 weights + bf16 autocast + AdamW": ["train.precision=amp_bf16"],
    "pure bf16 + AdamW (fp32 moments)": ["train.precision=pure_bf16"],
    "pure bf16 + step in backward + 8-bit AdamW": LOW,
    "... + dct_adamw (rank 1024 at 7b)": [*LOW, "optim=dct_adamw"],
    "sltrain + pure bf16 + step in backward + 8-bit AdamW": [*LOW, "param=sltrain"],
    "sst + pure bf16 + step in backward + 8-bit AdamW": [*LOW, "param=sst"],
    "peer: galore-torch 8-bit per-layer (stand-in: galore_adamw int8)": [*LOW, "optim=galore_adamw"],
    "best: sltrain + pure bf16 + step in backward + 8-bit AdamW + full act. ckpt": [*LOW, "param=sltrain",
                                                                                     "train.activation_checkpointing=full"],
}
BEST = "best: sltrain + pure bf16 + step in backward + 8-bit AdamW + full act. ckpt"
TODAY = "today: fp32 weights + bf16 autocast + AdamW"
SETTINGS = {  # label -> overrides shared by every row
    "1b, 1 x 256": ["model.size=1b", "train.micro_batch_size=1", "train.global_batch_size=1"],
    "7b, 1 x 256": ["model.size=7b", "train.micro_batch_size=1", "train.global_batch_size=1"],
    "7b, 16 x 256, full activation checkpointing": ["model.size=7b", "train.micro_batch_size=16",
                                                     "train.global_batch_size=16", "train.activation_checkpointing=full"],
}
COMMON = ["data.seq_len=256", "model.max_seq_len=256", "model.vocab_size=32000"]
REAL = {"best@1b": ("1b, 1 x 256", BEST), "today@350m": ("350m", TODAY)}


def estimate(overrides: list[str], real: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "m.json"
        cmd = [sys.executable, "-m", "tools.memory", *COMMON, *overrides, "--json", str(out), *(["--real"] if real else [])]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1], "overrides": overrides}
        return json.loads(out.read_text())


def real_checks(results: dict) -> dict:
    """Real CPU tensors under the same tracker: best at 1b, today's mode at 350m (today at 1b does not fit 24 GiB)."""
    out = {}
    for name, (setting, label) in REAL.items():
        base = SETTINGS.get(setting, [f"model.size={setting}", "train.micro_batch_size=1", "train.global_batch_size=1"])
        overrides = [*base, *ROWS[label]]
        fake, real = estimate(overrides), estimate(overrides, real=True)
        out[name] = {"overrides": overrides, "estimated": fake["bytes"]["total"], "measured": real["bytes"]["total"],
                     "ratio": real["bytes"]["total"] / fake["bytes"]["total"], "real_wall_s": real.get("wall_s")}
        print(f"{name}: measured {out[name]['measured'] / GIB:.3f} GiB, estimated {out[name]['estimated'] / GIB:.3f} GiB, "
              f"measured/estimated {out[name]['ratio']:.4f}", flush=True)
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setting = "7b, 1 x 256"
    rows = {k: v for k, v in results[setting].items() if "error" not in v}
    parts = [("weights", "weights"), ("gradients", "gradients"), ("optimizer_state", "optimizer state"),
             ("activations", "activations + temporaries")]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    left = [0.0] * len(rows)
    for key, name in parts:
        vals = [(r["bytes"][key] + (r["bytes"]["temporaries"] + r["bytes"].get("inputs", 0) if key == "activations" else 0)) / GIB
                for r in rows.values()]
        ax.barh(list(rows), vals, left=left, label=name)
        left = [a + b for a, b in zip(left, vals)]
    ax.axvline(15, color="k", ls="--", lw=1)
    ax.text(15.3, len(rows) - 0.6, "15 GiB (a 16 GB GPU)", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("peak GiB of one training step (estimated)")
    ax.set_title("LLaMA-7B, 1 x 256 tokens")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="also measure best@1b and today@350m on real CPU tensors")
    args = parser.parse_args()
    results = {}
    for setting, base in SETTINGS.items():
        results[setting] = {}
        for label, overrides in ROWS.items():
            results[setting][label] = r = estimate([*base, *overrides])
            shown = r["error"] if "error" in r else f"{r['bytes']['total'] / GIB:.2f} GiB ({r['wall_s']:.0f} s)"
            print(f"[{setting}] {label}: {shown}", flush=True)
    out = {"command": "benchmarks/memory_scale.py" + (" --real" if args.real else ""), "common": COMMON, "results": results}
    one = results["1b, 1 x 256"]
    if "error" not in one[BEST] and "error" not in one[TODAY]:
        out["best_over_today_1b"] = one[BEST]["bytes"]["total"] / one[TODAY]["bytes"]["total"]
        print(f"estimated best/today at 1b: {out['best_over_today_1b']:.3f}")
    if args.real:
        out["real"] = real_checks(results)
    (RESULTS / "memory_scale.json").write_text(json.dumps(out, indent=1))
    plot(results, RESULTS / "memory_scale.png")
    from report import memory_scale_section  # the same tables docs/RESULTS.md shows

    print(memory_scale_section(out, None, None))


if __name__ == "__main__":
    main()
