"""optim/projectors.py: the bases against element-by-element references, index matching without data-dependent
shapes, and bases under a FakeTensorMode."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode, is_fake

from optim import projectors as proj
from tests.optim.reference import reference_dct


def reference_rotate(moment, old_idx, new_idx, tall):
    """The obvious version: for each new slot whose basis vector was an old one, copy that old slot."""
    out = torch.zeros_like(moment)
    old = old_idx.tolist()
    for j, vector in enumerate(new_idx.tolist()):
        if vector in old:
            if tall:
                out[:, j] = moment[:, old.index(vector)]
            else:
                out[j] = moment[old.index(vector)]
    return out


@pytest.mark.parametrize("tall", [True, False])
@pytest.mark.parametrize("seed", range(5))
def test_rotate_by_index_is_bitwise_the_slot_copy(tall, seed):
    gen = torch.Generator().manual_seed(seed)
    size, rank, other = 32, 9, 7
    old_idx = torch.randperm(size, generator=gen)[:rank].sort().values.to(torch.int32)
    new_idx = torch.randperm(size, generator=gen)[:rank].sort().values.to(torch.int32)
    moment = torch.randn((other, rank) if tall else (rank, other), generator=gen)
    moment.view(-1)[:4] = torch.tensor([-0.0, float("nan"), float("inf"), -1e-40])  # kept bit for bit
    kept, source = proj.match_slots(old_idx, new_idx, size)
    out = proj.rotate_by_index(moment, kept, source, tall)
    expected = reference_rotate(moment, old_idx, new_idx, tall)
    assert torch.equal(out.view(torch.int32), expected.view(torch.int32))


def test_match_slots_has_fixed_shapes_on_fake_tensors():
    with FakeTensorMode():
        old_idx, new_idx = torch.arange(4, dtype=torch.int32), torch.arange(2, 6, dtype=torch.int32)
        kept, source = proj.match_slots(old_idx, new_idx, 8)
        out = proj.rotate_by_index(torch.empty(3, 4), kept, source, tall=True)
    assert kept.shape == source.shape == (4,) and out.shape == (3, 4)


def test_fake_bases_live_on_their_mode_never_in_the_cache(monkeypatch):
    monkeypatch.setattr(proj, "_CACHE", {})
    with FakeTensorMode():
        first = proj.basis("dct", 16, torch.device("cpu"))
        assert proj.basis("dct", 16, torch.device("cpu")) is first  # persists within the mode, as a real one would
    assert is_fake(first) and proj._CACHE == {}
    real = proj.basis("dct", 16, torch.device("cpu"))
    assert not is_fake(real) and torch.equal(real, proj.dct_matrix(16))


@pytest.mark.parametrize("size", [1, 7, 64])
def test_dct_matrix_equals_reference_and_is_orthonormal(size):
    c = proj.dct_matrix(size).double()
    assert torch.allclose(c, reference_dct(size), atol=1e-6, rtol=0)
    assert torch.allclose(c @ c.T, torch.eye(size, dtype=torch.float64), atol=1e-6, rtol=0)


def test_dct_matrix_equals_scipy_at_130m_size():
    scipy_fft = pytest.importorskip("scipy.fft")
    c = proj.dct_matrix(768).double()
    expected = torch.from_numpy(
        scipy_fft.dct(torch.eye(768, dtype=torch.float64).numpy(), type=2, norm="ortho", axis=0)
    )
    assert torch.allclose(c, expected, atol=1e-6, rtol=0)
    assert torch.allclose(c @ c.T, torch.eye(768, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [7, 8, 300])
def test_fast_dct_equals_the_matrix_product(size):
    x = torch.randn(5, size)
    assert torch.allclose(proj.dct_fft(x), x @ proj.dct_matrix(size).T, atol=1e-5, rtol=1e-5)


def test_random_qr_basis_is_orthonormal_and_fixed():
    q = proj.random_qr_matrix(33)
    assert torch.allclose(q @ q.T, torch.eye(33), atol=1e-5)
    assert torch.equal(q, proj.random_qr_matrix(33))
