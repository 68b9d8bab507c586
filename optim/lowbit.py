"""Numerical primitives for low-memory optimizer states and pure-bf16 weights (pure torch).

Blockwise 8-bit state (Dettmers et al., "8-bit Optimizers via Block-wise Quantization", 2110.02861):
a state tensor is cut into blocks of BLOCK values over its flattened order; each block stores
absmax = max |x| (fp32) and, per value, the uint8 index of the entry of the "dynamic tree" map
nearest to x / absmax. Dequantization is map[code] * absmax. Memory: 1 byte + 4/BLOCK bytes a value.

Pure-bf16 weights: an fp32 update written back into a bf16 weight with round-to-nearest loses every
update smaller than half a bf16 ulp (a weight of 1.0 ignores changes < 2^-9). Stochastic rounding
rounds up with probability equal to the dropped fraction, so E[bf16(x)] == x and small updates survive
on average (Zamirai et al., 2010.06192).

Every function here avoids data-dependent shapes and host syncs so it also runs under FakeTensorMode
(the memory estimator traces the optimizers that way before real runs in the same process).
"""

import functools

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

from models.meta import tensor_cache

BLOCK = 256  # as torchao's AdamW8bit and bitsandbytes' blockwise 8-bit Adam

# bf16 keeps the upper 16 bits of an fp32 pattern; as a signed int32 the mask 0xFFFF0000 reads -65536.
_UPPER_16_BITS = -(1 << 16)

_MAP_CACHE: dict[tuple[bool, str], torch.Tensor] = {}


def _dynamic_map_cpu(signed: bool) -> torch.Tensor:
    """bitsandbytes' create_dynamic_map(signed, max_exponent_bits=7, total_bits=8), in its exact fp32 ops."""
    max_exponent_bits, non_sign_bits = 7, 7
    parts = [torch.zeros(1), torch.ones(1)]
    for i in range(max_exponent_bits):
        # Exponent 10^(i-6): each larger decade gets twice the fraction levels (twice again if unsigned,
        # since no bit goes to the sign).
        num_fraction_items = 2 ** (i + non_sign_bits - max_exponent_bits + (0 if signed else 1)) + 1
        boundaries = torch.linspace(0.1, 1, num_fraction_items, dtype=torch.float32, device="cpu")
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        scaled = (10 ** (-(max_exponent_bits - 1) + i)) * means
        parts += [scaled, -scaled] if signed else [scaled]
    values = torch.cat(parts)
    assert values.numel() == 256, values.numel()
    return values.sort().values


def dynamic_map(signed: bool, device=None) -> torch.Tensor:
    """The 256 ascending fp32 entries of the 8-bit dynamic tree map, in [-1, 1] (signed) or [0, 1]."""
    device = torch.device("cpu" if device is None else device)
    key = (bool(signed), str(device))
    # Under FakeTensorMode (trainer/memory.py) the mode's own cache: a fake map never reaches a real run, and
    # the estimate counts the map once, as a real run does.
    cache = tensor_cache("lowbit_maps", _MAP_CACHE)
    if key not in cache:
        cache[key] = _dynamic_map_cpu(signed).to(device)
    return cache[key]


@functools.cache
def zero_code(signed: bool) -> int:
    """The code of 0.0 (a Python int, computed on real tensors even under FakeTensorMode): zero-initialised
    states are filled with it directly instead of quantising a full-size fp32 zero tensor."""
    with unset_fake_temporarily():
        return int(torch.argmin(_dynamic_map_cpu(signed).abs()))


def _num_blocks(numel: int, block: int) -> int:
    return -(-numel // block)


def _check_block(block: int) -> None:
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}: pass a block size such as BLOCK = {BLOCK}")


def _block_absmax(flat: torch.Tensor, block: int) -> torch.Tensor:
    """max |x| per block of the 1-D tensor `flat` (the last block may be partial), fp32."""
    num_full = flat.numel() // block
    absmax = torch.empty(_num_blocks(flat.numel(), block), dtype=torch.float32, device=flat.device)
    # amax/amin instead of abs().amax(): no full-size temporary.
    head = flat[: num_full * block].view(num_full, block)
    torch.maximum(head.amax(-1), head.amin(-1).neg(), out=absmax[:num_full])
    if num_full < absmax.numel():
        tail = flat[num_full * block :]
        absmax[num_full] = torch.maximum(tail.amax(), tail.amin().neg())
    return absmax


