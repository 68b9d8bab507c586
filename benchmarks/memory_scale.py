"""Memory at the sizes the methods exist for: the estimator's peak of one training step, per configuration.

    python -m benchmarks memory_scale --real   # also real CPU tensors for best@1b and today@350m, vs the estimate

Each row is `python -m tools.memory <overrides> --json` in its own process (FakeTensorMode: nothing allocated).
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import ROOT, command, parser, pyplot, stacked_bars, write_json
from benchmarks.report import NOT_MEASURED, table

GIB = 2**30
LOW = ["train.precision=pure_bf16", "optim.step_in_backward=true", "optim.state_dtype=int8"]
TODAY = "today: fp32 weights + bf16 autocast + AdamW"
DCT = "... + dct_adamw (rank 1024 at 7b)"
SLTRAIN = "sltrain + pure bf16 + step in backward + 8-bit AdamW"
BEST = "best: sltrain + pure bf16 + step in backward + 8-bit AdamW + full act. ckpt"
ROWS = {  # label -> overrides; the rows, in its order
    TODAY: ["train.precision=amp_bf16"],
    "pure bf16 + AdamW (fp32 moments)": ["train.precision=pure_bf16"],
    "pure bf16 + step in backward + 8-bit AdamW": LOW,
    DCT: [*LOW, "optim=dct_adamw"],
    SLTRAIN: [*LOW, "param=sltrain"],
    "sst + pure bf16 + step in backward + 8-bit AdamW": [*LOW, "param=sst"],
    "peer: galore-torch 8-bit per-layer (stand-in: galore_adamw int8)": [*LOW, "optim=galore_adamw"],
    BEST: [*LOW, "param=sltrain", "train.activation_checkpointing=full"],
}
BATCH_1 = ["train.micro_batch_size=1", "train.global_batch_size=1"]
BATCH_16 = ["train.micro_batch_size=16", "train.global_batch_size=16"]
SETTINGS = {  # label -> overrides shared by every row
    "1b, 1 x 256": ["model.size=1b", *BATCH_1],
    "7b, 1 x 256": ["model.size=7b", *BATCH_1],
    "7b, 16 x 256, full activation checkpointing": ["model.size=7b", *BATCH_16, "train.activation_checkpointing=full"],
}
COMMON = ["data.seq_len=256", "model.max_seq_len=256", "model.vocab_size=32000"]
REAL = {"best@1b": (SETTINGS["1b, 1 x 256"], BEST), "today@350m": (["model.size=350m", *BATCH_1], TODAY)}
PARTS = ("weights", "gradients", "optimizer state", "activations + temporaries")


def estimate(overrides: list[str], real: bool = False) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, "-m", "tools.memory", *COMMON, *overrides, "--json", out.name]
        proc = subprocess.run(cmd + ["--real"] if real else cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1], "overrides": overrides}
        return json.load(out)


def gib(b: dict) -> list[float]:
    act = b["activations"] + b["temporaries"] + b.get("inputs", 0)
    return [x / GIB for x in (b["weights"], b["gradients"], b["optimizer_state"], act)]


def real_checks() -> dict:
    """Real CPU tensors under the same tracker: best at 1b, today's mode at 350m (today at 1b does not fit 24 GiB)."""
    out = {}
    for name, (base, label) in REAL.items():
        overrides = [*base, *ROWS[label]]
        estimated = estimate(overrides)["bytes"]["total"]
        real = estimate(overrides, real=True)
        r = {"overrides": overrides, "estimated": estimated, "measured": real["bytes"]["total"]}
        out[name] = r | {"ratio": r["measured"] / estimated, "real_wall_s": real.get("wall_s")}
        print(f"real CPU tensors, {name}: measured / estimated {out[name]['ratio']:.4f}", flush=True)
    return out


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    rows = {label: gib(r["bytes"]) for label, r in results["7b, 1 x 256"].items() if "error" not in r}
    fig, ax = plt.subplots(figsize=(10, 4.5))
    stacked_bars(ax, list(rows), dict(zip(PARTS, zip(*rows.values()))), horizontal=True)  # each part across rows
    ax.axvline(15, color="k", ls="--", lw=1)
    ax.text(15.3, len(rows) - 0.6, "15 GiB (a 16 GB GPU)", fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="peak GiB of one training step (estimated)", title="LLaMA-7B, 1 x 256 tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def scale_row(label: str, r: dict) -> str:
    if "error" in r:
        return f"| {label} | {r['error']} | | | | | |"
    parts = " | ".join(f"{x:.2f}" for x in gib(r["bytes"]))
    return f"| {label} | {parts} | **{r['bytes']['total'] / GIB:.2f}** | {r['wall_s']:.0f} |"


def memory_scale_section(ms, *low_memory_runs) -> str:
    if ms is None:
        return f"{NOT_MEASURED}: run `python -m benchmarks memory_scale --real`.\n"
    out = [
        "Bytes of one process's training step at its peak, from `python -m tools.memory` (FakeTensorMode + "
        f"MemTracker on CPU, nothing allocated), vocabulary 32000, 256-token sequences. `{ms['command']}`; settings "
        f"`{' '.join(ms['common'])}`. Peer row: galore-torch's 8-bit per-layer GaLore (bf16 weights, rank 1024, step "
        "in backward) as `optim=galore_adamw optim.state_dtype=int8` (0.991x GaLoreAdamW8bit's state bytes, "
        "tests/optim/test_galore_torch_peer.py): bitsandbytes' kernels fail under fake tensors.\n"
    ]
    header = "configuration | weights | grads | optimizer state | act + temp | **peak** | estimate s"
    for setting, rows in ms["results"].items():
        out.append(table(header, [scale_row(label, r) for label, r in rows.items()], f"**{setting}** (GiB)"))
    out.append("![memory at 7b](../benchmarks/results/memory_scale.png)\n")
    for name, r in (ms.get("real") or {}).items():
        out.append(
            f"- real CPU tensors, {name} (`{' '.join(r['overrides'])}`): measured {r['measured'] / GIB:.3f} GiB, "
            f"estimated {r['estimated'] / GIB:.3f} GiB, measured / estimated {r['ratio']:.4f}"
        )
    if "best_over_today_1b" in ms:
        out.append(f"- estimated best / today's mode at 1b: {ms['best_over_today_1b']:.3f}")
    for q in filter(None, low_memory_runs):
        ref, low = q["results"][0], q["results"][1]
        out.append(
            f"- quality, 20m 400 steps x 2048 tokens (`{q['command']}`): {ref['label']} {ref['final_val_loss']:.4f}, "
            f"{low['label']} (pure bf16 + int8 states + step in backward) {low['final_val_loss']:.4f} "
            f"= {low['final_val_loss'] / ref['final_val_loss']:.4f}x"
        )
    return "\n".join(out) + "\n"


def main(argv=None) -> dict:
    args = parser(__doc__, "memory_scale", real=False).parse_args(argv)
    results = {}
    for setting, base in SETTINGS.items():
        results[setting] = {label: estimate([*base, *overrides]) for label, overrides in ROWS.items()}
        print("\n".join(f"[{setting}] {scale_row(label, r)}" for label, r in results[setting].items()), flush=True)
    out = {"command": command("memory_scale", argv), "common": COMMON, "results": results}
    one = results["1b, 1 x 256"]
    if "error" not in one[BEST] and "error" not in one[TODAY]:
        out["best_over_today_1b"] = one[BEST]["bytes"]["total"] / one[TODAY]["bytes"]["total"]
    if args.real:
        out["real"] = real_checks()
    return write_json(args, out, memory_scale_section, lambda path: plot(results, path))
