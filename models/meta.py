"""Tensors without data: meta tensors (a model built for its shapes only) and FakeTensorMode tensors
(trainer/memory.py runs whole training steps on them to count bytes).

Code that reads values (a random draw, an SVD, `nonzero`) takes a shape-only path for such tensors.
"""
from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import is_fake


def is_fake_or_meta(t: torch.Tensor) -> bool:
    """True when `t` has shapes and dtypes but no values to read."""
    return t.device.type == "meta" or is_fake(t)
