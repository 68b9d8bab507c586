"""docs/RESULTS.md from the suite's JSON only, and the sections the benchmarks print: a figure whose JSON is
missing is "not yet measured", never estimated."""

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


def table(header: str, rows: list[str], intro: str = "") -> str:
    lines = [f"| {header} |", "|" + "---|" * len(header.split(" | ")), *rows]
    return "\n".join([intro, "", *lines] if intro else lines) + "\n"


def measured(title: str, section, results) -> str:
    return f"{title}: {NOT_MEASURED}.\n" if results is None else section(results)


def target(name: str, value, limit: float, spec: str = ".3f") -> str:
    met = NOT_MEASURED if value is None else ("**met**" if value <= limit else "**not met**")
    return f"| {name} | {fmt(value, spec)} | {met} |"


def memory_row(mem, size, p, o) -> dict:
    rows = [r for r in (mem or {}).get("rows", []) if "error" not in r and r["size"] == size]
    return next((r for r in rows if (r["param"], r["optim"]) == (p, o)), {})


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
    intro = (
        f"From the tensors after two optimizer steps (fp32, vocab 32000, batch {mem['batch']} x {mem['seq_len']}); "
        '"state" = trainable parameters + gradients + optimizer state; peak step = the process\'s peak resident '
        f"memory in one step minus its memory before the model was built. `{mem['command']}`, {mem['date']}."
    )
    header = "size | param | optim | weights MB | grads MB | optimizer MB | state vs full | grads+optim vs full | "
    return table(header + "peak step MB | peak vs full", [memory_line(r) for r in mem["rows"]], intro)


def speed_section(speed) -> str:
    mfu = any("mfu" in r for r in speed["rows"])
    rows = [
        f"| {r['combo']} | {r['step_s'] * 1000:.0f} | {r['tokens_per_s']:.0f} | {fmt(r['speed_ratio'])} |"
        + (f" {fmt(r.get('mfu'))} |" if mfu else "")
        for r in speed["rows"]
    ]
    rows += [f"| {k} | refused: {v[:100]} | | |" for k, v in speed.get("not_supported", {}).items()]
    intro = (
        f"{speed['size']} model, batch {speed['batch']} x {speed['seq_len']}, {speed['threads']} thread(s); steps "
        f"timed interleaved (medians). `{speed['command']}`, {speed['date']}."
    )
    return table("combination | ms / step | tokens / s | speed vs full-rank AdamW" + " | MFU" * mfu, rows, intro)


def quality_table(q, best_first: bool = False) -> str:
    done = [r for r in q["results"] if "error" not in r]
    rows = [f"| {r['label']} | `{r['overrides']}` | failed | | | | | |" for r in q["results"] if "error" in r]
    for r in sorted(done, key=lambda r: r["final_val_loss"]) if best_first else done:
        rows.append(
            f"| {r['label']} | `{r['overrides']}` | {r['params_trainable'] or 0:,} | {r['first_val_loss']:.3f} | "
            f"{r['final_val_loss']:.4f} | {2.718281828 ** r['final_val_loss']:.1f} | "
            f"{r['final_val_loss'] / done[0]['final_val_loss']:.4f} | {r['tokens_per_s_median'] or 0:.0f} |"
        )
    header = "run | overrides | trainable params | first val loss | final val loss | final ppl | loss vs full | "
    return table(header + "tokens/s", rows)


def quality_section(q, longer_runs: dict) -> str:
    out = f"Quality: {NOT_MEASURED}.\n"
    if q is not None:
        settings = " ".join(s for s in q["settings"] if not s.startswith("run.out_dir"))
        out = (
            "Early-training figures: at this CPU budget (200 steps of 512-token batches, ~100k tokens) full rank "
            "trails every low-memory method by 2-6% (tiny, noisy batches favour fewer trainable directions); longer "
            "runs below (4x the tokens per step, 2x the steps) show the published ordering (full <= SLTrain / SST < "
            f"low-rank).\n\nSame seed, data and token budget for every run. `{q['command']}`, {q['date']}. Settings: "
            f"`{settings}`.\n\n{quality_table(q)}\n![loss curves](../benchmarks/results/quality_suite.png)\n"
        )
    runs = [(tag, r, r["results"][0]["final_val_loss"]) for tag, r in longer_runs.items() if r is not None]
    if runs:
        out += "\n### Longer runs (20m, 400 steps x 2048 tokens)\n\n"
        out += "Same seed, data and lr for every run of a line; details in docs/sltrain.md and docs/sst.md.\n\n"
    for tag, r, ref in runs:
        finals = ", ".join(
            f"{x['label']} {x['final_val_loss']:.4f} ({x['final_val_loss'] / ref:.3f}x)" for x in r["results"]
        )
        out += f"- `quality_{tag}.json` ([plot](../benchmarks/results/quality_{tag}.png)): {finals}. `{r['command']}`\n"
    return out


