"""optim/lowbit.py: the 8-bit map and blockwise codes against bitsandbytes and a slow argmin reference,
round-trip error bounds, stochastic bf16 rounding (neighbours, unbiased, seeded, inf/nan), fake mode."""

import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode, is_fake

from optim import lowbit
from optim.lowbit import (
    BLOCK,
    copy_stochastic_,
    dequantize_blockwise,
    dynamic_map,
    generator_for,
    quantize_blockwise,
    stochastic_round_bf16,
)

SHAPES = [(1000,), (64, 256), (3, 5, 7), (2, 300), ()]


def sample(shape, signed, seed=0):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return x if signed else x.abs()


def reference_codes(x, table, block):
    """Slow and obvious: per block, absmax, then argmin |map - x / absmax| (first index on ties)."""
    flat = x.reshape(-1)
    codes, absmaxes = [], []
    for start in range(0, flat.numel(), block):
        chunk = flat[start : start + block]
        absmax = chunk.abs().max()
        scaled = chunk / absmax if absmax > 0 else chunk
        codes.append(torch.argmin((table[None, :] - scaled[:, None]).abs(), dim=1))
        absmaxes.append(absmax)
    return torch.cat(codes).to(torch.uint8).view(x.shape), torch.stack(absmaxes)


def bf16_neighbours(x):
    """The bf16 values just toward and just away from zero of fp32 x, by cutting the low 16 bits."""
    toward_zero = x.view(torch.int32) & -(1 << 16)
    return toward_zero.view(torch.float32), (toward_zero + (1 << 16)).view(torch.float32)


@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_equals_bitsandbytes(signed):
    functional = pytest.importorskip("bitsandbytes.functional")
    expected = functional.create_dynamic_map(signed=signed).sort().values
    table = dynamic_map(signed)
    assert table.dtype == torch.float32 and table.shape == (256,)
    assert torch.equal(table, expected)
    assert table[-1] == 1.0 and table[0] == (-0.99296875 if signed else 0.0)
    assert bool((table[1:] > table[:-1]).all())  # strictly ascending: no duplicate entries


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_codes_equal_slow_argmin_reference(signed, shape):
    x = sample(shape, signed)
    codes, absmax = quantize_blockwise(x, signed, block=BLOCK)
    expected_codes, expected_absmax = reference_codes(x, dynamic_map(signed), BLOCK)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape
    assert absmax.dtype == torch.float32 and absmax.shape == (math.ceil(x.numel() / BLOCK),)
    assert torch.equal(absmax, expected_absmax)
    assert torch.equal(codes, expected_codes)


@pytest.mark.parametrize("signed", [True, False])
def test_exact_ties_go_to_the_lower_entry_as_argmin(signed):
    table = dynamic_map(signed)
    mids = (table[:-1] + table[1:]) / 2
    tie = ((mids - table[:-1]) == (table[1:] - mids)) & (mids > table[:-1]) & (mids < table[1:])
    x = torch.cat([torch.ones(1), mids[tie]])  # absmax 1: the midpoints are scaled values as they are
    codes, _ = quantize_blockwise(x, signed)
    assert tie.sum() > 100
    assert torch.equal(codes, reference_codes(x, table, BLOCK)[0])
    assert torch.equal(codes[1:].long(), tie.nonzero().flatten())


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("shape", [(1000,), (64, 256), (3, 5, 7), (300, 1000)])
def test_matches_bitsandbytes_blockwise(signed, shape):
    functional = pytest.importorskip("bitsandbytes.functional")
    x = sample(shape, signed)
    table = dynamic_map(signed)
    # clone: bitsandbytes' CPU kernel writes code[0] = -1 into the map it is given.
    bnb_codes, state = functional.quantize_blockwise(x, code=table.clone(), blocksize=BLOCK)
    codes, absmax = quantize_blockwise(x, signed)
    assert torch.equal(absmax, state.absmax)
    # bitsandbytes 0.50's CPU search (BinSearch "Direct2") misses the nearest entry on ~0.2% of values
    # (not only ties): require near-agreement, and that where the two differ ours is never the farther.
    assert (codes == bnb_codes).float().mean() >= 0.99
    scaled = x.reshape(-1) / absmax.repeat_interleave(BLOCK)[: x.numel()]
    ours = (table[codes.reshape(-1).long()] - scaled).abs()
    theirs = (table[bnb_codes.reshape(-1).long()] - scaled).abs()
    assert bool((ours <= theirs).all())
    # Dequantization of the same codes agrees exactly; of the two code sets, within one map step
    # (1e-4: the rounding of absmax * entry, relative to a step).
    ours_back = dequantize_blockwise(codes, absmax, signed)
    theirs_back = functional.dequantize_blockwise(bnb_codes, absmax=absmax, code=table.clone(), blocksize=BLOCK)
    assert torch.equal(dequantize_blockwise(bnb_codes, absmax, signed), theirs_back)
    max_step = (table[1:] - table[:-1]).max()
    blockwise_absmax = absmax.repeat_interleave(BLOCK)[: x.numel()].view(x.shape)
    assert bool(((ours_back - theirs_back).abs() <= max_step * blockwise_absmax * (1 + 1e-4)).all())


