"""Optimizer step cost of dct_adamw against the published GaLore (galore-torch), same process, same matrices.

    python -m benchmarks dct_vs_galore [--size 130m] [--rank 256] [--gap 5] [--steps 11] [--threads 1]

The matrices are every block's seven projections, with fixed random gradients. The optimizers step in
alternation and each ratio is the median over steps of (DCT time / GaLore time) in the same step, which cancels
a shared machine's drifting load. Step 0 also allocates the state, so it is not in the refresh median.
"""

from __future__ import annotations

import statistics

import torch

from benchmarks.harness import command, parser, state_tensors, tensor_bytes, timed, write_json
from benchmarks.report import dct_section
from models import LLAMA_SIZES
from optim import projectors
from optim.lowrank_adam import LowRankAdamW


def block_shapes(size: str) -> list[tuple[int, int]]:
    """(out, in) of q, k, v, o, gate, up, down for every block."""
    s = LLAMA_SIZES[size]
    h, i = s.hidden, s.intermediate
    return [(h, h)] * 4 * s.num_layers + [(i, h), (i, h), (h, i)] * s.num_layers


def make_optimizers(shapes, grads, args) -> dict:
    from galore_torch import GaLoreAdamW

    def params():
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(*s) * 0.02) for s in shapes]
        for p, g in zip(ps, grads):
            p.grad = g  # shared, never modified by either optimizer
        return ps

    dct = {"params": params(), "projected": True}
    galore = {"params": params(), "rank": args.rank, "update_proj_gap": args.gap, "scale": 0.25, "proj_type": "std"}
    return {
        "dct_adamw": LowRankAdamW([dct], lr=1e-3, rank=args.rank, update_gap=args.gap),
        "galore_torch": GaLoreAdamW([galore], lr=1e-3, no_deprecation_warning=True),
        "adamw (torch, full rank)": torch.optim.AdamW(params(), lr=1e-3, foreach=False),
    }


def time_steps(opts: dict, args) -> dict[str, dict[str, list[float]]]:
    """Seconds of each optimizer's steps, refresh and steady apart; the optimizers alternate within a step."""
    times = {name: {"refresh": [], "steady": []} for name in opts}
    for step in range(args.steps):
        kind = "refresh" if step % args.gap == 0 else "steady"
        # The full-rank reference needs only a few steady steps.
        active = [n for n in opts if not (n.startswith("adamw") and step >= args.gap + 2)]
        for name in active:
            times[name][kind].append(timed(opts[name].step)[1])
        shown = " ".join(f"{n} {times[n][kind][-1] * 1e3:.0f} ms" for n in active)
        print(f"step {step} ({kind}): {shown}", flush=True)
    return times


def run(args, argv) -> dict:
    torch.set_num_threads(args.threads)
    shapes = block_shapes(args.size)
    gen = torch.Generator().manual_seed(1)
    opts = make_optimizers(shapes, [torch.randn(*s, generator=gen) for s in shapes], args)
    times, rows = time_steps(opts, args), {}
    for name, opt in opts.items():
        ms = {kind: [1e3 * t for t in samples] for kind, samples in times[name].items()}
        refresh = ms["refresh"][1:] or ms["refresh"]  # step 0 also allocates the state
        rows[name] = {
            "refresh_ms_median": statistics.median(refresh) if not name.startswith("adamw") else None,
            "steady_ms_median": statistics.median(ms["steady"]),
            # galore-torch keeps P inside a Python projector object: state_tensors finds it there.
            "state_bytes": tensor_bytes(t for s in opt.state.values() for v in s.values() for t in state_tensors(v)),
            "basis_cache_bytes": tensor_bytes(projectors._CACHE.values()) * name.startswith("dct"),
            "refresh_samples_ms": ms["refresh"],
            "steady_samples_ms": ms["steady"],
        }
    dct, galore = rows["dct_adamw"], rows["galore_torch"]

    def paired(kind: str) -> float:
        """The median over steps of (DCT time / GaLore time) in the same step: robust to drifting load."""
        pairs = list(zip(dct[f"{kind}_samples_ms"], galore[f"{kind}_samples_ms"]))[kind == "refresh" :]
        return statistics.median(a / b for a, b in pairs)

    ratios = {
        "refresh_time": paired("refresh"),
        "steady_time": paired("steady"),
        "state_bytes": (dct["state_bytes"] + dct["basis_cache_bytes"]) / galore["state_bytes"],
    }
    return {
        "command": command("dct_vs_galore", argv),
        **{k: vars(args)[k] for k in ("threads", "size", "rank", "gap")},
        **{"num_matrices": len(shapes), "torch": torch.__version__, "rows": rows},
        "ratios_dct_over_galore_torch": ratios,
        "targets": {"refresh_time": 0.1, "steady_time": 1.0, "state_bytes": 0.7},
    }


def main(argv=None) -> dict:
    gap = (5, "update gap: steps 0, gap, 2 gap, ... refresh")
    p = parser(__doc__, "dct_vs_galore", rank=256, gap=gap, steps=11, threads=1)
    p.add_argument("--size", default="130m", choices=list(LLAMA_SIZES))
    args = p.parse_args(argv)
    if args.steps < 2 * args.gap + 1 or args.gap < 2:
        p.error("need --gap >= 2 and --steps >= 2 * gap + 1 (one timed refresh after the first, and steady steps)")
    return write_json(args, run(args, argv), dct_section)