def dct_section(d) -> str:
    rows = [
        f"| {name} | {fmt(r.get('refresh_ms_median'), '.1f')} | {fmt(r.get('steady_ms_median'), '.1f')} | "
        f"{fmt(r['state_bytes'] / MB if r.get('state_bytes') is not None else None, '.1f')} |"
        for name, r in d["rows"].items()
    ]
    command = d["command"] if d["command"].startswith("python") else f"python {d['command']}"
    intro = (
        f"{d.get('num_matrices')} matrices of the {d['size']} model, rank {d['rank']}, {d['threads']} thread(s). "
        f"`{command}`, {d['date']}."
    )
    ratios = d.get("ratios_dct_over_galore_torch", {}).items()
    lines = [f"- DCT / galore-torch {k.replace('_', ' ')}: {v:.3f}\n" for k, v in ratios]
    return table("optimizer | refresh step ms | steady step ms | state MB", rows, intro) + "\n" + "".join(lines)


def flag_section(cost, *robust) -> str:
    blocks = [("Aggregation cost, p = 4 gloo processes (`python -m benchmarks flag_cost`)", cost)] if cost else []
    for r in filter(None, robust):
        a = r["args"]
        options = f"--nproc {a['nproc']} --byzantine {a['byzantine']} " if a["nproc"] != 4 else ""
        intro = (
            f"Robustness: {a['nproc']} processes, ranks {a['byzantine_ranks']} Byzantine, debug model, "
            f"{a['steps']} steps, {a['batch'] // a['nproc']} sequences of {a['seq_len']} tokens per worker and step "
            f"(`python -m benchmarks flag_robustness {options}--aggs {' '.join(a['aggs'])}`)"
        )
        blocks.append((intro, r))
    out = [f"{text}:\n\n```\n" + "\n".join(results["table"]) + "\n```\n" for text, results in blocks]
    if cost is None:
        out.insert(0, f"Aggregation cost: {NOT_MEASURED}.\n")
    if not any(robust):
        out.append(f"Robustness: {NOT_MEASURED} (run `python -m benchmarks flag_robustness`).\n")
    return "\n".join(out)


def load(name: str) -> dict | None:
    """A results file the suite produces (any other is refused: the page shows only what the suite ran)."""
    from benchmarks.suite import produced  # here, not above: benchmarks.memory imports this before its baseline

    if f"{name}.json" not in produced():
        raise KeyError(f"{name}.json is produced by no suite entry")
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


STRATEGIES = [  # title, param, optim, the quality suite's label
    ("full rank AdamW (baseline)", "full", "adamw", "full"),
    ("SLTrain", "sltrain", "adamw", "sltrain"),
    ("low-rank (SLTrain, delta 0)", "lowrank", "adamw", "lowrank"),
    ("SST", "sst", "adamw", "sst"),
    ("DCT low-rank AdamW", "full", "dct_adamw", "dct_adamw"),
    ("GaLore, our SVD projector", "full", "galore_adamw", "galore_adamw"),
    ("galore-torch (peer)", "full", "galore_torch", "galore_torch"),
]


def summary(mem, speed, q) -> str:
    speed_ratios = {r["combo"]: r["speed_ratio"] for r in (speed or {}).get("rows", [])}
    losses = {r["label"]: r.get("final_val_loss") for r in (q or {}).get("results", [])}
    rows = []
    for title, p, o, label in STRATEGIES:
        m, loss, full = memory_row(mem, "130m", p, o), losses.get(label), losses.get("full")
        rows.append(
            f"| {title} | `param={p} optim={o}` | {fmt(m.get('model_state_ratio'))} | {fmt(m.get('grad_optim_ratio'))} "
            f"| {fmt(m.get('peak_step_ratio'))} | {fmt(speed_ratios.get(p + '+' + o))} | {fmt(loss, '.4f')} | "
            f"{fmt(loss / full if loss and full else None, '.4f')} |"
        )
    rows.append(
        "| Flag aggregation | `agg=flag` | no memory change (gradients are aggregated, not stored) | | | "
        "see the Flag section (aggregation time vs mean) | see the robustness table | |"
    )
    header = "strategy | choice | model state vs full (130m) | grads + optimizer vs full (130m) | peak step memory vs "
    return table(header + "full (130m) | speed vs full (20m) | final val loss (20m) | loss vs full", rows)


