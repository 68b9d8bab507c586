"""Training speed of every param x optim combination vs full-rank AdamW: tokens/s and step-time ratio.

    python -m benchmarks speed --params full --optims adamw dct_adamw --steps-per-sample 10 \\
        --variant "full+dct_adamw T=10" "optim.update_gap=10"     # extra combinations: "param+optim label", overrides
    python -m benchmarks speed --device cuda --bf16 --sizes 350m 1b --out gpu   # GPU: tokens/s, MFU, peak memory

Steps (with the strategy's step hook on the trainer's own engine ops) are timed interleaved, so every
combination sees the same machine load. A refresh every T steps is amortised exactly when T divides
--steps-per-sample; rarer work (SST's resampling) through --hook-steps N: the hook alone over steps 1..N, its mean
minus its median per step added. On a GPU the rows also hold MFU (trainer/throughput.py) and the allocator's peak.
"""

from __future__ import annotations

import statistics

import torch

from benchmarks import harness
from benchmarks.report import speed_section


def hook_cost(b, steps: int) -> float:
    """Seconds per step of the strategy's periodic hook work, amortised over steps 1..steps (see the top)."""
    if b.ops is None or steps < 2:
        return 0.0
    device = next(b.model.parameters()).device
    times = [
        harness.timed(lambda s: (b.strategy.on_step_end(s, b.ops), harness.sync(device)), step)[1]
        for step in range(1, steps + 1)
    ]
    return statistics.mean(times) - statistics.median(times)


def time_size(args, overrides: list[str], size: str) -> tuple[list[dict], dict]:
    built, skipped = {}, {}
    for c in harness.combos(args, overrides):
        try:
            built[c.label] = b = harness.build(size, *c[1:], vocab=args.vocab, seq_len=args.seq_len, device=args.device)
            harness.engine_ops(b, args.device)
        except (ValueError, ImportError, torch.OutOfMemoryError) as e:
            skipped[c.label] = str(e).splitlines()[0]
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=gen).to(args.device)
    # The untimed first step allocates state, does the first refresh and compiles.
    first_s = {k: harness.timed(harness.train_step, b, tokens, 1, args.bf16)[1] for k, b in built.items()}
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps = {k: 1 for k in built}

    def sample(k, n=args.steps_per_sample):
        for _ in range(n):
            steps[k] += 1
            harness.train_step(built[k], tokens, steps[k], autocast=args.bf16)

    medians = harness.timed_round_robin({k: (lambda k=k: sample(k)) for k in built}, args.repeats)
    rows = []
    for k, t in medians.items():
        hook_s = hook_cost(built[k], args.hook_steps)
        param, optim = k.split()[0].split("+")
        row = {"combo": k, "size": size, "param": param, "optim": optim, "step_s": t / args.steps_per_sample + hook_s}
        params = sum(x.numel() for x in built[k].model.parameters())
        rows.append(row | {"periodic_hook_s": hook_s, "first_step_s": first_s[k], "params": params})
    return rows, skipped


def finish_rows(rows: list[dict], args) -> None:
    """Tokens/s, the ratio to full-rank AdamW of the same size, and (on a GPU) MFU."""
    from trainer import throughput as tp

    peak = tp.peak_tflops(torch.cuda.get_device_name()) if args.device == "cuda" else None
    for r in rows:
        r["tokens_per_s"] = args.batch * args.seq_len / r["step_s"]
        ref = next((x for x in rows if x["size"] == r["size"] and x["combo"] == "full+adamw"), None)
        r["speed_ratio"] = ref["step_s"] / r["step_s"] if ref else None
        eager = next((x for x in rows if x["size"] == r["size"] and f"{x['combo']} compiled" == r["combo"]), None)
        if eager:  # a --compile twin: its own eager run is the reference
            r["compiled_over_eager"] = eager["step_s"] / r["step_s"]
        if peak:
            flops = tp.flops_per_token(harness.shape_for(r["size"]), args.vocab, args.seq_len)
            r["mfu"] = flops * r["tokens_per_s"] / (peak * 1e12)


def main(argv=None) -> dict:
    options, overrides = harness.split_overrides(argv)
    p = harness.parser(__doc__, "speed", vocab=4096, batch=8, seq_len=128, repeats=12, threads=1, steps_per_sample=1)
    p.add_argument("--compile", action="store_true", help="also each combination with compiled blocks")
    p.add_argument("--hook-steps", type=int, default=0, help="amortise the strategy hook's periodic work over 1..N")
    p.add_argument("--sizes", "--size", nargs="+", default=["20m"])
    harness.add_combo_args(p)
    args = p.parse_args(options)
    if args.compile:  # a twin of each combination: "<label> compiled", train.compile=true
        args.variant += [
            (f"{c.label} compiled", " ".join([*c.extra, "train.compile=true"])) for c in harness.combos(args, [])
        ]
    torch.set_num_threads(args.threads)
    report = {"command": harness.command("speed", argv), "size": " ".join(args.sizes)}
    report |= {k: vars(args)[k] for k in ("batch", "seq_len", "threads", "device")} | {"torch": torch.__version__}
    per_size = [time_size(args, overrides, size) for size in args.sizes]
    rows, skipped = [r for rs, _ in per_size for r in rs], {k: v for _, s in per_size for k, v in s.items()}
    finish_rows(rows, args)
    report |= {"rows": rows, "not_supported": skipped}
    if args.device == "cuda":
        report |= {"gpu": torch.cuda.get_device_name(), "peak_allocated": torch.cuda.max_memory_allocated()}
    return harness.write_json(args, report, speed_section)
