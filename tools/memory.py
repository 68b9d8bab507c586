"""Memory estimator: the peak bytes of a training step of one configuration, counted without a GPU.

    python -m tools.memory <train.py's overrides> [--budget 24GiB] [--real] [--steps 2] [--json out.json]

The command line of trainer/memory.py (how it counts: there and in trainer/memtrack.py). It registers the
strategies as train.py does, which the estimator in trainer/ may not import, so code that estimates from Python
calls it through this module: `from tools import memory; memory.estimate([...])`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import agg  # noqa: F401  (registers the agg strategies)
import optim  # noqa: F401  (registers the optim strategies)
import param  # noqa: F401  (registers the param strategies)
from trainer.memory import LLAMA_VOCAB, MemoryEstimate, estimate, load_config, parse_bytes, report, target_precision

__all__ = [
    "LLAMA_VOCAB",
    "MemoryEstimate",
    "estimate",
    "load_config",
    "main",
    "parse_bytes",
    "report",
    "target_precision",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py")
    parser.add_argument("--budget", help="memory to fit in: 24GiB, 16GB, 1.5TiB or bytes")
    parser.add_argument("--real", action="store_true", help="real tensors instead of fake ones (checking)")
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="where --real tensors live (cuda: also the allocator's peak)",
    )
    parser.add_argument("--steps", type=int, default=2, help="training steps to run (default 2)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    try:
        budget = None if args.budget is None else parse_bytes(args.budget)
        if args.steps < 1:
            raise ValueError(f"--steps {args.steps}: must be at least 1")
        if args.device == "cuda" and not args.real:
            raise ValueError("--device cuda: only with --real (fake tensors live on cpu)")
        est = estimate(args.overrides, args.steps, args.real, args.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print("\n".join(report(est, budget)), flush=True)
    if args.json:
        out = {**asdict(est), "budget": budget, "fits": None if budget is None else est.bytes["total"] <= budget}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
