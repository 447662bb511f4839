"""lut-builder: measured latency lookup tables for latency-aware pruning.

Nothing imported here needs a GPU, CUDA or TensorRT; backends import them when used.
"""

from .errors import ShapeError, SpecError, UserError
from .signatures import LayerInfo, LayerSignature, model_layers, unique_signatures
from .table import (
    FingerprintMismatchError,
    Grid,
    IncompleteTableError,
    LatencyTable,
    calibrate_overhead,
    predict_latency,
)
from .timing import Timing
from .version import __version__

__all__ = [
    "FingerprintMismatchError",
    "Grid",
    "IncompleteTableError",
    "LatencyTable",
    "LayerInfo",
    "LayerSignature",
    "ShapeError",
    "SpecError",
    "Timing",
    "UserError",
    "__version__",
    "calibrate_overhead",
    "model_layers",
    "predict_latency",
    "unique_signatures",
]
