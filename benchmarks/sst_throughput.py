"""SST training throughput vs full rank, both timed in the same process, steps interleaved.

    python benchmarks/sst_throughput.py                                  # 20m on CPU, fp32
    python benchmarks/sst_throughput.py --size 350m --device cuda --bf16 --seq-len 256 --batch 8

Each timed step is forward + backward + AdamW step (+ SST's post-step renormalisation for SST).
Dense and SST steps alternate so both see the same machine load; medians are compared. The
periodic work (a resample, a resample with re-SVD) is timed separately and amortised over the
default schedule (T3 = 200 steps, T2 = ceil(k / r)). Writes benchmarks/results/sst_throughput.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import Llama, shape_for  # noqa: E402
from param.sst import SST, SSTConfig  # noqa: E402
from trainer.memtrack import LocalOps  # noqa: E402  (the engine's Ops at ZeRO-0)
from trainer.strategy import BuildContext  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def periodic_cost(sst, device):
    """Seconds of one resample and of one resample + re-SVD, and their cost per step at the default T3 / T2."""
    t2 = sst.resvd_every(sst.layers[0][1])
    sst.num_resamples = 0
    resample_s = timed(sst.resample, device)  # num_resamples 1: no re-SVD unless T2 == 1
    sst.num_resamples = t2 - 1
    resvd_s = timed(sst.resample, device)  # the T2-th: re-SVD of every layer, then resample
    t3 = SSTConfig().update_every
    return resample_s, resvd_s, t2, t3, ((t2 - 1) * resample_s + resvd_s) / (t2 * t3)


def build_sides(args, device):
    """The same dense init twice: as is ("full") and converted to SST, each with its own AdamW."""
    torch.manual_seed(0)
    dense = Llama(shape_for(args.size), args.vocab_size, max_seq_len=args.seq_len)
    model = copy.deepcopy(dense)
    sst = SST(SSTConfig(rank=args.rank), BuildContext(model_size=args.size))
    sst.convert(model)
    dense.to(device), model.to(device)
    sides = {}
    for name, m in (("full", dense), ("sst", model)):
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4, foreach=False)
        sides[name] = (m, opt)
    return sst, sides


def interleaved_step_times(sst, sides, args, device) -> dict[str, list[float]]:
    """Seconds per training step of each side, alternating the order every round; round 0 is the warm-up."""
    ops = LocalOps(sides["sst"][1])
    tokens = torch.randint(0, args.vocab_size, (args.batch, args.seq_len + 1), device=device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def step(name):
        m, opt = sides[name]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            logits = m(inputs)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if name == "sst":
            sst.on_step_end(1, ops)  # step 1: post-step work only, no resample

    times = {"full": [], "sst": []}
    for i in range(args.steps + 1):
        for name in ("full", "sst") if i % 2 == 0 else ("sst", "full"):
            t = timed(lambda: step(name), device)
            if i > 0:
                times[name].append(t)
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="20m")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16, help="sequences per step")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per side (after one warm-up each)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="autocast matmuls to bf16 (weights stay fp32, as the trainer)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sst, sides = build_sides(args, device)
    times = interleaved_step_times(sst, sides, args, device)
    resample_s, resvd_s, t2, t3, amortised = periodic_cost(sst, device)

    med = {k: statistics.median(v) for k, v in times.items()}
    tokens_per_step = args.batch * args.seq_len
    ratio = med["full"] / (med["sst"] + amortised)
    print(f"{args.size} on {device}{' bf16' if args.bf16 else ''}, r = {args.rank}, {tokens_per_step} tokens/step, "
          f"{args.threads} thread(s), {args.steps} timed steps per side")
    print(f"{'':8} {'median s/step':>14} {'tokens/s':>10}")
    for k in ("full", "sst"):
        print(f"{k:8} {med[k]:14.4f} {tokens_per_step / med[k]:10.0f}")
    print(f"resample {resample_s:.3f} s, resample + re-SVD {resvd_s:.3f} s; amortised at T3 = {t3}, T2 = {t2}: "
          f"{amortised * 1e3:.2f} ms/step")
    print(f"throughput sst / full (incl. amortised resampling): {ratio:.3f}")
    out = ROOT / "benchmarks" / "results" / "sst_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "args": vars(args),
                               "step_s": times, "median_step_s": med, "resample_s": resample_s, "resvd_s": resvd_s,
                               "amortised_periodic_s": amortised, "throughput_ratio_sst_over_full": ratio}, indent=1))


if __name__ == "__main__":
    main()
