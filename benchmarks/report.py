"""Render docs/RESULTS.md from the suite's JSON only: a figure whose JSON is missing is "not yet measured",
never estimated.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from benchmarks.harness import RESULTS, ROOT
from benchmarks.memory_scale import memory_scale_section, memory_scale_targets
from benchmarks.sections import (
    NOT_MEASURED,
    dct_section,
    flag_section,
    fmt,
    longer_runs_section,
    memory_row,
    memory_section,
    quality_section,
    speed_section,
    table,
    verdict,
)
from benchmarks.suite import produced

DOC = ROOT / "docs" / "RESULTS.md"


def load(name: str) -> dict | None:
    """A results file the suite produces (any other is refused: the page shows only what the suite ran)."""
    if f"{name}.json" not in produced():
        raise KeyError(f"{name}.json is produced by no suite entry")
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def machine() -> str:
    return (
        f"{platform.machine()} CPU, {torch.get_num_threads()} threads available, torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )


STRATEGIES = [
    ("full rank AdamW (baseline)", "full", "adamw", "full"),
    ("SLTrain", "sltrain", "adamw", "sltrain"),
    ("low-rank (SLTrain, delta 0)", "lowrank", "adamw", "lowrank"),
    ("SST", "sst", "adamw", "sst"),
    ("DCT low-rank AdamW", "full", "dct_adamw", "dct_adamw"),
    ("GaLore, our SVD projector", "full", "galore_adamw", "galore_adamw"),
    ("galore-torch (peer)", "full", "galore_torch", "galore_torch"),
]


def summary(mem, speed, q) -> str:
    speed_rows = {r["combo"]: r for r in (speed or {}).get("rows", [])}
    quality = {r["label"]: r for r in (q or {}).get("results", [])}
    ref_loss = quality.get("full", {}).get("final_val_loss")
    out = table(
        "strategy | choice | model state vs full (130m) | grads + optimizer vs full (130m) | "
        "peak step memory vs full (130m) | speed vs full (20m) | final val loss (20m) | loss vs full",
        [],
    )
    for title, p, o, label in STRATEGIES:
        m = memory_row(mem, "130m", p, o) or {}
        sp = speed_rows.get(f"{p}+{o}", {})
        ql = quality.get(label, {}).get("final_val_loss")
        out.append(
            f"| {title} | `param={p} optim={o}` | {fmt(m.get('model_state_ratio'))} | "
            f"{fmt(m.get('grad_optim_ratio'))} | "
            f"{fmt(m.get('peak_step_ratio'))} | {fmt(sp.get('speed_ratio'))} | {fmt(ql, '.4f')} | "
            f"{fmt(ql / ref_loss if ql and ref_loss else None, '.4f')} |"
        )
    out.append(
        "| Flag aggregation | `agg=flag` | no memory change (gradients are aggregated, not stored) | | | "
        "see the Flag section (aggregation time vs mean) | see the robustness table | |"
    )
    return "\n".join(out) + "\n"


def targets(mem, q, d) -> str:
    sl = memory_row(mem, "130m", "sltrain", "adamw")
    sst = memory_row(mem, "130m", "sst", "adamw")
    ratios = (d or {}).get("ratios_dct_over_galore_torch", {})
    rows = [
        (
            "SLTrain model-state memory <= 0.75x full rank (130m)",
            sl and sl.get("model_state_ratio"),
            lambda v: v <= 0.75,
        ),
        ("DCT optimizer state <= 0.7x galore-torch's (130m, r 256)", ratios.get("state_bytes"), lambda v: v <= 0.7),
        (
            "DCT refresh >= 10x faster than galore-torch's (time ratio <= 0.1)",
            ratios.get("refresh_time"),
            lambda v: v <= 0.1,
        ),
        (
            "SST gradient + optimizer memory <= 0.5x full rank (130m, r 64)",
            sst and sst.get("grad_optim_ratio"),
            lambda v: v <= 0.5,
        ),
    ]
    lines = table("target | measured | verdict", [f"| {name} | {fmt(v)} | {verdict(v, ok)} |" for name, v, ok in rows])
    if q is not None:
        ref = q["results"][0]["final_val_loss"]
        for r in q["results"][1:]:
            v = r["final_val_loss"] / ref
            lines.append(
                f"| {r['label']} final loss within 5% of full rank (CPU quality run) | {v:.4f} | "
                f"{verdict(v, lambda x: x <= 1.05)} |"
            )
    else:
        lines.append(f"| each strategy's final loss within 5% of full rank | {NOT_MEASURED} | {NOT_MEASURED} |")
    lines += memory_scale_targets(load("memory_scale"))
    shown = NOT_MEASURED if load("gpu") is None else "see GPU section"
    lines += [
        f"| {name} | {shown} | {shown} |"
        for name in (
            "full-rank 1b MFU >= 40% (GPU)",
            "SLTrain throughput >= 0.9x full rank (GPU, 350m bf16)",
            "DCT throughput >= 0.9x full rank (GPU, 350m bf16)",
        )
    ]
    return "\n".join(lines) + "\n"


PAPERS = """These are the papers' numbers (shared/METHODS.md), not ours; their setting (C4 or OpenWebText,
thousands of steps, GPUs, bf16) differs from our CPU runs, so compare ratios, not values.

