"""docs/RESULTS.md from the suite's JSON only, and the sections the benchmarks print: a figure whose JSON is
missing is "not yet measured", never estimated."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from benchmarks.harness import RESULTS, ROOT

DOC = ROOT / "docs" / "RESULTS.md"
NOT_MEASURED = "not yet measured"
MB = 2**20


def fmt(x, spec=".3f") -> str:
    return NOT_MEASURED if x is None else format(x, spec)


def table(header: str, rows: list[str]) -> list[str]:
    """A markdown table: the header's columns ("a | b"), the separator, then the rows."""
    return [f"| {header} |", "|" + "---|" * len(header.split(" | ")), *rows]


def target(name: str, value, limit: float, spec: str = ".3f") -> str:
    """A row of the targets table: met when value <= limit."""
    met = NOT_MEASURED if value is None else ("**met**" if value <= limit else "**not met**")
    return f"| {name} | {fmt(value, spec)} | {met} |"


def memory_row(mem, size, p, o):
    rows = [r for r in (mem or {}).get("rows", []) if "error" not in r and r["size"] == size]
    return next((r for r in rows if (r["param"], r["optim"]) == (p, o)), None)


def memory_line(r) -> str:
    head = f"| {r['size']} | {r['param']} | {r['optim']} |"
    if "error" in r:
        return f"{head} refused: {r['error'].replace('|', '/')[:120]} |" + " |" * 7
    peak = f"{r['peak_step_rss'] / MB:.0f}" if "peak_step_rss" in r else "-"
    peak_ratio = fmt(r["peak_step_ratio"]) if "peak_step_ratio" in r else "-"
    return (
        f"{head} {r['weights'] / MB:.1f} | {r['grads'] / MB:.1f} | {r['optim_state'] / MB:.1f} | "
        f"{fmt(r.get('model_state_ratio'))} | {fmt(r.get('grad_optim_ratio'))} | {peak} | {peak_ratio} |"
    )


def memory_section(mem) -> str:
    if mem is None:
        return f"Memory: {NOT_MEASURED}.\n"
    lines = table(
        "size | param | optim | weights MB | grads MB | optimizer MB | state vs full | grads+optim vs full | "
        "peak step MB | peak vs full",
        [memory_line(r) for r in mem["rows"]],
    )
    return (
        f"Measured from the tensors after two optimizer steps (fp32, vocab 32000, batch {mem['batch']} x "
        f'{mem["seq_len"]}); "state" = trainable parameters + gradients + optimizer state. Peak step memory: the '
        "process's peak resident memory during one training step minus its memory before the model was built. "
        f"`{mem['command']}`, {mem['date']}.\n\n" + "\n".join(lines) + "\n"
    )


def speed_section(speed) -> str:
    if speed is None:
        return f"Speed: {NOT_MEASURED}.\n"
    mfu = any("mfu" in r for r in speed["rows"])
    rows = [
        f"| {r['combo']} | {r['step_s'] * 1000:.0f} | {r['tokens_per_s']:.0f} | {fmt(r['speed_ratio'])} |"
        + (f" {fmt(r.get('mfu'))} |" if mfu else "")
        for r in speed["rows"]
    ]
    rows += [f"| {k} | refused: {v[:100]} | | |" for k, v in speed.get("not_supported", {}).items()]
    lines = table("combination | ms / step | tokens / s | speed vs full-rank AdamW" + " | MFU" * mfu, rows)
    return (
        f"{speed['size']} model, batch {speed['batch']} x {speed['seq_len']}, {speed['threads']} thread(s); steps "
        f"timed interleaved (medians). `{speed['command']}`, {speed['date']}.\n\n" + "\n".join(lines) + "\n"
    )


def quality_table(q, best_first: bool = False) -> str:
    done = [r for r in q["results"] if "error" not in r]
    ref = done[0]["final_val_loss"] if done else None
    failed = [f"| {r['label']} | `{r['overrides']}` | failed | | | | | |" for r in q["results"] if "error" in r]
    lines = table(
        "run | overrides | trainable params | first val loss | final val loss | final ppl | loss vs full | tokens/s",
        failed,
    )
    for r in sorted(done, key=lambda r: r["final_val_loss"]) if best_first else done:
        lines.append(
            f"| {r['label']} | `{r['overrides']}` | {r['params_trainable'] or 0:,} | {r['first_val_loss']:.3f} | "
            f"{r['final_val_loss']:.4f} | {2.718281828 ** r['final_val_loss']:.1f} | {r['final_val_loss'] / ref:.4f} | "
            f"{r['tokens_per_s_median'] or 0:.0f} |"
        )
    return "\n".join(lines)


