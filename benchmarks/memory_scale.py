"""Memory at the sizes the methods exist for: the estimator's peak of one training step, per configuration.

    python -m benchmarks memory_scale --real   # also real CPU tensors for best@1b and today@350m, vs the estimate

Each row is `python -m tools.memory <overrides> --json` in its own process (FakeTensorMode: nothing allocated).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import ROOT, command, parser, pyplot, stacked_bars, write_json

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
    "best: sltrain + pure bf16 + step in backward + 8-bit AdamW + full act. ckpt": [
        *LOW,
        "param=sltrain",
        "train.activation_checkpointing=full",
    ],
}
BEST = "best: sltrain + pure bf16 + step in backward + 8-bit AdamW + full act. ckpt"
TODAY = "today: fp32 weights + bf16 autocast + AdamW"
SETTINGS = {  # label -> overrides shared by every row
    "1b, 1 x 256": ["model.size=1b", "train.micro_batch_size=1", "train.global_batch_size=1"],
    "7b, 1 x 256": ["model.size=7b", "train.micro_batch_size=1", "train.global_batch_size=1"],
    "7b, 16 x 256, full activation checkpointing": [
        "model.size=7b",
        "train.micro_batch_size=16",
        "train.global_batch_size=16",
        "train.activation_checkpointing=full",
    ],
}
COMMON = ["data.seq_len=256", "model.max_seq_len=256", "model.vocab_size=32000"]
REAL = {"best@1b": ("1b, 1 x 256", BEST), "today@350m": ("350m", TODAY)}


def estimate(overrides: list[str], real: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "m.json"
        cmd = [
            sys.executable,
            "-m",
            "tools.memory",
            *COMMON,
            *overrides,
            "--json",
            str(out),
            *(["--real"] if real else []),
        ]
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
        out[name] = {
            "overrides": overrides,
            "estimated": fake["bytes"]["total"],
            "measured": real["bytes"]["total"],
            "ratio": real["bytes"]["total"] / fake["bytes"]["total"],
            "real_wall_s": real.get("wall_s"),
        }
        print(
            f"{name}: measured {out[name]['measured'] / GIB:.3f} GiB, "
            f"estimated {out[name]['estimated'] / GIB:.3f} GiB, "
            f"measured/estimated {out[name]['ratio']:.4f}",
            flush=True,
        )
    return out


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    setting = "7b, 1 x 256"
    rows = [r["bytes"] for r in results[setting].values() if "error" not in r]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    stacked_bars(
        ax,
        [k for k, r in results[setting].items() if "error" not in r],
        {
            "weights": [b["weights"] / GIB for b in rows],
            "gradients": [b["gradients"] / GIB for b in rows],
            "optimizer state": [b["optimizer_state"] / GIB for b in rows],
            "activations + temporaries": [
                (b["activations"] + b["temporaries"] + b.get("inputs", 0)) / GIB for b in rows
            ],
        },
        horizontal=True,
    )
    ax.axvline(15, color="k", ls="--", lw=1)
    ax.text(15.3, len(rows) - 0.6, "15 GiB (a 16 GB GPU)", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("peak GiB of one training step (estimated)")
    ax.set_title("LLaMA-7B, 1 x 256 tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def memory_scale_section(ms, low_full, low_sltrain) -> str:
    """benchmarks/memory_scale.py's estimator rows, its real-tensor checks, and the low-memory quality runs."""
    from benchmarks.sections import NOT_MEASURED

    if ms is None:
        return f"{NOT_MEASURED}: run `python -m benchmarks memory_scale --real`.\n"
    out = [
        "Peak bytes of one training step of one process, from `python -m tools.memory` (FakeTensorMode + "
        "MemTracker on CPU: nothing allocated; vocabulary 32000, 256-token sequences; weights / gradients / "
        "optimizer state / activations + temporaries at the moment of the peak). Command: "
        f"`{ms['command']}`; settings `{' '.join(ms['common'])}`. The peer row is galore-torch's 8-bit per-layer "
        "GaLore (bf16 weights, rank 1024, step inside backward), counted through its stand-in `optim=galore_adamw "
        "optim.state_dtype=int8`, whose state holds 0.991x the real GaLoreAdamW8bit's bytes "
        "(tests/optim/test_galore_torch_peer.py), because bitsandbytes' kernels fail under fake tensors.\n"
    ]
    for setting, rows in ms["results"].items():
        out += [
            f"\n**{setting}** (GiB)\n",
            "| configuration | weights | grads | optimizer state | act + temp | **peak** | estimate s |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, r in rows.items():
            if "error" in r:
                out.append(f"| {label} | {r['error']} | | | | | |")
                continue
            b = r["bytes"]
            act = b["activations"] + b["temporaries"] + b.get("inputs", 0)
            out.append(
                f"| {label} | {b['weights'] / GIB:.2f} | {b['gradients'] / GIB:.2f} | {b['optimizer_state'] / GIB:.2f} "
                f"| {act / GIB:.2f} | **{b['total'] / GIB:.2f}** | {r['wall_s']:.0f} |"
            )
    out.append("\n![memory at 7b](../benchmarks/results/memory_scale.png)\n")
    for name, r in (ms.get("real") or {}).items():
        out.append(
            f"- real CPU tensors, {name} (`{' '.join(r['overrides'])}`): measured {r['measured'] / GIB:.3f} GiB, "
            f"estimated {r['estimated'] / GIB:.3f} GiB, measured / estimated {r['ratio']:.4f}"
        )
    if "best_over_today_1b" in ms:
        out.append(f"- estimated best / today's mode at 1b: {ms['best_over_today_1b']:.3f}")
    for q in (low_full, low_sltrain):
        if q is not None:
            ref, low = q["results"][0], q["results"][1]
            out.append(
                f"- quality, 20m 400 steps x 2048 tokens (`{q['command']}`): "
                f"{ref['label']} {ref['final_val_loss']:.4f}, "
                f"{low['label']} (pure bf16 + int8 states + step in backward) {low['final_val_loss']:.4f} "
                f"= {low['final_val_loss'] / ref['final_val_loss']:.4f}x"
            )
    return "\n".join(out) + "\n"


def memory_scale_targets(ms) -> list[str]:
    from benchmarks.sections import fmt, verdict

    rows = (ms or {}).get("results", {}).get("7b, 1 x 256", {})

    def total(label):
        r = rows.get(label)
        return None if r is None or "error" in r else r["bytes"]["total"] / GIB

    best = min((t for t in map(total, rows) if t is not None), default=None)
    checks = [
        ("7b step at 1 x 256, best configuration <= 15 GiB (estimated)", best, lambda v: v <= 15),
        (
            "7b dct_adamw + 8-bit + step in backward <= 20 GiB (estimated)",
            total("... + dct_adamw (rank 1024 at 7b)"),
            lambda v: v <= 20,
        ),
        (
            "7b sltrain + 8-bit + step in backward <= 17 GiB (estimated)",
            total("sltrain + pure bf16 + step in backward + 8-bit AdamW"),
            lambda v: v <= 17,
        ),
        ("estimated best / today's mode at 1b <= 0.25", (ms or {}).get("best_over_today_1b"), lambda v: v <= 0.25),
    ]
    for name, r in ((ms or {}).get("real") or {}).items():
        checks.append((f"real vs estimated peak within 2% ({name})", r["ratio"], lambda v: abs(v - 1) <= 0.02))
    return [f"| {name} | {fmt(v)} | {verdict(v, ok)} |" for name, v, ok in checks]


def main(argv=None) -> dict:
    args = parser(
        __doc__, "memory_scale", real=(False, "also measure best@1b and today@350m on real CPU tensors")
    ).parse_args(argv)
    results = {}
    for setting, base in SETTINGS.items():
        results[setting] = {}
        for label, overrides in ROWS.items():
            results[setting][label] = r = estimate([*base, *overrides])
            shown = r["error"] if "error" in r else f"{r['bytes']['total'] / GIB:.2f} GiB ({r['wall_s']:.0f} s)"
            print(f"[{setting}] {label}: {shown}", flush=True)
    out = {"command": command("memory_scale", argv), "common": COMMON, "results": results}
    one = results["1b, 1 x 256"]
    if "error" not in one[BEST] and "error" not in one[TODAY]:
        out["best_over_today_1b"] = one[BEST]["bytes"]["total"] / one[TODAY]["bytes"]["total"]
    if args.real:
        out["real"] = real_checks(results)
    return write_json(args, out, lambda r: memory_scale_section(r, None, None), lambda path: plot(results, path))
