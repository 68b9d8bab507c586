"""A dense project LLaMA as a Hugging Face `LlamaForCausalLM` directory: config.json, safetensors, tokenizer.

Two things differ from the project's layout besides key names:
- rotary pairs: models/llama.py rotates interleaved pairs (x[2i], x[2i+1]) (Meta's layout), transformers
  rotates halves (x[i], x[i + d/2]). Permuting the rows of q_proj and k_proj within each head, as
  transformers' convert_llama_weights_to_hf.py `permute` does, makes q.k (and so attention) identical.
  Loading the weights without it raises no error and gives wrong logits.
- config: transformers 4.x reads `rope_theta` and `torch_dtype`, 5.x `rope_parameters` and `dtype`; both are
  written so either version loads the directory.
"""

from __future__ import annotations

import json
import os
import re

import torch
from safetensors.torch import save_file

from models import Llama
from trainer import hf_tokenizer

ROPE_THETA = 10000.0  # models.llama.rotary_tables' default, the one Llama uses
WEIGHTS_NAME, INDEX_NAME = "model.safetensors", "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1000**3  # transformers' save_pretrained default in 4.x

_BLOCK_KEYS = {
    "attn_norm": "input_layernorm",
    "mlp_norm": "post_attention_layernorm",
    "attn": "self_attn",
    "mlp": "mlp",
}


def permute_rotary(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Rows of q_proj / k_proj from interleaved-pair to half-split rotary order, per head.
    weight: (num_heads * head_dim, in); row 2j of a head goes to j, row 2j + 1 to j + head_dim / 2."""
    out_features, in_features = weight.shape
    head_dim = out_features // num_heads
    return weight.view(num_heads, head_dim // 2, 2, in_features).transpose(1, 2).reshape(out_features, in_features)


def hf_key(key: str) -> str:
    """The transformers LlamaForCausalLM name of a project state-dict key."""
    if key == "embed.weight":
        return "model.embed_tokens.weight"
    if key == "norm.weight":
        return "model.norm.weight"
    if key == "lm_head.weight":
        return key
    m = re.fullmatch(r"layers\.(\d+)\.(attn_norm|mlp_norm|attn|mlp)\.(.+)", key)
    assert m, f"no Hugging Face name for {key}"  # a key models/llama.py does not make
    return f"model.layers.{m.group(1)}.{_BLOCK_KEYS[m.group(2)]}.{m.group(3)}"


def hf_state_dict(dense: dict[str, torch.Tensor], num_heads: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in dense.items():
        if key.endswith(("attn.q_proj.weight", "attn.k_proj.weight")):
            value = permute_rotary(value, num_heads)
        out[hf_key(key)] = value.to(dtype).contiguous()
    return out


def hf_config(model: Llama, dtype: torch.dtype, special_ids: dict) -> dict:
    shape = model.shape
    dtype_name = str(dtype).removeprefix("torch.")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_heads,
        "head_dim": shape.hidden // shape.num_heads,
        "vocab_size": model.embed.weight.shape[0],
        "max_position_embeddings": model.max_seq_len,
        "rms_norm_eps": model.norm.eps,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "use_cache": True,
        "rope_theta": ROPE_THETA,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
        **special_ids,
    }


def write_weights(state: dict[str, torch.Tensor], out_dir: str, max_shard_bytes: int) -> list[str]:
    """One model.safetensors, or shards of at most max_shard_bytes plus the index transformers reads."""
    shards, current, size = [], {}, 0
    for key, value in state.items():
        nbytes = value.numel() * value.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key], size = value, size + nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(out_dir, WEIGHTS_NAME), metadata={"format": "pt"})
        return [WEIGHTS_NAME]
    names, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(out_dir, name), metadata={"format": "pt"})
        names.append(name)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(v.numel() * v.element_size() for v in state.values())
    with open(os.path.join(out_dir, INDEX_NAME), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return names


def write_hf(
    out_dir: str,
    dense: dict[str, torch.Tensor],
    model: Llama,
    tokenizer_path: str,
    dtype: torch.dtype,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> list[str]:
    """Write a directory that AutoModelForCausalLM / AutoTokenizer.from_pretrained load; returns the file names."""
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(out_dir):  # stale shards of an earlier export would be picked up with the new index
        if name.endswith(".safetensors") or name == INDEX_NAME:
            os.remove(os.path.join(out_dir, name))
    special_ids = hf_tokenizer.write_tokenizer(tokenizer_path, out_dir, model.max_seq_len)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config(model, dtype, special_ids), f, indent=2)
    generation = {k: v for k, v in special_ids.items() if v is not None}
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(generation, f, indent=2)
    weights = write_weights(hf_state_dict(dense, model.shape.num_heads, dtype), out_dir, max_shard_bytes)
    return [
        "config.json",
        "generation_config.json",
        "tokenizer.model",
        "tokenizer.json",
        "tokenizer_config.json",
        *weights,
    ]
