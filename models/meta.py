"""Tensors without data: meta tensors (a model built for its shapes only) and FakeTensorMode tensors
(trainer/memory.py runs whole training steps on them to count bytes).

Code that reads values (a random draw, an SVD, `nonzero`) takes a shape-only path for such tensors, and a
module-level cache of computed tensors goes through `tensor_cache`.
"""

from __future__ import annotations

import torch
from torch._guards import active_fake_mode
from torch._subclasses.fake_tensor import is_fake


def is_fake_or_meta(t: torch.Tensor) -> bool:
    """True when `t` has shapes and dtypes but no values to read."""
    return t.device.type == "meta" or is_fake(t)


def tensor_cache(name: str, real_cache: dict) -> dict:
    """The dict to memoise computed tensors in: `real_cache`, or under a FakeTensorMode that mode's own dict.

    A fake tensor must never reach a later real run in the process, and a real one cannot enter fake
    computations. Within the mode the entries persist as real ones do, so an estimate counts a cached tensor
    exactly as a real run does. The mode holds the dict: a global dict keyed by the mode would keep every mode
    alive, since each fake tensor refers to its mode.
    """
    mode = active_fake_mode()
    return real_cache if mode is None else mode.__dict__.setdefault(f"_slimtrain_cache_{name}", {})