def targets(mem, q, d) -> str:
    from benchmarks.memory_scale import DCT, GIB, SLTRAIN  # memory_scale imports this module

    ratios = (d or {}).get("ratios_dct_over_galore_torch", {})
    sltrain, sst = memory_row(mem, "130m", "sltrain", "adamw"), memory_row(mem, "130m", "sst", "adamw")
    rows = [
        target("SLTrain model-state memory <= 0.75x full rank (130m)", sltrain.get("model_state_ratio"), 0.75),
        target("DCT optimizer state <= 0.7x galore-torch's (130m, r 256)", ratios.get("state_bytes"), 0.7),
        target("DCT refresh >= 10x faster than galore-torch's (time ratio <= 0.1)", ratios.get("refresh_time"), 0.1),
        target("SST gradient + optimizer memory <= 0.5x full rank (130m, r 64)", sst.get("grad_optim_ratio"), 0.5),
    ]
    if q is None:
        rows.append(target("each strategy's final loss within 5% of full rank", None, 1.05))
    for r in (q or {}).get("results", [])[1:]:
        loss = r["final_val_loss"] / q["results"][0]["final_val_loss"]
        rows.append(target(f"{r['label']} final loss within 5% of full rank (CPU quality run)", loss, 1.05, ".4f"))
    ms = load("memory_scale") or {"results": {"7b, 1 x 256": {}}}
    totals = {label: r["bytes"]["total"] / GIB for label, r in ms["results"]["7b, 1 x 256"].items() if "error" not in r}
    rows += [
        target("7b step at 1 x 256, best configuration <= 15 GiB (estimated)", min(totals.values(), default=None), 15),
        target("7b dct_adamw + 8-bit + step in backward <= 20 GiB (estimated)", totals.get(DCT), 20),
        target("7b sltrain + 8-bit + step in backward <= 17 GiB (estimated)", totals.get(SLTRAIN), 17),
        target("estimated best / today's mode at 1b <= 0.25", ms.get("best_over_today_1b"), 0.25),
    ]
    for name, r in (ms.get("real") or {}).items():
        met = "**met**" if abs(r["ratio"] - 1) <= 0.02 else "**not met**"
        rows.append(f"| real vs estimated peak within 2% ({name}) | {fmt(r['ratio'])} | {met} |")
    shown = NOT_MEASURED if load("gpu") is None else "see GPU section"
    rows += [
        f"| full-rank 1b MFU >= 40% (GPU) | {shown} | {shown} |",
        f"| SLTrain throughput >= 0.9x full rank (GPU, 350m bf16) | {shown} | {shown} |",
        f"| DCT throughput >= 0.9x full rank (GPU, 350m bf16) | {shown} | {shown} |",
    ]
    return table("target | measured | verdict", rows)


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
    f"GPU figures (350m and 1b in bf16, MFU of full-rank 1b, the largest model each strategy fits): {NOT_MEASURED} "
    "(no GPU here); the suite's `gpu` entries measure them on a CUDA machine, into benchmarks/results/gpu.json.\n"
)


def write_report() -> Path:
    from benchmarks.memory_scale import memory_scale_section

    mem, speed, q, d, gpu = load("memory"), load("speed"), load("quality_suite"), load("dct_vs_galore"), load("gpu")
    quality = quality_section(q, {"sltrain": load("quality_sltrain"), "sst": load("quality_sst")})
    lowmem = load("quality_lowmem_full"), load("quality_lowmem_sltrain")
    sections = {
        "Every strategy at a glance": summary(mem, speed, q),
        "Targets": targets(mem, q, d),
        "Quality (validation loss, wikitext-103 validation text, 20m model)": quality,
        "Memory at scale": memory_scale_section(load("memory_scale"), *lowmem),
        "Memory": measured("Memory", memory_section, mem) + "\n![memory](../benchmarks/results/memory.png)\n",
        "Speed": measured("Speed", speed_section, speed),
        "DCT low-rank AdamW against galore-torch": measured("DCT vs galore-torch", dct_section, d),
        "Flag aggregation": flag_section(load("flag_cost"), load("flag_robustness"), load("flag_robustness_p8")),
        "GPU": NO_GPU
        if gpu is None
        else speed_section(gpu) + "\n" + measured("Memory", memory_section, load("gpu_memory")),
        "The papers' numbers": PAPERS,
    }
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} threads available, torch {torch.__version__}"
    text = f"""# Results: memory, speed and quality of every strategy

Regenerate: `python -m benchmarks suite` (the CPU suite, then this page), or `python -m benchmarks suite --report-only`
(this page only, from benchmarks/results/). Machine: {machine}, Python {platform.python_version()}, 2 cores
shared with other work (figures are medians and ratios measured within one run).

"""
    DOC.write_text(text + "\n".join(f"## {title}\n\n{body}" for title, body in sections.items()))
    return DOC
