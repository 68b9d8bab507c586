"""`train.compile=true`: torch.compile each transformer block, as torchtitan does (its `apply_compile`).

Per block rather than the whole model: every block runs the same code, so one compiled graph serves them all
(compile time does not grow with depth), and the embedding, head and loss stay eager. `nn.Module.compile()`
compiles a block's forward in place: the module tree, the Parameter objects and the state-dict keys are
unchanged, so converters, optimizers, DeepSpeed and checkpoints see the same model.

`fullgraph=True` (as torchtitan): a block that cannot be traced whole fails at its first step instead of
running silently in pieces. The custom autograd functions of param=sltrain (SparseLowRankMatmul) and
param=sst (_SpectralLinearFn) trace whole, so no block is excluded (tests/trainer/test_compile.py).
Measured on CPU, 20m, one thread (`python -m benchmarks speed --compile --params full sltrain --optims adamw`,
two runs on a loaded 2-core machine): compiled/eager tokens/s 0.97 and 1.03 for full rank (parity within
noise), 1.19 and 1.25 for SLTrain (its dense-weight rebuild fuses); the first step compiles (~25-30 s cold).
"""

from __future__ import annotations

from torch import nn


def maybe_compile(model: nn.Module, enabled: bool, **options) -> None:
    """torch.compile every block of `model.layers` in place when enabled (options go to torch.compile)."""
    if not enabled:
        return
    for block in model.layers:
        block.compile(fullgraph=True, **options)