| source | setting | full rank | method |
|---|---|---|---|
| GaLore paper, Table 2 | C4 ppl / memory estimate, 130M | 25.08 / 0.76G | GaLore 25.36 / 0.52G |
| SLTrain paper | C4 ppl / params / memory estimate, 130M | 24.36 / 134M / 0.81G | SLTrain 26.04 / 97M / 0.60G |
| SST paper | OpenWebText ppl, LLaMA-130M r64 | 20.04 | SST 23.35 (LoRA 29.71) |
| DCT paper | C4 ppl / memory, 800M, 100 tokens/param | 11.73 / 73.7 GiB | DCT-AdamW 13.69 / 57.8 GiB |
| METHODS.md, measured on a CPU | galore-torch, 130M blocks, r 256 | AdamW step 142 ms, 648 MiB | GaLore steady 348 ms, refresh 8.8 s, 216 MiB |
"""  # noqa: E501  (a markdown table row is one line)


def gpu_section(gpu) -> str:
    return (
        f"GPU figures (350m and 1b in bf16, MFU of full-rank 1b, the largest model each strategy fits): "
        f"{NOT_MEASURED}. "
        "No GPU was available to the sessions that produced this report; the suite's `gpu` entries measure "
        "them on a CUDA machine and this section is then regenerated from benchmarks/results/gpu.json.\n"
        if gpu is None
        else speed_section(gpu) + "\n" + memory_section(load("gpu_memory"))
    )


def write_report() -> Path:
    mem, speed, q, d = load("memory"), load("speed"), load("quality_suite"), load("dct_vs_galore")
    cost, robust, gpu = load("flag_cost"), (load("flag_robustness"), load("flag_robustness_p8")), load("gpu")
    gpu_text = gpu_section(gpu)
    text = f"""# Results: memory, speed and quality of every strategy

Regenerate: `python -m benchmarks suite` (the CPU suite end to end, then this page), or
`python -m benchmarks suite --report-only` to re-render from the suite's files in benchmarks/results/.
Machine: {machine()}, 2 cores shared with other work (figures are medians and ratios measured within one run).

## Every strategy at a glance

{summary(mem, speed, q)}
## Targets

{targets(mem, q, d)}
## Quality (validation loss, wikitext-103 validation text, 20m model)

{quality_section(q)}{longer_runs_section({"sltrain": load("quality_sltrain"), "sst": load("quality_sst")})}
## Memory at scale

{memory_scale_section(load("memory_scale"), load("quality_lowmem_full"), load("quality_lowmem_sltrain"))}
## Memory

{memory_section(mem)}
![memory](../benchmarks/results/memory.png)

## Speed

{speed_section(speed)}
## DCT low-rank AdamW against galore-torch

{dct_section(d)}
## Flag aggregation

{flag_section(cost, *robust)}
## GPU

{gpu_text}
## The papers' numbers

{PAPERS}"""
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
    return DOC
