"""SLTrain vs full rank: training throughput (tokens/s) in one process, steps interleaved.

    python benchmarks/sltrain_speed.py                                   # 20m, CPU, fp32
    python benchmarks/sltrain_speed.py --model 350m --device cuda --bf16 --batch 8 --seq-len 256

Each variant (full, sltrain, lowrank = sltrain with delta 0) is built once; then rounds of one
AdamW step per variant (forward, backward, step) are timed in turn, so every variant sees the same
machine load. Reports median step time and tokens/s relative to full rank, and the median of the
per-round ratios (steps adjacent in time: robust to load that drifts on a shared machine).
No DeepSpeed: this measures the layers and the optimizer. Writes benchmarks/results/sltrain_speed[_<tag>].json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import Llama, shape_for  # noqa: E402
from param.sltrain import LowRankConfig, SLTrain, SLTrainConfig  # noqa: E402
from trainer.strategy import BuildContext  # noqa: E402


def build(variant: str, args):
    torch.manual_seed(0)
    model = Llama(shape_for(args.model), args.vocab, args.seq_len)
    if variant != "full":
        cfg = LowRankConfig().as_sltrain() if variant == "lowrank" else SLTrainConfig()
        SLTrain(cfg, BuildContext(model_size=args.model)).convert(model)
    model.to(args.device)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=args.device == "cuda")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step(model, optimizer, tokens, args) -> float:
    sync(args.device)
    start = time.perf_counter()
    with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16):
        logits = model(tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sync(args.device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="20m")
    parser.add_argument("--vocab", type=int, default=4096, help="4096: the trained tokenizer of the quality runs")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 weights), as the trainer on GPU")
    parser.add_argument("--variants", default="full,sltrain,lowrank")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    models = {v: build(v, args) for v in variants}
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=torch.Generator().manual_seed(0)).to(args.device)
    times = {v: [] for v in variants}
    for i in range(args.warmup + args.rounds):
        for v in variants if i % 2 == 0 else reversed(variants):  # alternate the order: no variant always goes first
            t = step(*models[v], tokens, args)
            if i >= args.warmup:
                times[v].append(t)
    n_tokens = args.batch * args.seq_len
    ref = statistics.median(times["full"]) if "full" in times else None
    print(f"{args.model}, vocab {args.vocab}, {args.batch} x {args.seq_len} tokens/step, {args.device}"
          f"{' bf16 autocast' if args.bf16 else ' fp32'}, {args.threads} thread(s), median of {args.rounds}")
    print(f"{'variant':<9} {'step ms':>9} {'tokens/s':>10} {'vs full':>8} {'per-round':>10}")
    rows = {}
    for v in variants:
        med = statistics.median(times[v])
        # The load on a shared machine drifts; the ratio within each round (adjacent steps) resists it.
        per_round = statistics.median(f / t for f, t in zip(times["full"], times[v])) if ref else None
        rows[v] = {"median_step_s": med, "tokens_per_s": n_tokens / med, "ratio_vs_full": ref / med if ref else None,
                   "median_per_round_ratio_vs_full": per_round, "step_times_s": times[v]}
        print(f"{v:<9} {med * 1e3:>9.1f} {n_tokens / med:>10.0f} {rows[v]['ratio_vs_full'] or 0:>8.3f} {per_round or 0:>10.3f}")
    out = ROOT / "benchmarks" / "results" / f"sltrain_speed{'_' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "device": device_name,
                               "settings": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
