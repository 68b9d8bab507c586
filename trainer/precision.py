"""Precision modes: how weights, gradients and matmuls are held (`train.precision`).

- `fp32`: everything fp32 (the CPU default).
- `amp_bf16`: fp32 weights, gradients and optimizer state; matmuls run in bf16 under autocast. The GPU
  default: the weight update is exact, and every optimizer works unchanged. Costs 4 bytes of weight and
  4 of gradient per parameter, plus autocast's bf16 copy of each weight while it is in use.
- `pure_bf16`: weights and gradients are bf16, with no fp32 master copy and no autocast cache; the
  optimizer computes each update in fp32 and writes it back with stochastic rounding (optim.*), so small
  updates are not lost to bf16's 8-bit mantissa. Half the weight and gradient memory of `amp_bf16`.

`auto` is `amp_bf16` on CUDA and `fp32` on CPU.
"""

from __future__ import annotations

import torch
from torch import nn

MODES = ("auto", "fp32", "amp_bf16", "pure_bf16")


def resolve(mode: str, device_type: str) -> str:
    """The concrete mode for `auto` on this device type."""
    if mode == "auto":
        return "amp_bf16" if device_type == "cuda" else "fp32"
    return mode


def autocast_dtype(mode: str) -> torch.dtype | None:
    """The autocast dtype of a resolved mode (None: no autocast)."""
    return torch.bfloat16 if mode == "amp_bf16" else None


def weight_dtype(mode: str) -> torch.dtype:
    return torch.bfloat16 if mode == "pure_bf16" else torch.float32


def prepare_model(model: nn.Module, mode: str) -> nn.Module:
    """Cast floating-point parameters and buffers to the mode's weight dtype. Integer buffers stay, and so do
    the buffers a module names in `keep_fp32_buffers` (rotary tables: bf16 angles would blur far positions)."""
    dtype = weight_dtype(mode)
    if dtype == torch.float32:
        return model
    for module in model.modules():
        keep = getattr(module, "keep_fp32_buffers", ())
        tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        for name, t in tensors:
            if t.is_floating_point() and name not in keep:
                t.data = t.data.to(dtype)
    return model
