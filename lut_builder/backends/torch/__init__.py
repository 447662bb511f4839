"""PyTorch eager on CPU or CUDA.

- :mod:`.measurer`: :class:`TorchBackend`, one layer at a time
  (``get_backend("torch")``).
- :mod:`.runner`: :class:`TorchRunner`, a whole model (``make_runner("torch", ...)``).

Importing this package does not import torch; making a backend or runner does.
"""

from .measurer import TorchBackend, default_alignment, input_shape, layer_module
from .runner import TorchRunner

__all__ = ["TorchBackend", "TorchRunner", "default_alignment", "input_shape", "layer_module"]
