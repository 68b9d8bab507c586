from models.llama import LLAMA_SIZES, PROJECTION_NAMES, Llama, LlamaShape, projection_modules, shape_for

__all__ = ["LLAMA_SIZES", "PROJECTION_NAMES", "Llama", "LlamaShape", "projection_modules", "shape_for"]
