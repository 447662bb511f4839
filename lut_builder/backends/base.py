"""The backend protocol and the registry that names backends.

A backend measures one layer (conv2d or linear with its fused epilogue) at given channel
counts and says what it measured on (:meth:`Backend.fingerprint`). Backends are picked by
name: ``get_backend("onnxruntime", threads=1)``. Built-in backends are imported only
when asked for, so importing this package needs neither a GPU nor TensorRT.

A backend module registers its class with ``@register_backend("name")`` at import time.
The ``tensorrt`` backend lives in ``lut_builder/backends/tensorrt.py`` and follows the
same rule (it may also simply define ``TensorRTBackend``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
from collections.abc import Callable
from typing import Any, ClassVar

from ..errors import UserError
from ..signatures import LayerSignature
from ..timing import Timing

#: Built-in backends and the module that defines each; imported on first use.
_BUILTIN_MODULES: dict[str, str] = {
    "analytic": "lut_builder.backends.analytic",
    "onnxruntime": "lut_builder.backends.onnxruntime",
    "tensorrt": "lut_builder.backends.tensorrt",
    "torch": "lut_builder.backends.torch",
}
_REGISTRY: dict[str, Callable[..., Backend]] = {}


class Backend:
    """What every backend provides.

    Attributes:
        name: the registry name (``"onnxruntime"``, ...).
        alignment: the default channel step of a measured grid on this backend (the
            width granularity at which its kernels change speed).
        is_measurement: False for models (``analytic``) whose numbers are not measured.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``.
    """

    name: ClassVar[str] = ""
    is_measurement: ClassVar[bool] = True
    alignment: int = 8
    precision: str = "fp32"
    #: The reference workload this backend normalises its timings by (see
    #: :func:`lut_builder.timing.time_relative`), or None when it reports raw times.
    reference_kind: str | None = None
    #: The unit a normalising backend converts its ratios to milliseconds with: the
    #: table's ``reference.unit_ms`` while filling a table (so every process uses the
    #: same), else its own fastest reference run.
    reference_ms: float | None = None
    #: The fastest reference run this backend has seen (a candidate for the unit).
    reference_floor_ms: float | None = None

    def measure_reference(self) -> Timing:
        """Time the reference workload alone (backends with a ``reference_kind``)."""
        raise NotImplementedError

    def measure(self, sig: LayerSignature, c_in: int, c_out: int) -> Timing:
        """Latency of one layer of signature ``sig`` with ``c_in`` -> ``c_out`` channels.

        Raises:
            ValueError: channel counts that the signature cannot have (see
                :func:`check_channels`).
        """
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        """What the numbers depend on: backend, precision, device, versions, options."""
        raise NotImplementedError

    def close(self) -> None:
        """Free sessions and device memory."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_channels(sig: LayerSignature, c_in: int, c_out: int) -> None:
    """Check that a layer of ``sig`` can have these channel counts.

    Raises:
        ValueError: non-positive counts, a depthwise layer with ``c_in != c_out``, or a
            grouped layer whose counts are not divisible by its group count.
    """
    if c_in < 1 or c_out < 1:
        raise ValueError(f"channel counts must be positive, not ({c_in}, {c_out})")
    if sig.group_mode == "depthwise" and c_in != c_out:
        raise ValueError(f"a depthwise layer has c_in == c_out, not ({c_in}, {c_out})")
    if sig.group_mode == "grouped" and (c_in % sig.groups or c_out % sig.groups):
        raise ValueError(
            f"a layer with {sig.groups} groups needs channel counts divisible by it, "
            f"not ({c_in}, {c_out})"
        )


def conv_groups(sig: LayerSignature, c_in: int) -> int:
    """The ``groups`` argument of the convolution for a signature at ``c_in`` channels."""
    return {"dense": 1, "depthwise": c_in}.get(sig.group_mode, sig.groups)


def make_reference(kind: str) -> Callable[[], Any]:
    """The reference workload named ``kind`` (a backend's ``reference_kind``), ready to run.

    Raises:
        UserError: an unknown kind (a table from a newer lut-builder).
    """
    backend = kind.split("/", 1)[0]
    if backend == "onnxruntime":
        from .onnxruntime import reference_callable

        return reference_callable(kind)
    raise UserError(f"unknown reference workload {kind!r}")


def register_backend(name: str) -> Callable[[type], type]:
    """Class decorator: make a backend class available as ``get_backend(name)``."""

    def deco(cls: type) -> type:
        _REGISTRY[name] = cls
        return cls

    return deco


def list_backends() -> list[str]:
    """Names of all known backends (built-in and registered), sorted."""
    return sorted(set(_BUILTIN_MODULES) | set(_REGISTRY))


def get_backend(name: str, **options: Any) -> Backend:
    """Create a backend by name.

    Args:
        name: one of :func:`list_backends`.
        **options: passed to the backend's constructor (``precision``, ``device``,
            ``threads``, ...).

    Returns:
        A ready :class:`Backend`.

    Raises:
        UserError: unknown name (the message lists the known ones), TensorRT or CUDA
            not available for a backend that needs it, or options the backend rejects.
    """
    if name == "tensorrt" and importlib.util.find_spec("tensorrt") is None:
        raise UserError("the tensorrt backend needs TensorRT, which is not installed here")
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        try:
            module = importlib.import_module(_BUILTIN_MODULES[name])
        except ImportError as exc:
            raise UserError(f"backend {name!r} cannot be loaded: {exc}") from exc
        if name not in _REGISTRY and hasattr(module, "TensorRTBackend"):
            _REGISTRY[name] = module.TensorRTBackend
    if name not in _REGISTRY:
        raise UserError(f"unknown backend {name!r}; known: {', '.join(list_backends())}")
    try:
        return _REGISTRY[name](**options)
    except TypeError as exc:
        raise UserError(f"backend {name!r} does not take these options: {exc}") from exc


def cpu_block_size() -> int:
    """The channel block of blocked-layout CPU convolution kernels on this CPU.

    ONNX Runtime's MLAS (and oneDNN) run convolutions in a blocked NCHWc layout whose
    block is 16 channels with AVX-512 and 8 with AVX2: latency is a staircase with that
    step (measured: a 3x3 conv at 16x16 costs the same for 52..64 output channels and
    jumps at 68), so it is the natural grid step. Read from the CPU flags on Linux;
    8 elsewhere.
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return 16 if "avx512f" in line.split() else 8
    except OSError:
        pass
    return 8


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_fingerprint() -> dict[str, Any]:
    """Host facts shared by every backend's fingerprint."""
    from ..version import __version__

    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "lut_builder": __version__,
    }
