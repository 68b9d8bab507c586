"""The q/k row permutation against a slow per-row reference, and the key mapping covers the whole model."""

import torch

from models import Llama, shape_for
from trainer import hf_export


def reference_permute(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Half-split row j of each head is interleaved row 2j; row j + d/2 is row 2j + 1."""
    head_dim = weight.shape[0] // num_heads
    out = torch.empty_like(weight)
    for h in range(num_heads):
        for j in range(head_dim // 2):
            out[h * head_dim + j] = weight[h * head_dim + 2 * j]
            out[h * head_dim + head_dim // 2 + j] = weight[h * head_dim + 2 * j + 1]
    return out


def test_permute_matches_the_reference():
    w = torch.randn(4 * 16, 64)
    assert torch.equal(hf_export.permute_rotary(w, 4), reference_permute(w, 4))


def test_permuted_rotary_gives_the_same_scores():
    """q.k after the project's interleaved rotary == after transformers' rotate_half with permuted rows."""
    from models.llama import apply_rotary, rotary_tables

    heads, head_dim, seq = 2, 8, 5
    wq, wk, x = torch.randn(heads * head_dim, 12), torch.randn(heads * head_dim, 12), torch.randn(1, seq, 12)
    cos, sin = rotary_tables(head_dim, seq)

    def project(w):
        return apply_rotary((x @ w.T).view(1, seq, heads, head_dim), cos, sin)

    def halves(w):
        y = (x @ hf_export.permute_rotary(w, heads).T).view(1, seq, heads, head_dim)
        c, s = torch.cat([cos, cos], -1)[None, :, None], torch.cat([sin, sin], -1)[None, :, None]
        rotated = torch.cat([-y[..., head_dim // 2 :], y[..., : head_dim // 2]], -1)
        return y * c + rotated * s

    scores = torch.einsum("bqhd,bkhd->bhqk", project(wq), project(wk))
    torch.testing.assert_close(torch.einsum("bqhd,bkhd->bhqk", halves(wq), halves(wk)), scores)


def test_every_key_has_a_transformers_name():
    model = Llama(shape_for("debug"), 100, 64)
    names = {hf_export.hf_key(k) for k in model.state_dict()}
    assert len(names) == len(model.state_dict())
    assert {
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.norm.weight",
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.0.post_attention_layernorm.weight",
    } <= names
