"""SST memory vs full rank at a LLaMA shape (default 130M, vocab 32000, r = 64).

    python benchmarks/sst_memory.py [--size 130m] [--rank 64]

Builds the dense model and its SST conversion on CPU, gives every trainable tensor a gradient and
takes one real AdamW step, then counts bytes: trainable parameters + gradients + optimizer state
(what SST saves) and stored weights (parameters + buffers, what SST costs). Prints a table and writes
benchmarks/results/sst_memory.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import Llama, projection_modules, shape_for  # noqa: E402
from param.sst import SST, SSTConfig  # noqa: E402
from trainer.strategy import BuildContext  # noqa: E402


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(model: torch.nn.Module) -> dict:
    """Bytes for the whole model and for the seven block projections only."""
    projection_prefixes = tuple(f"{name}." for name, _, _, _ in projection_modules(model))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for _, p in trainable:
        p.grad = torch.zeros_like(p)
    optimizer = torch.optim.AdamW([p for _, p in trainable], lr=1e-3, foreach=False)
    optimizer.step()
    state = {id(p): [t for t in optimizer.state[p].values() if torch.is_tensor(t)] for _, p in trainable}
    out = {}
    for scope, keep in (("model", lambda n: True), ("projections", lambda n: n.startswith(projection_prefixes))):
        params = [p for n, p in trainable if keep(n)]
        stored = [t for n, t in model.state_dict().items() if keep(n)]
        out[scope] = {
            "trainable_bytes": nbytes(params), "grad_bytes": nbytes(p.grad for p in params),
            "optim_state_bytes": nbytes(t for p in params for t in state[id(p)]), "stored_weight_bytes": nbytes(stored),
        }
        out[scope]["trainable_grad_state_bytes"] = sum(out[scope][k] for k in ("trainable_bytes", "grad_bytes", "optim_state_bytes"))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="130m")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--vocab-size", type=int, default=32000)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = Llama(shape_for(args.size), args.vocab_size, max_seq_len=256)
    full = measure(model)
    start = time.perf_counter()
    SST(SSTConfig(rank=args.rank), BuildContext(model_size=args.size)).convert(model)
    convert_s = time.perf_counter() - start
    sst = measure(model)

    rows = [("trainable + grads + AdamW state", "trainable_grad_state_bytes"), ("  trainable params", "trainable_bytes"),
            ("  gradients", "grad_bytes"), ("  optimizer state", "optim_state_bytes"), ("stored weights", "stored_weight_bytes")]
    print(f"{args.size}, r = {args.rank}, vocab {args.vocab_size}, fp32 (MiB); conversion (SVDs) took {convert_s:.1f} s")
    print(f"{'':34} {'full':>9} {'sst':>9} {'ratio':>7} | {'proj full':>9} {'proj sst':>9} {'ratio':>7}")
    for label, key in rows:
        f, s = full["model"][key], sst["model"][key]
        pf, ps = full["projections"][key], sst["projections"][key]
        print(f"{label:34} {f / 2**20:9.1f} {s / 2**20:9.1f} {s / f:7.3f} | {pf / 2**20:9.1f} {ps / 2**20:9.1f} {ps / pf:7.3f}")
    out = ROOT / "benchmarks" / "results" / "sst_memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "size": args.size,
                               "rank": args.rank, "vocab_size": args.vocab_size, "full": full, "sst": sst,
                               "convert_s": convert_s}, indent=1))


if __name__ == "__main__":
    main()
