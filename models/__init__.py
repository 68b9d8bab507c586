from models.checkpointing import apply_activation_checkpointing
from models.llama import (
    LLAMA_SIZES,
    PROJECTION_NAMES,
    PROJECTION_RANK,
    Llama,
    LlamaShape,
    projection_modules,
    shape_for,
)
from models.meta import is_fake_or_meta

__all__ = [
    "LLAMA_SIZES",
    "PROJECTION_NAMES",
    "PROJECTION_RANK",
    "Llama",
    "LlamaShape",
    "apply_activation_checkpointing",
    "is_fake_or_meta",
    "projection_modules",
    "shape_for",
]
