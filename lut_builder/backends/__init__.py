"""Latency backends: measure one layer on a deployment engine, registered by name.

``get_backend(name, **options)`` creates one; ``list_backends()`` names them. Nothing
here imports a backend's engine (ONNX Runtime, CUDA, TensorRT) until it is asked for.
"""

from .base import (
    Backend,
    check_channels,
    conv_groups,
    get_backend,
    list_backends,
    make_reference,
    register_backend,
)

__all__ = [
    "Backend",
    "check_channels",
    "conv_groups",
    "get_backend",
    "list_backends",
    "make_reference",
    "register_backend",
]
