"""optim/projectors.py: index matching without data-dependent shapes, and bases under a FakeTensorMode."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode, is_fake

from optim import projectors as proj


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
