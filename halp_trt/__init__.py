"""halp-trt: latency-aware structured pruning for deployment (HALP, SP-LAMP).

Importing this package needs neither a GPU nor TensorRT.
"""

from ._version import __version__

__all__ = ["__version__"]