def quality_section(q) -> str:
    if q is None:
        return f"Quality: {NOT_MEASURED}.\n"
    return (
        "Read these as early-training figures: at this CPU budget (200 steps of 512-token batches, ~100k tokens) full "
        "rank trails every low-memory method by 2-6% (tiny, noisy batches favour fewer trainable directions); the "
        "longer runs below (4x the tokens per step, 2x the steps) are the ones that show the published ordering "
        "(full <= SLTrain / SST < low-rank).\n\n"
        f"Same seed, data and token budget for every run. `{q['command']}`, {q['date']}. Settings: "
        f"`{' '.join(s for s in q['settings'] if not s.startswith('run.out_dir'))}`.\n\n{quality_table(q)}\n\n"
        "![loss curves](../benchmarks/results/quality_suite.png)\n"
    )


def longer_runs_section(runs: dict) -> str:
    """The per-method quality runs at a larger budget (quality_<tag>.json written by their documented commands)."""
    lines = []
    for tag, q in runs.items():
        if q is not None:
            ref = q["results"][0]["final_val_loss"]
            finals = ", ".join(
                f"{r['label']} {r['final_val_loss']:.4f} ({r['final_val_loss'] / ref:.3f}x)" for r in q["results"]
            )
            lines.append(
                f"- `quality_{tag}.json` ([plot](../benchmarks/results/quality_{tag}.png)): {finals}. `{q['command']}`"
            )
    head = "\n### Longer runs (20m, 400 steps x 2048 tokens)\n\n"
    note = "Same seed, data and lr for every run of a line; details in docs/sltrain.md and docs/sst.md.\n\n"
    return (head + note + "\n".join(lines) + "\n") if lines else ""


def dct_section(d) -> str:
    if d is None:
        return f"DCT vs galore-torch: {NOT_MEASURED}.\n"
    rows = [
        f"| {name} | {fmt(r.get('refresh_ms_median'), '.1f')} | {fmt(r.get('steady_ms_median'), '.1f')} | "
        f"{fmt(r['state_bytes'] / MB if r.get('state_bytes') is not None else None, '.1f')} |"
        for name, r in d["rows"].items()
    ]
    ratios = d.get("ratios_dct_over_galore_torch", {})
    command = d["command"] if d["command"].startswith("python") else f"python {d['command']}"
    lines = [
        f"{d.get('num_matrices')} matrices of the {d['size']} model, rank {d['rank']}, {d['threads']} thread(s). "
        f"`{command}`, {d['date']}.\n",
        *table("optimizer | refresh step ms | steady step ms | state MB", rows),
        "",
        *[f"- DCT / galore-torch {k.replace('_', ' ')}: {v:.3f}" for k, v in ratios.items()],
    ]
    return "\n".join(lines) + "\n"


def flag_section(cost, *robust) -> str:
    """The aggregation cost and each robustness run (flag_robustness.json: p = 4; flag_robustness_p8.json: p = 8)."""
    if cost is None:
        out = [f"Aggregation cost: {NOT_MEASURED}.\n"]
    else:
        out = [f"Aggregation cost, p = 4 gloo processes (`python -m benchmarks flag_cost`):{code(cost)}"]
    if all(r is None for r in robust):
        out.append(f"Robustness: {NOT_MEASURED} (run `python -m benchmarks flag_robustness`).\n")
    for r in filter(None, robust):
        a = r["args"]
        ranks = a.get("byzantine_ranks", [a.get("byzantine_rank")])
        options = f"--nproc {a['nproc']} --byzantine {len(ranks)} " if a["nproc"] != 4 else ""
        out.append(
            f"Robustness: {a['nproc']} processes, ranks {ranks} Byzantine, debug model, {a['steps']} steps, "
            f"{a['batch'] // a['nproc']} sequences of {a['seq_len']} tokens per worker and step "
            f"(`python -m benchmarks flag_robustness {options}--aggs {' '.join(a['aggs'])}`):{code(r)}"
        )
    return "\n".join(out)


def code(results: dict) -> str:
    return "\n\n```\n" + "\n".join(results["table"]) + "\n```\n"