def _scale_by_block(flat: torch.Tensor, absmax: torch.Tensor, block: int) -> torch.Tensor:
    """fp32 x / absmax of its block; an all-zero block divides by 1 so it stays zero."""
    n, num_full = flat.numel(), flat.numel() // block
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    scaled = torch.empty(n, dtype=torch.float32, device=flat.device)
    head = flat[: num_full * block].view(num_full, block)
    torch.div(head, safe[:num_full, None], out=scaled[: num_full * block].view(num_full, block))
    if num_full * block < n:
        # safe[num_full:], not safe[num_full]: a 0-dim divisor would let a bf16 x divide in bf16.
        torch.div(flat[num_full * block :], safe[num_full:], out=scaled[num_full * block :])
    return scaled


def _nearest_code(scaled: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of the ascending `table` (ties go to the lower entry, as argmin)."""
    # lo: the largest entry <= value (clamped so lo + 1 is valid); the nearest is lo or lo + 1.
    lo = torch.bucketize(scaled, table, right=True, out_int32=True).sub_(1).clamp_(0, table.numel() - 2)
    dist_lo = table[lo].sub_(scaled).abs_()
    dist_hi = table[1:][lo].sub_(scaled).abs_()
    lo += dist_hi < dist_lo
    return lo.to(torch.uint8)


def quantize_blockwise(x: torch.Tensor, signed: bool, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes uint8 of x's shape, absmax fp32 of shape (ceil(numel / block),)) over x.flatten()."""
    _check_block(block)
    flat = x.reshape(-1)
    absmax = _block_absmax(flat, block)
    scaled = _scale_by_block(flat, absmax, block)
    codes = _nearest_code(scaled, dynamic_map(signed, x.device))
    return codes.view(x.shape), absmax


def dequantize_blockwise(
    codes: torch.Tensor, absmax: torch.Tensor, signed: bool, block: int = BLOCK, dtype=torch.float32
) -> torch.Tensor:
    """map[codes] * absmax of each block, in `dtype`, of codes' shape."""
    _check_block(block)
    n, num_full = codes.numel(), codes.numel() // block
    # int32 indices: uint8 tensors index as boolean masks.
    out = dynamic_map(signed, codes.device)[codes.reshape(-1).to(torch.int32)]
    out[: num_full * block].view(num_full, block).mul_(absmax[:num_full, None])
    if num_full * block < n:
        out[num_full * block :].mul_(absmax[num_full])
    return out.view(codes.shape).to(dtype)


def stochastic_round_bf16(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """fp32 -> bf16, rounding away from zero with probability (dropped low 16 bits) / 2^16: E[out] == x."""
    x = x.float()
    # Adding uniform 16 random bits to the pattern carries into bit 16 exactly when they exceed
    # 2^16 - (low bits): the standard trick (torchao's _fp32_to_bf16_sr, the "alternative" form).
    noisy = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    noisy.add_(x.view(torch.int32)).bitwise_and_(_UPPER_16_BITS)
    out = noisy.view(torch.float32).to(torch.bfloat16)
    # inf survives by itself (its low bits are zero); a nan with only low payload bits would turn into
    # inf, and the largest nan patterns wrap around, so every nan is written back.
    return out.masked_fill_(x.isnan(), float("nan"))


def copy_stochastic_(target: torch.Tensor, source: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """target.copy_(source), stochastically rounded when target is bf16 (a plain copy otherwise)."""
    if target.dtype != torch.bfloat16:
        target.copy_(source)
        return
    target.copy_(stochastic_round_bf16(source, generator))


def generator_for(seed: int, device: torch.device) -> torch.Generator:
    """A generator on `device` seeded with `seed` (reduced mod 2^64, the seed range torch accepts)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed % (1 << 64))
    return generator
