"""TensorRT 10/11 on an NVIDIA GPU: the production backend.

- :mod:`.measurer`: :class:`TensorRTBackend`, one layer at a time as a tiny strongly
  typed engine (``get_backend("tensorrt")``).
- :mod:`.runner`: :class:`TensorRTRunner`, a whole model, engine or ONNX file
  (``make_runner("tensorrt", ...)``).
- :mod:`.trt_compat`: building networks and engines on TensorRT 10 and 11 (also used by
  ``halp-trt engine``); :mod:`.session`: running an engine and timing it on the GPU.

Importing this package imports neither TensorRT nor CUDA; making a backend or runner
does (and says in one line when they are missing).
"""

from .measurer import TensorRTBackend, layer_network
from .runner import TensorRTRunner

__all__ = ["TensorRTBackend", "TensorRTRunner", "layer_network"]
