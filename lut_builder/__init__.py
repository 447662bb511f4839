"""lut-builder: measured latency lookup tables for latency-aware pruning.

- :func:`build_table` plans and measures a model's table on a backend (resumable,
  shardable) and calibrates the network latency model; :class:`BuildResult` says what
  it did.
- :class:`LatencyTable` is the table file; :class:`Grid` a signature's planned axes.
- :func:`predict_latency` is the network latency model on a table,
  :func:`fit_calibration` and :func:`calibrate_overhead` calibrate it, and
  :func:`measure_end_to_end` times whole models in a table's unit.
- :class:`LayerSignature` and :func:`model_layers` describe a model's layers;
  :class:`Timing` is one measurement.
- Backends (and whole-model runners) are picked by name in :mod:`lut_builder.backends`.

Nothing imported here needs a GPU, CUDA or TensorRT; backends import them when used.
"""

from .build import BuildResult, build_table
from .end_to_end import measure_end_to_end
from .errors import (
    ExportError,
    FingerprintMismatchError,
    IncompleteTableError,
    ShapeError,
    SpecError,
    UserError,
)
from .latency_model import Calibration, calibrate_overhead, fit_calibration, predict_latency
from .signatures import LayerInfo, LayerSignature, model_layers, unique_signatures
from .table import Grid, LatencyTable
from .timing import Timing
from .version import __version__

__all__ = [
    "BuildResult",
    "Calibration",
    "ExportError",
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
    "build_table",
    "calibrate_overhead",
    "fit_calibration",
    "measure_end_to_end",
    "model_layers",
    "predict_latency",
    "unique_signatures",
]
