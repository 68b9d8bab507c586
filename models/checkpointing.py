"""Activation checkpointing (`train.activation_checkpointing=none|full|selective`).

A checkpointed block keeps only its input in forward and recomputes its activations in backward:
less activation memory for about one more forward pass of that block. The model holds only a flag
per block (`Block.checkpointed`); choosing which blocks get it lives here, beside the model, as
torchtitan keeps its activation-checkpointing code next to the model rather than in it.
"""

from __future__ import annotations

from torch import nn

from models.llama import Block

ACTIVATION_CHECKPOINTING_MODES = ("none", "full", "selective")


def apply_activation_checkpointing(model: nn.Module, mode: str) -> None:
    """Mark the model's LLaMA blocks for activation checkpointing, in place.

    `none`: no block. `full`: every block. `selective`: every other block, blocks 0, 2, 4, ... in
    order: torchtitan's layer-selective checkpointing with frequency 2 (which, counting from 1, marks
    blocks 1, 3, 5, ...; starting at 0 also covers the extra block of an odd depth). It saves about half
    of what `full` saves for half its recompute. Calling it again replaces the earlier choice.
    """
    if mode not in ACTIVATION_CHECKPOINTING_MODES:
        raise ValueError(f"unknown train.activation_checkpointing={mode!r}; choose one of: none, full, selective")
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for index, block in enumerate(blocks):
        block.checkpointed = mode == "full" or (mode == "selective" and index % 2 == 0)
