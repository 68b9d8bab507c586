"""Benchmarks, one command: `python -m benchmarks --list`; `python -m benchmarks <name> [options] [-- overrides]`.
Each is benchmarks/<name>.py with a `main(argv)` over benchmarks/harness.py; `suite` runs every cited figure.
"""

from __future__ import annotations

import importlib

BENCHMARKS = {  # name -> what it measures
    "memory": "bytes of weights, gradients and optimizer state, and peak step memory, per param x optim (CPU or GPU)",
    "speed": "interleaved training-step time and tokens/s per param x optim vs full-rank AdamW (CPU or GPU, MFU)",
    "quality": "validation loss of labelled train.py runs on the same data, seed and budget; --grid sweeps",
    "memory_scale": "the estimator's peak of a 1b / 7b step per low-memory configuration, and real-tensor checks",
    "dct_vs_galore": "optimizer step time and state of dct_adamw against galore-torch on one model's matrices",
    "flag_cost": "time and bytes sent per aggregate() call of robust aggregators vs mean (gloo processes)",
    "flag_robustness": "final loss of each aggregator under each Byzantine attack vs a clean mean run (torchrun)",
    "checkpoint_io": "checkpoint save and resume time through the trainer's own save() and maybe_resume()",
    "prepare_speed": "corpus preparation speed: parallel tokenization vs the serial sentencepiece loop",
    "suite": "every run behind the figures docs/ cite (--dry-run, --only, --skip), then docs/RESULTS.md",
}


def run(name: str, argv: list[str]):
    if name not in BENCHMARKS:
        raise SystemExit(f"benchmarks: no benchmark named {name!r} (python -m benchmarks --list)")
    return importlib.import_module(f"benchmarks.{name}").main(argv)
