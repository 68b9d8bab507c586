import pytest
import torch

from models import LLAMA_SIZES, PROJECTION_NAMES, Llama, projection_modules, shape_for


def test_causal_and_shapes():
    torch.manual_seed(0)
    model = Llama(shape_for("debug"), vocab_size=97, max_seq_len=16)
    tokens = torch.randint(0, 97, (2, 12))
    logits = model(tokens)
    assert logits.shape == (2, 12, 97)
    changed = tokens.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 97
    # Positions before the change cannot see it.
    torch.testing.assert_close(model(changed)[:, :8], logits[:, :8])
    assert not torch.allclose(model(changed)[:, 8:], logits[:, 8:])


def test_rotary_matches_complex_reference():
    from models.llama import apply_rotary, rotary_tables

    x = torch.randn(1, 5, 2, 8)
    cos, sin = rotary_tables(8, 5)
    angles = torch.polar(torch.ones_like(cos), torch.atan2(sin, cos))
    ref = torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * angles[None, :, None, :]).flatten(-2)
    torch.testing.assert_close(apply_rotary(x, cos, sin), ref)


@pytest.mark.parametrize("size,expected_m", [("60m", 58.1), ("130m", 134.1), ("350m", 367.9), ("1b", 1339.1)])
def test_paper_sizes_parameter_counts(size, expected_m):
    # The full-rank counts in shared/METHODS.md (vocab 32000, untied head).
    with torch.device("meta"):
        model = Llama(shape_for(size), vocab_size=32000, max_seq_len=256)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - expected_m) / expected_m < 0.01


def test_projections_reachable_by_name():
    model = Llama(shape_for("debug"), vocab_size=50, max_seq_len=8)
    names = [n for n, _, _, _ in projection_modules(model)]
    assert len(names) == 7 * LLAMA_SIZES["debug"].num_layers
    assert {n.rsplit(".", 1)[1] for n in names} == set(PROJECTION_NAMES)


def test_unknown_size_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model.size='3b'.*debug, 20m, 60m"):
        shape_for("3b")


def test_too_long_sequence():
    model = Llama(shape_for("debug"), vocab_size=50, max_seq_len=8)
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