@pytest.mark.parametrize("signed", [True, False])
def test_round_trip_error_bound(signed):
    """|x - dq(q(x))| <= absmax * (half the widest map gap, or -1's distance to the lowest entry)."""
    x = sample((512, 300), signed, seed=1)
    codes, absmax = quantize_blockwise(x, signed)
    back = dequantize_blockwise(codes, absmax, signed)
    table = dynamic_map(signed)
    half_gap = max((table[1:] - table[:-1]).max() / 2, table[0] + 1 if signed else 0.0)
    blockwise_absmax = absmax.repeat_interleave(BLOCK)[: x.numel()].view(x.shape)
    assert bool(((back - x).abs() <= half_gap * blockwise_absmax * (1 + 1e-4)).all())
    # Measured on N(0, 1) data: relative L2 error 1.08% signed, 0.54% unsigned (|N(0, 1)|).
    relative = (back - x).norm() / x.norm()
    assert relative < (0.0125 if signed else 0.007), relative


@pytest.mark.parametrize("signed", [True, False])
def test_zero_blocks_round_trip_to_zero(signed):
    x = torch.zeros(3 * BLOCK + 17)
    x[BLOCK : 2 * BLOCK] = sample((BLOCK,), signed)  # one live block among zero blocks and a zero tail
    codes, absmax = quantize_blockwise(x, signed)
    back = dequantize_blockwise(codes, absmax, signed)
    assert absmax[0] == 0 and absmax[2] == 0 and absmax[3] == 0
    assert torch.equal(codes, reference_codes(x, dynamic_map(signed), BLOCK)[0])  # zeros get 0.0's code
    assert bool((back[:BLOCK] == 0).all()) and bool((back[2 * BLOCK :] == 0).all())
    assert not back.isnan().any()


def test_unsigned_map_on_nonnegative_data_beats_signed():
    # The unsigned map spends its sign bit on resolution: about half the error on |N(0, 1)| data.
    x = sample((256, 64), signed=False, seed=2)
    errors = {}
    for signed in (True, False):
        codes, absmax = quantize_blockwise(x, signed)
        errors[signed] = (dequantize_blockwise(codes, absmax, signed) - x).norm() / x.norm()
    assert bool((dequantize_blockwise(*quantize_blockwise(x, False), False) >= 0).all())
    assert errors[False] < 0.7 * errors[True]


def test_bf16_input_and_dtype_out():
    x = sample((700,), True)
    codes, absmax = quantize_blockwise(x.bfloat16(), True)
    expected_codes, expected_absmax = quantize_blockwise(x.bfloat16().float(), True)
    assert torch.equal(codes, expected_codes) and torch.equal(absmax, expected_absmax)
    back = dequantize_blockwise(codes, absmax, True, dtype=torch.bfloat16)
    assert back.dtype == torch.bfloat16
    assert torch.equal(back, dequantize_blockwise(codes, absmax, True).bfloat16())


def test_block_must_be_positive():
    with pytest.raises(ValueError, match="block"):
        quantize_blockwise(torch.ones(4), True, block=0)


