"""The backend protocols and the registry that names backends.

A backend has two parts, kept together in its package (``lut_builder/backends/<name>/``,
as Polygraphy keeps a backend's loaders and runner together):

- a per-layer measurer, a :class:`Backend`: one layer (conv2d or linear with its fused
  epilogue) at given channel counts, and what it measured on
  (:meth:`Backend.fingerprint`); made by ``get_backend("onnxruntime", threads=1)``;
- a whole-model runner, a :class:`Runner`: one inference of a whole model, for the
  end-to-end timings the latency model is calibrated and checked on; made by
  ``make_runner("onnxruntime", model_or_path, example_input)``.

A backend module registers its classes at import time with
``@register_backend("name")`` and ``@register_runner("name")`` (and a reference workload
with ``@register_reference("name")``). Built-in backends are imported only when asked
for, by module name, so importing this package needs neither a GPU nor TensorRT, and
this module depends on none of them.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
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
#: The constructor arguments of a measuring backend that make its timing loop.
TIMING_LOOP_FIELDS = ("warmup", "runs", "min_time_s", "inner")
_REGISTRY: dict[str, Callable[..., Backend]] = {}
_RUNNERS: dict[str, Callable[..., Runner]] = {}
_REFERENCES: dict[str, Callable[[str], Callable[[], Any]]] = {}


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

    def timing_loop(self) -> dict[str, Any]:
        """The loop each point is timed with (those of :data:`TIMING_LOOP_FIELDS` this
        backend has: warm-up runs, timed runs, minimum time, inner repeats), as its
        constructor takes them; empty for a backend that does not time (``analytic``).
        Not part of the fingerprint: a table measured with a longer loop describes the
        same deployment, only less noisily."""
        if not self.is_measurement:
            return {}
        return {k: getattr(self, k) for k in TIMING_LOOP_FIELDS if hasattr(self, k)}

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
    if sig.diagonal and c_in != c_out:
        raise ValueError(f"a {sig.group_mode} layer has c_in == c_out, not ({c_in}, {c_out})")
    unit = sig.channel_unit
    if c_in % unit or c_out % unit:
        what = f"{unit} channels per group" if sig.group_width else f"{unit} groups"
        raise ValueError(
            f"a layer with {what} needs channel counts divisible by {unit}, not ({c_in}, {c_out})"
        )


def conv_groups(sig: LayerSignature, c_in: int) -> int:
    """The ``groups`` argument of the convolution for a signature at ``c_in`` channels."""
    return sig.groups_at(c_in)


class Runner:
    """One model on one backend, ready to run (see :func:`make_runner`).

    Subclasses implement :meth:`__call__` (one inference with the example input) and may
    override :meth:`sync` (wait for asynchronous work) and :meth:`close`. Runners feed
    the timing loops of :mod:`lut_builder.timing` (end-to-end latency, the calibration
    of the latency model, fidelity benchmarks, verification).
    """

    #: Backend name, as given to :func:`make_runner`.
    name: str = ""
    #: The clock to time this runner with (see :mod:`lut_builder.timing`): ``"thread"``
    #: for single-threaded CPU inference that runs on the calling thread, else ``"wall"``.
    clock: str = "wall"

    def __call__(self) -> Any:
        raise NotImplementedError

    def sync(self) -> None:
        """Block until all work started by :meth:`__call__` has finished."""

    def close(self) -> None:
        """Free the session, device memory and temporary files."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_reference(kind: str) -> Callable[[], Any]:
    """The reference workload named ``kind`` (a backend's ``reference_kind``), ready to run.

    Raises:
        UserError: an unknown kind (a table from a newer lut-builder).
    """
    backend = kind.split("/", 1)[0]
    if backend in _BUILTIN_MODULES:
        _load_builtin(backend)
    if backend not in _REFERENCES:
        raise UserError(f"unknown reference workload {kind!r}")
    return _REFERENCES[backend](kind)


def register_backend(name: str) -> Callable[[type], type]:
    """Class decorator: make a backend class available as ``get_backend(name)``."""

    def deco(cls: type) -> type:
        _REGISTRY[name] = cls
        return cls

    return deco


def register_runner(name: str) -> Callable[[type], type]:
    """Class decorator: make a runner class available as ``make_runner(name, ...)``."""

    def deco(cls: type) -> type:
        _RUNNERS[name] = cls
        return cls

    return deco


def register_reference(name: str) -> Callable[[Callable], Callable]:
    """Function decorator: ``fn(kind)`` makes the reference workloads whose kind starts
    with ``name/`` (see :func:`make_reference`)."""

    def deco(fn: Callable) -> Callable:
        _REFERENCES[name] = fn
        return fn

    return deco


