"""Latency backends, registered by name: a per-layer measurer and a whole-model runner each.

``get_backend(name, **options)`` makes a :class:`Backend` that measures one layer;
``make_runner(name, model_or_path, example_input, **options)`` makes a :class:`Runner`
that runs a whole model; ``list_backends()`` names them and ``backend_options(name)``
lists the options a backend's constructor takes. Each backend keeps both in its own
package (``onnxruntime/``, ``torch/``, ``tensorrt/``; ``analytic`` is a model with no
runner). Nothing here imports a backend's engine (ONNX Runtime, CUDA, TensorRT) until it
is asked for.
"""

from .base import (
    Backend,
    Runner,
    backend_options,
    check_channels,
    conv_groups,
    get_backend,
    list_backends,
    list_runners,
    make_reference,
    make_runner,
    register_backend,
    register_reference,
    register_runner,
)

__all__ = [
    "Backend",
    "Runner",
    "backend_options",
    "check_channels",
    "conv_groups",
    "get_backend",
    "list_backends",
    "list_runners",
    "make_reference",
    "make_runner",
    "register_backend",
    "register_reference",
    "register_runner",
]
