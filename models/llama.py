"""LLaMA decoder: RMSNorm, rotary embeddings, SwiGLU MLP, no biases, untied lm_head.

Architecture only. Weight-side methods replace the seven block projections
(`q_proj k_proj v_proj o_proj gate_proj up_proj down_proj`) through a converter;
`PROJECTION_NAMES` is how they find them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

PROJECTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    intermediate: int
    num_layers: int
    num_heads: int


# The five shapes of shared/METHODS.md, plus two small ones for CPU work.
LLAMA_SIZES: dict[str, LlamaShape] = {
    "debug": LlamaShape(hidden=64, intermediate=176, num_layers=2, num_heads=4),
    "20m": LlamaShape(hidden=384, intermediate=1024, num_layers=6, num_heads=6),
    "60m": LlamaShape(hidden=512, intermediate=1376, num_layers=8, num_heads=8),
    "130m": LlamaShape(hidden=768, intermediate=2048, num_layers=12, num_heads=12),
    "350m": LlamaShape(hidden=1024, intermediate=2736, num_layers=24, num_heads=16),
    "1b": LlamaShape(hidden=2048, intermediate=5461, num_layers=24, num_heads=32),
    "7b": LlamaShape(hidden=4096, intermediate=11008, num_layers=32, num_heads=32),
}


# The rank r of a low-rank method's factors per size: GaLore's and SLTrain's (shared/METHODS.md table) from
# 60m up; debug and 20m are ours, a quarter of hidden as at 60m. optim/dct_adamw.py and param/sltrain.py read it.
PROJECTION_RANK: dict[str, int] = {"debug": 16, "20m": 96, "60m": 128, "130m": 256, "350m": 256, "1b": 512, "7b": 1024}


def shape_for(size: str) -> LlamaShape:
    if size not in LLAMA_SIZES:
        raise ValueError(f"unknown model.size={size!r}; choose one of: {', '.join(LLAMA_SIZES)}")
    return LLAMA_SIZES[size]


# Device types the flash-attn kernels run on (a test widens it to check the dispatch on CPU).
FLASH_DEVICE_TYPES = ("cuda",)


def _load_flash_attn():
    try:
        from flash_attn import flash_attn_func  # optional GPU extra
    except ImportError:
        return None
    return flash_attn_func


# Looked up once at import: forward must not run an import, which torch.compile cannot trace ("Import failure").
_FLASH_ATTN = _load_flash_attn()


def _flash_attn_func():
    return _FLASH_ATTN


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32: bf16 mean-of-squares loses the small-variance rows.
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight


def rotary_tables(head_dim: int, max_seq_len: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)  # (seq, head_dim/2)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (batch, seq, heads, head_dim); rotate pairs (x[2i], x[2i+1]).
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.type_as(x)


class Attention(nn.Module):
    def __init__(self, shape: LlamaShape, attn_impl: str):
        super().__init__()
        self.num_heads = shape.num_heads
        self.head_dim = shape.hidden // shape.num_heads
        self.attn_impl = attn_impl
        self.q_proj = nn.Linear(shape.hidden, shape.hidden, bias=False)
        self.k_proj = nn.Linear(shape.hidden, shape.hidden, bias=False)
        self.v_proj = nn.Linear(shape.hidden, shape.hidden, bias=False)
        self.o_proj = nn.Linear(shape.hidden, shape.hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(batch, seq, self.num_heads, self.head_dim)
        v = self.v_proj(x).view(batch, seq, self.num_heads, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # keeps q's dtype (bf16 under autocast)
        if self.uses_flash(q):
            out = _flash_attn_func()(q, k, v, causal=True)
        else:
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
            ).transpose(1, 2)
        return self.o_proj(out.reshape(batch, seq, -1))

    def uses_flash(self, q: torch.Tensor) -> bool:
        """flash-attn needs bf16/fp16 q, k, v on CUDA. Decided on q, not on the block input: under autocast
        the input is fp32 while the projections return bf16, and the input's dtype would never allow it."""
        return (
            self.attn_impl != "sdpa"
            and q.device.type in FLASH_DEVICE_TYPES
            and q.dtype in (torch.float16, torch.bfloat16)
            and _flash_attn_func() is not None
        )


