"""SLTrain vs full rank: model-state bytes and measured peak memory of a training step (CPU).

    python benchmarks/sltrain_memory.py [--model 130m] [--batch 2] [--seq-len 256]

1. Model state, counted from the shapes (vocab 32000 as in METHODS.md): trainable parameters +
   gradients + AdamW's two moments, fp32, plus SLTrain's int32 supports; and the paper's estimate
   (weights + optimizer states in bf16, the 0.60G vs 0.81G of METHODS.md section 3).
2. Peak step memory: each variant in a fresh process builds the model, runs two AdamW steps on
   random tokens, and reports its peak resident set (ru_maxrss) minus the resident set before the
   model was built. Same batch for both. Writes benchmarks/results/sltrain_memory.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VOCAB = 32000


def build(variant: str, size: str, device: str = "cpu"):
    import torch

    from models import Llama, shape_for
    from param.sltrain import LowRankConfig, SLTrain, SLTrainConfig
    from trainer.strategy import BuildContext

    with torch.device(device):
        model = Llama(shape_for(size), VOCAB, 256)
    if variant != "full":
        cfg = LowRankConfig().as_sltrain() if variant == "lowrank" else SLTrainConfig()
        SLTrain(cfg, BuildContext(model_size=size)).convert(model)
    return model


def model_state(variant: str, size: str) -> dict:
    model = build(variant, size, device="meta")
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    index_bytes = sum(b.numel() * b.element_size() for name, b in model.named_buffers() if name.endswith("support"))
    return {"trainable_params": params, "support_bytes": index_bytes,
            "fp32_param_grad_adamw_bytes": 16 * params + index_bytes,
            "paper_estimate_bf16_bytes": 2 * 3 * params + index_bytes}


def child(variant: str, size: str, batch: int, seq_len: int) -> None:
    """Runs in its own process: peak RSS of two training steps, minus the RSS before building."""
    import psutil
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokens = torch.randint(0, VOCAB, (batch, seq_len + 1))
    before = psutil.Process().memory_info().rss
    model = build(variant, size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    start = time.perf_counter()
    for _ in range(2):
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # keep the gradients: they are part of a step's memory
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_rss_bytes": peak, "rss_before_bytes": before, "peak_step_bytes": peak - before,
                      "seconds": time.perf_counter() - start}))


def measure_peak(variant: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--model", args.model, "--batch", str(args.batch),
           "--seq-len", str(args.seq_len)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="130m")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.model, args.batch, args.seq_len)

    variants = ["full", "sltrain", "lowrank"]
    rows = {v: {**model_state(v, args.model), **measure_peak(v, args)} for v in variants}
    ref = rows["full"]
    gib = 2**30
    print(f"{args.model}, vocab {VOCAB}, batch {args.batch} x {args.seq_len} tokens, CPU, fp32, 1 thread")
    print(f"{'variant':<9} {'trainable':>12} {'state GiB':>10} {'ratio':>6} {'paper-est GiB':>14} {'ratio':>6} "
          f"{'peak step GiB':>14} {'ratio':>6}")
    for v, r in rows.items():
        r["state_ratio"] = r["fp32_param_grad_adamw_bytes"] / ref["fp32_param_grad_adamw_bytes"]
        r["paper_estimate_ratio"] = r["paper_estimate_bf16_bytes"] / ref["paper_estimate_bf16_bytes"]
        r["peak_step_ratio"] = r["peak_step_bytes"] / ref["peak_step_bytes"]
        print(f"{v:<9} {r['trainable_params']:>12,} {r['fp32_param_grad_adamw_bytes'] / gib:>10.3f} {r['state_ratio']:>6.3f} "
              f"{r['paper_estimate_bf16_bytes'] / 1e9:>13.3f}G {r['paper_estimate_ratio']:>6.3f} "
              f"{r['peak_step_bytes'] / gib:>14.3f} {r['peak_step_ratio']:>6.3f}")
    out = ROOT / "benchmarks" / "results" / "sltrain_memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "model": args.model,
                               "batch": args.batch, "seq_len": args.seq_len, "vocab": VOCAB, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
