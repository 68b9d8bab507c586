"""One way to derive a random stream's seed from the run's seed: every generator that must draw the same numbers
on every rank and after a resume (data order, SST's column sampling, stochastic rounding, fault injection) takes
its seed from `mix_seed`, so no two streams collide by accident and the values never depend on the process."""

from __future__ import annotations

MULTIPLIER = 1_000_003  # a large prime: nearby seeds and indices land far apart


def mix_seed(seed: int, *parts: int, multiplier: int = MULTIPLIER, bits: int | None = None) -> int:
    """seed, then each part folded in as `s * multiplier + part`; `bits`: keep the low bits (what some generators
    accept), the same as `% 2**bits`."""
    for part in parts:
        seed = seed * multiplier + part
    return seed if bits is None else seed & ((1 << bits) - 1)
