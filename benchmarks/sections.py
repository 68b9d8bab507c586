"""The sections of docs/RESULTS.md, one per benchmark's JSON (benchmarks/report.py puts them together): a figure
whose JSON is missing is "not yet measured", never estimated."""

from __future__ import annotations

NOT_MEASURED = "not yet measured"


def fmt(x, spec=".3f") -> str:
    return NOT_MEASURED if x is None else format(x, spec)


def table(header: str, rows: list[str]) -> list[str]:
    """A markdown table: the header's columns ("a | b"), the separator, then the rows."""
    return [f"| {header} |", "|" + "---|" * len(header.split(" | ")), *rows]


def verdict(value, ok) -> str:
    return NOT_MEASURED if value is None else ("**met**" if ok(value) else "**not met**")


def memory_row(mem, size, p, o):
    rows = (mem or {}).get("rows", [])
    return next(
        (r for r in rows if r["size"] == size and r["param"] == p and r["optim"] == o and "error" not in r), None
    )


def memory_section(mem) -> str:
    if mem is None:
        return f"Memory: {NOT_MEASURED}.\n"
    mb = 2**20
    lines = table(
        "size | param | optim | weights MB | grads MB | optimizer MB | state vs full | grads+optim vs full | "
        "peak step MB | peak vs full",
        [],
    )
    for r in mem["rows"]:
        if "error" in r:
            lines.append(
                f"| {r['size']} | {r['param']} | {r['optim']} | refused: {r['error'].replace('|', '/')[:120]} |"
                + " |" * 7
            )
            continue
        peak = f"{r['peak_step_rss'] / mb:.0f}" if "peak_step_rss" in r else "-"
        lines.append(
            f"| {r['size']} | {r['param']} | {r['optim']} | {r['weights'] / mb:.1f} | {r['grads'] / mb:.1f} | "
            f"{r['optim_state'] / mb:.1f} | {fmt(r.get('model_state_ratio'))} | {fmt(r.get('grad_optim_ratio'))} | "
            f"{peak} | {fmt(r.get('peak_step_ratio')) if 'peak_step_ratio' in r else '-'} |"
        )
    return (
        f"Measured from the tensors after two optimizer steps "
        f"(fp32, vocab 32000, batch {mem['batch']} x {mem['seq_len']}); "
        '"state" = trainable parameters + gradients + optimizer state. Peak step memory: the process\'s peak '
        "resident memory during one training step minus its memory before the model was built. "
        f"`{mem['command']}`, {mem['date']}.\n\n" + "\n".join(lines) + "\n"
    )


def speed_section(speed) -> str:
    if speed is None:
        return f"Speed: {NOT_MEASURED}.\n"
    mfu = any("mfu" in r for r in speed["rows"])
    lines = table(
        "combination | ms / step | tokens / s | speed vs full-rank AdamW" + " | MFU" * mfu,
        [
            f"| {r['combo']} | {r['step_s'] * 1000:.0f} | {r['tokens_per_s']:.0f} | {fmt(r['speed_ratio'])} |"
            + (f" {fmt(r.get('mfu'))} |" if mfu else "")
            for r in speed["rows"]
        ],
    )
    lines += [f"| {k} | refused: {v[:100]} | | |" for k, v in speed.get("not_supported", {}).items()]
    return (
        f"{speed['size']} model, batch {speed['batch']} x {speed['seq_len']}, "
        f"{speed['threads']} thread(s); steps timed "
        f"interleaved (medians). `{speed['command']}`, {speed['date']}.\n\n" + "\n".join(lines) + "\n"
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
        f"`{' '.join(s for s in q['settings'] if not s.startswith('run.out_dir'))}`.\n\n"
        + quality_table(q)
        + "\n\n![loss curves](../benchmarks/results/quality_suite.png)\n"
    )


def longer_runs_section(runs: dict) -> str:
    """The per-method quality runs at a larger budget (quality_<tag>.json written by their documented commands)."""
    lines = []
    for tag, q in runs.items():
        if q is None:
            continue
        ref = q["results"][0]["final_val_loss"]
        finals = ", ".join(
            f"{r['label']} {r['final_val_loss']:.4f} ({r['final_val_loss'] / ref:.3f}x)" for r in q["results"]
        )
        lines.append(
            f"- `quality_{tag}.json` ([plot](../benchmarks/results/quality_{tag}.png)): {finals}. `{q['command']}`"
        )
    if not lines:
        return ""
    return (
        "\n### Longer runs (20m, 400 steps x 2048 tokens)\n\nSame seed, data and lr for every run of a line; "
        "details in "
        "docs/sltrain.md and docs/sst.md.\n\n" + "\n".join(lines) + "\n"
    )


def dct_section(d) -> str:
    if d is None:
        return f"DCT vs galore-torch: {NOT_MEASURED}.\n"
    lines = table("optimizer | refresh step ms | steady step ms | state MB", [])
    for name, r in d["rows"].items():
        lines.append(
            f"| {name} | {fmt(r.get('refresh_ms_median'), '.1f')} | {fmt(r.get('steady_ms_median'), '.1f')} | "
            f"{fmt(r['state_bytes'] / 2**20 if r.get('state_bytes') is not None else None, '.1f')} |"
        )
    ratios = d.get("ratios_dct_over_galore_torch", {})
    extra = "".join(f"- DCT / galore-torch {k.replace('_', ' ')}: {v:.3f}\n" for k, v in ratios.items())
    return (
        f"{d.get('num_matrices')} matrices of the {d['size']} model, rank {d['rank']}, {d['threads']} thread(s). "
        f"`{'' if d['command'].startswith('python') else 'python '}{d['command']}`, {d['date']}.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + extra
    )


def lines(table) -> str:
    return "\n".join(table) if isinstance(table, list) else str(table or "")


def flag_section(cost, *robust) -> str:
    """The aggregation cost and each robustness run (flag_robustness.json: p = 4; flag_robustness_p8.json: p = 8)."""
    out = []
    if cost is None:
        out.append(f"Aggregation cost: {NOT_MEASURED}.\n")
    else:
        out.append(
            f"Aggregation cost, p = 4 gloo processes (`python -m benchmarks flag_cost`):\n\n```\n"
            f"{lines(cost.get('table'))}\n```\n"
        )
    if all(r is None for r in robust):
        out.append(f"Robustness: {NOT_MEASURED} (run `python -m benchmarks flag_robustness`).\n")
    for r in filter(None, robust):
        a = r.get("args", {})
        per_worker = a.get("batch", 0) // max(1, a.get("nproc", 1))
        ranks = a.get("byzantine_ranks", [a.get("byzantine_rank")])
        options = f"--nproc {a.get('nproc')} --byzantine {len(ranks)} " if a.get("nproc", 4) != 4 else ""
        out.append(
            f"Robustness: {a.get('nproc')} processes, ranks {ranks} Byzantine, debug model, {a.get('steps')} steps, "
            f"{per_worker} sequences of {a.get('seq_len')} tokens per worker and step "
            f"(`python -m benchmarks flag_robustness {options}--aggs {' '.join(a.get('aggs', []))}`):\n\n```\n"
            f"{lines(r.get('table'))}\n```\n"
        )
    return "\n".join(out)
