"""Throughput in the run's own output: model FLOPs utilisation (MFU) and peak memory on every logged step.

FLOPs per token, PaLM's formula (Chowdhery et al. 2022, appendix B; nanoGPT's `estimate_mfu` uses the same):

    6 N + 12 L H Q T

N: the dense model's parameters except the input embedding (a lookup, no matmul; the untied lm_head is a
matmul and counts; the RMSNorm weights are counted too, as nanoGPT does, a rounding error). 6 = 2 FLOPs per
multiply-add x (forward + 2 x backward). 12 L H Q T: the attention scores and their weighted sum (L layers,
H heads of size Q, context T), forward and backward, counted over the whole T x T square as PaLM does (the
causal mask's skipped half is not subtracted). Always the dense architecture's FLOPs, whatever the
param strategy: MFU measures useful model work, so a method that does extra or less work shows it in MFU.

MFU = tokens/s x FLOPs per token / (processes x the accelerator's dense bf16 peak). The peak comes from
PEAK_BF16_TFLOPS by GPU name, or `train.peak_tflops`; on a CPU there is none unless that is set.
"""

from __future__ import annotations

import resource

import torch

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s. Longest match wins,
# so "H100 PCIe" is not read as "H100".
PEAK_BF16_TFLOPS = {
    "B200": 2250.0,
    "H200": 989.0,
    "GH200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "H800": 989.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "MI300X": 1307.0,
}


def peak_tflops(device_name: str | None) -> float | None:
    """The table's peak for a device name (torch.cuda.get_device_name), None when unknown or no GPU."""
    if not device_name:
        return None
    matches = [key for key in PEAK_BF16_TFLOPS if key in device_name]
    return PEAK_BF16_TFLOPS[max(matches, key=len)] if matches else None


def flops_per_token(shape, vocab_size: int, seq_len: int) -> int:
    """6 N + 12 L H Q T for a LLaMA shape (models.LlamaShape): see the module docstring."""
    h, i, layers = shape.hidden, shape.intermediate, shape.num_layers
    per_layer = 4 * h * h + 3 * h * i + 2 * h  # q k v o, gate up down, two RMSNorms
    non_embedding = layers * per_layer + h + vocab_size * h  # final norm, lm_head
    head_dim = h // shape.num_heads
    return 6 * non_embedding + 12 * layers * shape.num_heads * head_dim * seq_len


def peak_memory_bytes(device: torch.device) -> int:
    """The most memory this process has held: allocated GPU memory, or the CPU's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class ThroughputMeter:
    """Called with each step's metrics; returns MFU (when a peak is known) and peak memory to add to them."""

    def __init__(
        self,
        model: torch.nn.Module,
        seq_len: int,
        world_size: int,
        device: torch.device,
        peak_tflops_override: float = 0.0,
    ):
        shape = getattr(model, "shape", None)
        self.flops_per_token = flops_per_token(shape, model.vocab_size, seq_len) if shape is not None else None
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        peak = peak_tflops_override or peak_tflops(name)
        self.peak_flops = peak * 1e12 * world_size if peak else None
        self.device = device

    def __call__(self, metrics: dict) -> dict:
        out = {"mem/peak_bytes": peak_memory_bytes(self.device)}
        if self.peak_flops and self.flops_per_token and "train/tokens_per_s" in metrics:
            out["train/mfu"] = metrics["train/tokens_per_s"] * self.flops_per_token / self.peak_flops
        return out