class MLP(nn.Module):
    def __init__(self, shape: LlamaShape):
        super().__init__()
        self.gate_proj = nn.Linear(shape.hidden, shape.intermediate, bias=False)
        self.up_proj = nn.Linear(shape.hidden, shape.intermediate, bias=False)
        self.down_proj = nn.Linear(shape.intermediate, shape.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, shape: LlamaShape, attn_impl: str):
        super().__init__()
        self.attn_norm = RMSNorm(shape.hidden)
        self.attn = Attention(shape, attn_impl)
        self.mlp_norm = RMSNorm(shape.hidden)
        self.mlp = MLP(shape)
        # Set by models.apply_activation_checkpointing; a plain attribute, not a wrapper module, so the
        # state-dict keys (checkpoints, export) are the same either way.
        self.checkpointed = False

    def forward(self, x, cos, sin):
        if self.checkpointed and torch.is_grad_enabled():
            # Keep only the block's input; backward reruns the body to rebuild its activations.
            # Non-reentrant: works with inputs that need no grad and with parameter gradient hooks.
            return checkpoint(self._body, x, cos, sin, use_reentrant=False)
        return self._body(x, cos, sin)

    def _body(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class Llama(nn.Module):
    keep_fp32_buffers = ("rope_cos", "rope_sin")  # trainer/precision.py: never cast to bf16

    def __init__(self, shape: LlamaShape, vocab_size: int, max_seq_len: int, attn_impl: str = "auto"):
        super().__init__()
        if shape.hidden % shape.num_heads:
            raise ValueError(f"hidden {shape.hidden} is not divisible by num_heads {shape.num_heads}")
        self.shape, self.vocab_size, self.max_seq_len = shape, vocab_size, max_seq_len
        self.embed = nn.Embedding(vocab_size, shape.hidden)
        self.layers = nn.ModuleList(Block(shape, attn_impl) for _ in range(shape.num_layers))
        self.norm = RMSNorm(shape.hidden)
        self.lm_head = nn.Linear(shape.hidden, vocab_size, bias=False)
        cos, sin = rotary_tables(shape.hidden // shape.num_heads, max_seq_len)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchtitan's LLaMA init: embeddings N(0, 1); q, k, v, gate N(0, 0.02); o, up, down N(0, 0.02 / sqrt(2 (l +
        1)))
        for block l; lm_head N(0, hidden^-1/2); all block and head weights truncated at 3 std. Unlike GPT-2's N(0, 0.02)
        everywhere, the token embedding is not drowned by the blocks' random outputs at the start, so a small model
        leaves the unigram plateau in tens of steps instead of hundreds."""
        nn.init.normal_(self.embed.weight, std=1.0)
        for index, layer in enumerate(self.layers):
            depth_std = 0.02 / math.sqrt(2 * (index + 1))
            for name, p in layer.named_parameters():
                if p.dim() >= 2:
                    _trunc_normal(p, 0.02 if name.endswith(INPUT_SIDE) else depth_std)
        _trunc_normal(self.lm_head.weight, self.shape.hidden**-0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        seq = tokens.shape[1]
        if seq > self.max_seq_len:
            raise ValueError(f"sequence of {seq} tokens exceeds the model's max_seq_len={self.max_seq_len}")
        x = self.embed(tokens)
        cos, sin = self.rope_cos[:seq], self.rope_sin[:seq]
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))


INPUT_SIDE = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight")


def _trunc_normal(p: torch.Tensor, std: float) -> None:
    nn.init.trunc_normal_(p, std=std, a=-3 * std, b=3 * std)


def projection_modules(model: nn.Module):
    """(qualified name, parent module, attribute, Linear) for each of the seven block projections."""
    for qual_name, module in list(model.named_modules()):
        for attr in PROJECTION_NAMES:
            child = getattr(module, attr, None)
            if isinstance(child, nn.Module):
                yield f"{qual_name}.{attr}" if qual_name else attr, module, attr, child
