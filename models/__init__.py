from models.checkpointing import apply_activation_checkpointing
from models.llama import LLAMA_SIZES, PROJECTION_NAMES, Llama, LlamaShape, projection_modules, shape_for

__all__ = [
    "LLAMA_SIZES",
    "PROJECTION_NAMES",
    "Llama",
    "LlamaShape",
    "apply_activation_checkpointing",
    "projection_modules",
    "shape_for",
]