def test_stochastic_round_gives_a_bf16_neighbour():
    x = sample((4096,), True) * torch.logspace(-30, 30, 4096)
    out = stochastic_round_bf16(x, generator_for(0, torch.device("cpu")))
    down, up = bf16_neighbours(x)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    result = out.float()
    assert bool(((result == down) | (result == up)).all())
    assert bool((result == down).any()) and bool((result == up).any())
    exact = x.bfloat16().float()  # already bf16 values never move
    assert torch.equal(stochastic_round_bf16(exact, generator_for(1, torch.device("cpu"))).float(), exact)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_stochastic_round_is_unbiased_where_nearest_is_not(sign):
    value = sign * (1 + 2**-10)  # 1/8 of a bf16 ulp above 1: round-to-nearest always drops it
    x = torch.full((200_000,), value)
    mean = stochastic_round_bf16(x, generator_for(3, torch.device("cpu"))).double().mean().item()
    # std of the mean: ulp * sqrt(p (1 - p) / n) = 2^-7 * sqrt(7/64 / 2e5) ~ 6e-6; allow ~6 sigma.
    assert abs(mean - value) < 4e-5
    assert abs(x.bfloat16().double().mean().item() - value) > 9e-4


def test_stochastic_round_same_seed_same_bits():
    x = sample((1000,), True)
    first = stochastic_round_bf16(x, generator_for(7, torch.device("cpu")))
    again = stochastic_round_bf16(x, generator_for(7, torch.device("cpu")))
    other = stochastic_round_bf16(x, generator_for(8, torch.device("cpu")))
    assert torch.equal(first.view(torch.int16), again.view(torch.int16))
    assert not torch.equal(first.view(torch.int16), other.view(torch.int16))
    assert generator_for(-1, torch.device("cpu")).initial_seed() == 2**64 - 1


def test_stochastic_round_keeps_inf_and_nan():
    patterns = [0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0x7FFFFFFF, 0xFFFFFFFF, 0xFF800001]
    x = torch.tensor([p - (1 << 32) if p >= 1 << 31 else p for p in patterns], dtype=torch.int32)
    x = x.view(torch.float32).repeat(100)  # 0x7F800001: low payload only, truncation alone makes it inf
    out = stochastic_round_bf16(x, generator_for(0, torch.device("cpu"))).float()
    assert torch.equal(out.isinf(), x.isinf()) and torch.equal(out.isnan(), x.isnan())
    assert torch.equal(out[x.isinf()], x[x.isinf()])


def test_copy_stochastic_():
    source = sample((33, 17), True)
    target = torch.zeros(33, 17, dtype=torch.bfloat16)
    copy_stochastic_(target, source, generator_for(5, torch.device("cpu")))
    assert torch.equal(target, stochastic_round_bf16(source, generator_for(5, torch.device("cpu"))))
    down, up = bf16_neighbours(source)
    assert bool(((target.float() == down) | (target.float() == up)).all())
    fp32_target = torch.zeros(33, 17)
    copy_stochastic_(fp32_target, source, generator_for(5, torch.device("cpu")))
    assert torch.equal(fp32_target, source)


CUDA = pytest.param(
    "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="fake CUDA tensors need a CUDA build")
)


@pytest.mark.parametrize("warm_cache", [False, True])
@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_everything_runs_under_fake_tensor_mode(device, warm_cache, monkeypatch):
    monkeypatch.setattr(lowbit, "_MAP_CACHE", {})
    if warm_cache:  # a real map cached earlier must not leak into fake computations
        quantize_blockwise(torch.ones(3, device=device), signed=True)
        quantize_blockwise(torch.ones(3, device=device), signed=False)
    cached = dict(lowbit._MAP_CACHE)
    with FakeTensorMode():
        x = torch.randn(3, 5, 100, device=device)
        codes, absmax = quantize_blockwise(x, signed=True)
        assert is_fake(codes) and codes.shape == x.shape and codes.dtype == torch.uint8
        assert absmax.shape == (math.ceil(1500 / BLOCK),) and absmax.dtype == torch.float32
        back = dequantize_blockwise(codes, absmax, True, dtype=torch.bfloat16)
        assert back.shape == x.shape and back.dtype == torch.bfloat16
        assert is_fake(dynamic_map(False, device))
        rounded = stochastic_round_bf16(x, generator_for(0, torch.device(device)))
        assert rounded.shape == x.shape and rounded.dtype == torch.bfloat16
        assert stochastic_round_bf16(x).shape == x.shape  # the default generator too
        target = torch.empty(3, 5, 100, dtype=torch.bfloat16, device=device)
        copy_stochastic_(target, x, generator_for(0, torch.device(device)))
    assert lowbit._MAP_CACHE == cached  # nothing fake was cached
    table = dynamic_map(True)
    assert not is_fake(table) and table.shape == (256,) and table[-1] == 1.0
    assert dynamic_map(True) is table  # real maps are cached
