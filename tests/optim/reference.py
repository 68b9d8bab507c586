"""Slow, obviously correct references shared by the optimizer tests."""

import math

import torch


def reference_dct(size: int) -> torch.Tensor:
    """C[k, j] = sqrt(2/s) cos(pi k (2j+1) / 2s), row 0 / sqrt(2), element by element in float64."""
    c = torch.empty(size, size, dtype=torch.float64)
    for k in range(size):
        for j in range(size):
            c[k, j] = (
                math.sqrt(2 / size) * math.cos(math.pi * k * (2 * j + 1) / (2 * size)) / (math.sqrt(2) if k == 0 else 1)
            )
    return c
