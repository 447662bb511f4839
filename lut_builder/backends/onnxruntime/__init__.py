"""ONNX Runtime on CPU: the default backend where no GPU is present.

- :mod:`.measurer`: :class:`OnnxRuntimeBackend`, one layer at a time as an ONNX graph
  built directly (``get_backend("onnxruntime")``), and its reference workload.
- :mod:`.runner`: :class:`OnnxRuntimeRunner`, a whole model
  (``make_runner("onnxruntime", ...)``).
- :mod:`.session`: the session settings both use.
- :mod:`.int8`: INT8 layers as Q/DQ graphs (also what the TensorRT backend parses) and
  the channel step read from a measured staircase.

Importing this package does not import ONNX Runtime; making a backend or runner does.
"""

from .measurer import OnnxRuntimeBackend, layer_model, reference_callable, reference_kind
from .runner import OnnxRuntimeRunner

__all__ = [
    "OnnxRuntimeBackend",
    "OnnxRuntimeRunner",
    "layer_model",
    "reference_callable",
    "reference_kind",
]