def _load_builtin(name: str) -> None:
    """Import a built-in backend's module, which registers what it defines.

    Raises:
        UserError: the module cannot be imported (a dependency is missing).
    """
    try:
        importlib.import_module(_BUILTIN_MODULES[name])
    except ImportError as exc:
        raise UserError(f"backend {name!r} cannot be loaded: {exc}") from exc


def _registered(name: str) -> Callable[..., Backend]:
    """The class registered as backend ``name``, its built-in module loaded first.

    Raises:
        UserError: unknown name, or a module that cannot be loaded.
    """
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        _load_builtin(name)
    if name not in _REGISTRY:
        raise UserError(f"unknown backend {name!r}; known: {', '.join(list_backends())}")
    return _REGISTRY[name]


def list_backends() -> list[str]:
    """Names of all known backends (built-in and registered), sorted."""
    return sorted(set(_BUILTIN_MODULES) | set(_REGISTRY))


def list_runners() -> list[str]:
    """Names of the backends that have a whole-model runner, sorted."""
    for name in _BUILTIN_MODULES:
        if name not in _RUNNERS:
            try:
                _load_builtin(name)
            except UserError:
                continue
    return sorted(_RUNNERS)


def get_backend(name: str, **options: Any) -> Backend:
    """Create a backend's per-layer measurer by name.

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
    cls = _registered(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise UserError(f"backend {name!r} does not take these options: {exc}") from exc


def backend_options(name: str) -> frozenset[str]:
    """The options a named backend's constructor takes (``precision``, ``threads``, ...),
    read from its class without building one (nothing is measured or allocated).

    Raises:
        UserError: unknown name, or a built-in backend whose module cannot be loaded.
    """
    params = inspect.signature(_registered(name)).parameters.values()
    return frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def make_runner(backend: str, model_or_path: Any, example_input: Any, **options: Any) -> Runner:
    """A whole-model runner for one model on a named backend.

    Args:
        backend: a backend with a runner (:func:`list_runners`: ``"onnxruntime"``,
            ``"torch"``, ``"tensorrt"``).
        model_or_path: an ``nn.Module``, or for onnxruntime/tensorrt a path to a model
            file (``.onnx``; ``.engine`` for tensorrt).
        example_input: a tensor (or numpy array) of the input shape; its values are fed.
        **options: the runner's options; see the backend's runner class
            (:class:`~lut_builder.backends.onnxruntime.OnnxRuntimeRunner`,
            :class:`~lut_builder.backends.torch.TorchRunner`,
            :class:`~lut_builder.backends.tensorrt.TensorRTRunner`).

    Returns:
        A :class:`Runner`.

    Raises:
        UserError: unknown backend, a missing model file, TensorRT or CUDA not available.
    """
    if backend not in _RUNNERS and backend in _BUILTIN_MODULES:
        _load_builtin(backend)
    if backend not in _RUNNERS:
        raise UserError(f"unknown runner backend {backend!r}; known: {', '.join(list_runners())}")
    return _RUNNERS[backend](model_or_path, example_input, **options)


#: CPU extensions that decide which convolution kernels a CPU runtime dispatches to
#: (ONNX Runtime's MLAS, oneDNN): x86 vector widths, dot-product and matrix units; Arm's
#: SIMD, SVE, dot-product and matrix instructions.
KERNEL_FLAGS = frozenset(
    {
        "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni",
        "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
        "asimd", "asimddp", "sve", "sve2", "i8mm", "bf16",
    }
)  # fmt: skip


def cpu_flags(cpuinfo: str | None = None) -> list[str] | None:
    """The kernel-deciding extensions (:data:`KERNEL_FLAGS`) of this CPU, sorted: the
    ``flags`` (x86) or ``Features`` (Arm) line of ``/proc/cpuinfo`` (or of ``cpuinfo``
    given as text). None where they cannot be read (not Linux).

    Two CPUs of one model name can run different kernels: a virtual machine may report
    only "AMD EPYC" for an AVX2 and an AVX-512 generation alike, whose convolutions step
    every 8 and 16 channels. The table's fingerprint records these flags so that it says
    which.
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return sorted(KERNEL_FLAGS.intersection(value.split()))
    return None


def cpu_block_size() -> int:
    """The channel block of blocked-layout CPU convolution kernels on this CPU.

    ONNX Runtime's MLAS (and oneDNN) run convolutions in a blocked NCHWc layout whose
    block is 16 channels with AVX-512 and 8 with AVX2: latency is a staircase with that
    step (measured: a 3x3 conv at 16x16 costs the same for 52..64 output channels and
    jumps at 68), so it is the natural grid step. Read from the CPU flags on Linux;
    8 elsewhere.
    """
    return 16 if "avx512f" in (cpu_flags() or ()) else 8


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
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "lut_builder": __version__,
    }