def load(name: str) -> dict | None:
    """A results file the suite produces (any other is refused: the page shows only what the suite ran)."""
    from benchmarks.suite import produced  # here, not above: benchmarks.memory imports this before its baseline

    if f"{name}.json" not in produced():
        raise KeyError(f"{name}.json is produced by no suite entry")
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


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
            f"{fmt(m.get('grad_optim_ratio'))} | {fmt(m.get('peak_step_ratio'))} | {fmt(sp.get('speed_ratio'))} | "
            f"{fmt(ql, '.4f')} | {fmt(ql / ref_loss if ql and ref_loss else None, '.4f')} |"
        )
    out.append(
        "| Flag aggregation | `agg=flag` | no memory change (gradients are aggregated, not stored) | | | "
        "see the Flag section (aggregation time vs mean) | see the robustness table | |"
    )
    return "\n".join(out) + "\n"


def targets(mem, q, d) -> str:
    from benchmarks.memory_scale import memory_scale_targets  # memory_scale imports this module

    sl = memory_row(mem, "130m", "sltrain", "adamw") or {}
    sst = memory_row(mem, "130m", "sst", "adamw") or {}
    ratios = (d or {}).get("ratios_dct_over_galore_torch", {})
    rows = [
        target("SLTrain model-state memory <= 0.75x full rank (130m)", sl.get("model_state_ratio"), 0.75),
        target("DCT optimizer state <= 0.7x galore-torch's (130m, r 256)", ratios.get("state_bytes"), 0.7),
        target("DCT refresh >= 10x faster than galore-torch's (time ratio <= 0.1)", ratios.get("refresh_time"), 0.1),
        target("SST gradient + optimizer memory <= 0.5x full rank (130m, r 64)", sst.get("grad_optim_ratio"), 0.5),
    ]
    if q is None:
        rows.append(f"| each strategy's final loss within 5% of full rank | {NOT_MEASURED} | {NOT_MEASURED} |")
    for r in (q or {}).get("results", [])[1:]:
        loss = r["final_val_loss"] / q["results"][0]["final_val_loss"]
        rows.append(target(f"{r['label']} final loss within 5% of full rank (CPU quality run)", loss, 1.05, ".4f"))
    rows += memory_scale_targets(load("memory_scale"))
    shown = NOT_MEASURED if load("gpu") is None else "see GPU section"
    for name in (
        "full-rank 1b MFU >= 40% (GPU)",
        "SLTrain throughput >= 0.9x full rank (GPU, 350m bf16)",
        "DCT throughput >= 0.9x full rank (GPU, 350m bf16)",
    ):
        rows.append(f"| {name} | {shown} | {shown} |")
    return "\n".join(table("target | measured | verdict", rows)) + "\n"


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
NO_GPU = (
    f"GPU figures (350m and 1b in bf16, MFU of full-rank 1b, the largest model each strategy fits): {NOT_MEASURED}. "
    "No GPU was available to the sessions that produced this report; the suite's `gpu` entries measure them on a "
    "CUDA machine and this section is then regenerated from benchmarks/results/gpu.json.\n"
)


def write_report() -> Path:
    from benchmarks.memory_scale import memory_scale_section

    mem, speed, q, d, gpu = load("memory"), load("speed"), load("quality_suite"), load("dct_vs_galore"), load("gpu")
    quality = quality_section(q) + longer_runs_section({"sltrain": load("quality_sltrain"), "sst": load("quality_sst")})
    lowmem = load("quality_lowmem_full"), load("quality_lowmem_sltrain")
    sections = {
        "Every strategy at a glance": summary(mem, speed, q),
        "Targets": targets(mem, q, d),
        "Quality (validation loss, wikitext-103 validation text, 20m model)": quality,
        "Memory at scale": memory_scale_section(load("memory_scale"), *lowmem),
        "Memory": memory_section(mem) + "\n![memory](../benchmarks/results/memory.png)\n",
        "Speed": speed_section(speed),
        "DCT low-rank AdamW against galore-torch": dct_section(d),
        "Flag aggregation": flag_section(load("flag_cost"), load("flag_robustness"), load("flag_robustness_p8")),
        "GPU": NO_GPU if gpu is None else speed_section(gpu) + "\n" + memory_section(load("gpu_memory")),
        "The papers' numbers": PAPERS,
    }
    machine = (
        f"{platform.machine()} CPU, {torch.get_num_threads()} threads available, torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )
    text = f"""# Results: memory, speed and quality of every strategy

Regenerate: `python -m benchmarks suite` (the CPU suite end to end, then this page), or
`python -m benchmarks suite --report-only` to re-render from the suite's files in benchmarks/results/.
Machine: {machine}, 2 cores shared with other work (figures are medians and ratios measured within one run).

"""
    DOC.write_text(text + "\n".join(f"## {title}\n\n{body}" for title, body in sections.items()))
    return DOC
