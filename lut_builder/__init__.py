"""lut-builder: measured latency lookup tables for latency-aware pruning.

Nothing imported here needs a GPU, CUDA or TensorRT; backends import them when used.
"""

from .errors import ShapeError, SpecError, UserError
from .signatures import LayerInfo, LayerSignature, model_layers, unique_signatures
from .version import __version__

__all__ = [
    "LayerInfo",
    "LayerSignature",
    "ShapeError",
    "SpecError",
    "UserError",
    "__version__",
    "model_layers",
    "unique_signatures",
]
