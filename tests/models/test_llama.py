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


# --- attention dispatch: flash-attn whenever q, k, v are bf16/fp16 on its device ---------------------
def sdpa_as_flash(calls):
    """A stand-in for flash_attn_func with its (batch, seq, heads, head_dim) layout, computed by SDPA."""

    def flash(q, k, v, causal):
        calls.append((q.dtype, k.dtype, v.dtype))
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal
        )
        return out.transpose(1, 2)

    return flash


def test_flash_path_engages_under_autocast(monkeypatch):
    """Under autocast the block input is fp32 but q, k, v are bf16: the flash path must be taken."""
    import models.llama as llama

    calls = []
    monkeypatch.setattr(llama, "FLASH_DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(llama, "_flash_attn_func", lambda: sdpa_as_flash(calls))
    torch.manual_seed(0)
    model = Llama(shape_for("debug"), vocab_size=97, max_seq_len=16)
    tokens = torch.randint(0, 97, (2, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        flash = model(tokens)
    assert calls == [(torch.bfloat16,) * 3] * shape_for("debug").num_layers
    model(tokens)  # fp32 outside autocast: flash-attn has no fp32 kernel, so SDPA
    assert len(calls) == shape_for("debug").num_layers
    for layer in model.layers:
        layer.attn.attn_impl = "sdpa"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sdpa = model(tokens)
    assert len(calls) == shape_for("debug").num_layers  # attn=sdpa never takes it
    torch.testing.assert_close(flash, sdpa)


def _has_flash_attn() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_flash_attn(), reason="needs a CUDA GPU and flash-attn")
@pytest.mark.parametrize("autocast", [True, False])
def test_flash_attn_runs_and_matches_sdpa_on_cuda(monkeypatch, autocast):
    import models.llama as llama

    real, calls = llama._flash_attn_func(), []
    monkeypatch.setattr(llama, "_flash_attn_func", lambda: lambda *a, **kw: calls.append(1) or real(*a, **kw))
    torch.manual_seed(0)
    flash_model = Llama(shape_for("20m"), vocab_size=512, max_seq_len=256).cuda()
    sdpa_model = Llama(shape_for("20m"), vocab_size=512, max_seq_len=256, attn_impl="sdpa").cuda()
    sdpa_model.load_state_dict(flash_model.state_dict())
    if not autocast:  # pure bf16 weights: the input itself is bf16
        flash_model, sdpa_model = flash_model.bfloat16(), sdpa_model.bfloat16()
    tokens = torch.randint(0, 512, (4, 256), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        ours, ref = flash_model(tokens).float(), sdpa_model(tokens).float()
        ours.square().mean().backward()
        ref.square().mean().backward()
    assert len(calls) == shape_for("20m").num_layers
    assert (ours - ref).norm() <= 2e-2 * ref.norm()
    for (name, p), q in zip(flash_model.named_parameters(), sdpa_model.parameters()):
        assert (p.grad.float() - q.grad.float()).norm() <= 5e-2 * q.grad.float().norm() + 1e-6, name
