"""TensorRT 10.x and 11.x behind one small interface: building networks and engines.

Both the per-layer latency backend (:mod:`lut_builder.backends.tensorrt.measurer`) and the
engine builder of ``halp-trt engine`` use these helpers, so the two produce engines the
same way: strongly typed networks (precision comes from tensor types: an FP16 ONNX gives
an FP16 engine), a workspace limit, an optimisation level, a reusable timing cache, one
optimisation profile. Running a built engine is :mod:`lut_builder.backends.tensorrt.session`.

The two major versions differ where this module branches on ``trt.__version__``:

- TensorRT 10 makes a network strongly typed only when asked
  (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``); TensorRT 11 always does and ignores
  the (deprecated) flag. The weak-typing builder flags (``BuilderFlag.FP16``/``INT8``) are
  gone in 11, so neither version's path uses them.

Code that exists only on one version sits in functions whose names end in ``_trt10`` or
``_trt11``; ``tests/test_tensorrt_api.py`` checks every TensorRT name this project uses
against the real bindings of both versions, and names found in only one version against
the functions of that version.

Nothing here imports TensorRT or touches CUDA at import time. Without TensorRT,
:func:`import_tensorrt` raises :class:`TensorRTUnavailable` (a one-line user error).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ...errors import ShapeError, UserError
from ...fileio import atomic_write

#: TensorRT major versions this code is written and checked against.
SUPPORTED_MAJORS = (10, 11)
#: The builder's optimisation levels (TensorRT's default is 3).
OPT_LEVELS = range(0, 6)

Shape = tuple[int, ...]


class TensorRTUnavailable(UserError):
    """TensorRT (or the CUDA GPU it needs) is not available on this machine."""


class EngineBuildError(UserError):
    """TensorRT could not parse the network or build an engine from it."""


def import_tensorrt() -> Any:
    """The ``tensorrt`` module of a supported version.

    Raises:
        TensorRTUnavailable: TensorRT is not installed, or its version is not 10.x/11.x.
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            "TensorRT is not installed here (pip install 'halp-trt[trt]' on a machine with an "
            f"NVIDIA GPU, or use the NGC container in docker/): {exc}"
        ) from None
    trt_major(trt)
    return trt


def tensorrt_version() -> str:
    """The installed TensorRT's version string.

    Raises:
        TensorRTUnavailable: TensorRT is not installed or not supported.
    """
    return str(import_tensorrt().__version__)


def parse_version(text: str) -> tuple[int, ...]:
    """``"10.16.1.11"`` -> ``(10, 16, 1, 11)``; non-numeric tails (``post1``) are dropped.

    Raises:
        ValueError: no leading number.
    """
    parts = []
    for piece in str(text).split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
        if m.end() != len(piece):
            break
    if not parts:
        raise ValueError(f"not a version: {text!r}")
    return tuple(parts)


def trt_major(trt: Any) -> int:
    """The major version of a ``tensorrt`` module.

    Raises:
        TensorRTUnavailable: a version this project does not support.
    """
    major = parse_version(trt.__version__)[0]
    if major not in SUPPORTED_MAJORS:
        raise TensorRTUnavailable(
            f"TensorRT {trt.__version__} is not supported; "
            f"supported: {', '.join(f'{m}.x' for m in SUPPORTED_MAJORS)}"
        )
    return major


def make_logger(trt: Any, verbose: bool = False) -> Any:
    """A TensorRT logger printing warnings (or everything, when ``verbose``)."""
    return trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)


# --- networks -------------------------------------------------------------------------


def network_flags(trt: Any) -> int:
    """``create_network`` flags for a strongly typed network on this TensorRT version."""
    if trt_major(trt) >= 11:
        return _network_flags_trt11(trt)
    return _network_flags_trt10(trt)


def _network_flags_trt10(trt: Any) -> int:
    # TensorRT 10 networks are weakly typed unless asked; strong typing is what makes
    # an FP16 ONNX give an FP16 engine, the same rule TensorRT 11 always applies.
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _network_flags_trt11(trt: Any) -> int:
    # Always strongly typed; STRONGLY_TYPED is deprecated and ignored, so pass nothing.
    return 0


def create_network(trt: Any, builder: Any) -> Any:
    """A new, empty, strongly typed network definition."""
    return builder.create_network(network_flags(trt))


def dtype_name(trt: Any, dtype: Any) -> str:
    """A TensorRT ``DataType`` as a short name: ``float32``, ``float16``, ``bfloat16``..."""
    names = {
        trt.float32: "float32",
        trt.float16: "float16",
        trt.bfloat16: "bfloat16",
        trt.int8: "int8",
        trt.int32: "int32",
        trt.int64: "int64",
        trt.bool: "bool",
    }
    return names.get(dtype, str(dtype).rsplit(".", 1)[-1].lower())


def trt_dtype(trt: Any, precision: str) -> Any:
    """The TensorRT ``DataType`` of a precision name (``fp32``, ``fp16``, ``bf16``).

    Raises:
        UserError: an unknown precision.
    """
    table = {"fp32": trt.float32, "fp16": trt.float16, "bf16": trt.bfloat16}
    if precision not in table:
        raise UserError(f"unknown precision {precision!r}; known: {', '.join(table)}")
    return table[precision]


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (``-1`` for a dynamic dimension) and dtype name of a network tensor."""

    name: str
    shape: Shape
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def network_io(trt: Any, network: Any) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Inputs and outputs of a network definition."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]

    def info(t: Any) -> TensorInfo:
        return TensorInfo(t.name, tuple(int(d) for d in t.shape), dtype_name(trt, t.dtype))

    return [info(t) for t in inputs], [info(t) for t in outputs]


def parse_onnx(trt: Any, builder: Any, logger: Any, path: str | os.PathLike) -> tuple[Any, Any]:
    """Parse an ONNX file into a new strongly typed network.

    Returns:
        ``(network, parser)``; the parser must outlive the network's use (it owns
        the weights).

    Raises:
        EngineBuildError: the parser rejects the model (its first errors are quoted).
    """
    network = create_network(trt, builder)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        detail = "; ".join(errors[:3]) or "no detail"
        raise EngineBuildError(f"TensorRT cannot parse {str(path)!r}: {detail}")
    return network, parser


def parse_onnx_bytes(trt: Any, builder: Any, logger: Any, data: bytes) -> tuple[Any, Any]:
    """Parse a serialized ONNX model into a new strongly typed network (see
    :func:`parse_onnx`); used for generated models, such as INT8 Q/DQ layers.

    Raises:
        EngineBuildError: the parser rejects the model (its first errors are quoted).
    """
    network = create_network(trt, builder)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        detail = "; ".join(errors[:3]) or "no detail"
        raise EngineBuildError(f"TensorRT cannot parse the generated ONNX model: {detail}")
    return network, parser


# --- builder configuration ------------------------------------------------------------


@dataclass(frozen=True)
class BuildSettings:
    """How to configure TensorRT's builder; checks itself, needs no TensorRT.

    Args:
        workspace_gib: limit of the builder's scratch memory pool in GiB, or None for
            TensorRT's default (the device's memory).
        opt_level: builder optimisation level 0-5 (higher: longer build, maybe faster
            engine), or None for TensorRT's default (3).
        timing_cache: file to load tactic timings from (when it exists) and save them
            to after the build, or None.
        profiles: input name -> (min, opt, max) shapes of the optimisation profile; empty
            when every input shape is static.
        max_aux_streams: auxiliary streams the engine may use (0 serialises layers, as
            per-layer timing wants), or None for TensorRT's choice.
    """

    workspace_gib: float | None = None
    opt_level: int | None = None
    timing_cache: Path | None = None
    profiles: Mapping[str, tuple[Shape, Shape, Shape]] = field(default_factory=dict)
    max_aux_streams: int | None = None

    def __post_init__(self) -> None:
        if self.workspace_gib is not None and not self.workspace_gib > 0:
            raise UserError(
                f"the workspace must be a positive number of GiB, not {self.workspace_gib}"
            )
        if self.opt_level is not None and self.opt_level not in OPT_LEVELS:
            raise UserError(f"the optimisation level must be 0-5, not {self.opt_level}")
        if self.max_aux_streams is not None and self.max_aux_streams < 0:
            raise UserError("max_aux_streams must be >= 0")
        for name, shapes in self.profiles.items():
            check_profile_shapes(name, *shapes)
        if self.timing_cache is not None:
            object.__setattr__(self, "timing_cache", Path(self.timing_cache))

    @property
    def workspace_bytes(self) -> int | None:
        """The workspace limit in bytes, or None."""
        return None if self.workspace_gib is None else int(self.workspace_gib * (1 << 30))


def check_profile_shapes(
    name: str, lo: Sequence[int], opt: Sequence[int], hi: Sequence[int]
) -> None:
    """Check one input's (min, opt, max) profile shapes.

    Raises:
        ShapeError: ranks differ, a dimension is not positive, or min <= opt <= max fails.
    """
    if not (len(lo) == len(opt) == len(hi)):
        raise ShapeError(f"profile shapes of input {name!r} have different ranks")
    for a, b, c in zip(lo, opt, hi):
        if min(a, b, c) < 1 or not (a <= b <= c):
            raise ShapeError(
                f"profile of input {name!r} needs positive min <= opt <= max, "
                f"not {tuple(lo)} / {tuple(opt)} / {tuple(hi)}"
            )


def configure_builder(trt: Any, builder: Any, settings: BuildSettings, *, cache: Any = None) -> Any:
    """A builder config with the settings applied (workspace, level, cache, profile).

    Args:
        cache: an ``ITimingCache`` to share with earlier configs (it takes the place of
            ``settings.timing_cache``), or None.

    Returns:
        The ``IBuilderConfig``.

    Raises:
        EngineBuildError: TensorRT rejects the timing cache or the profile.
    """
    config = builder.create_builder_config()
    if settings.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    if settings.opt_level is not None:
        config.builder_optimization_level = settings.opt_level
    if settings.max_aux_streams is not None:
        config.max_aux_streams = settings.max_aux_streams
    if cache is not None:
        config.set_timing_cache(cache, False)
    elif settings.timing_cache is not None:
        data = settings.timing_cache.read_bytes() if settings.timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        # A cache from another device or version is rejected rather than silently reused.
        if cache is None or not config.set_timing_cache(cache, False):
            raise EngineBuildError(
                f"TensorRT rejected the timing cache {str(settings.timing_cache)!r} "
                "(made by another TensorRT version or GPU?); delete it to start a new one"
            )
    if settings.profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in settings.profiles.items():
            profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
        if config.add_optimization_profile(profile) < 0:
            raise EngineBuildError("TensorRT rejected the optimisation profile")
    return config


def build_serialized(trt: Any, builder: Any, network: Any, config: Any) -> bytes:
    """Build and serialize an engine.

    Raises:
        EngineBuildError: the build failed (TensorRT's log says why).
    """
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError("TensorRT failed to build the engine (its log above says why)")
    return bytes(plan)


def timing_cache_bytes(config: Any) -> bytes:
    """The builder config's timing cache, serialized (to save it for the next build)."""
    return bytes(config.get_timing_cache().serialize())


@dataclass
class BuiltEngine:
    """What :func:`build_onnx_engine` produced."""

    plan: bytes
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    profiles: dict[str, tuple[Shape, Shape, Shape]]
    tensorrt_version: str
    build_s: float


def build_onnx_engine(
    onnx_path: str | os.PathLike,
    settings: BuildSettings | None = None,
    *,
    default_shape: Sequence[int] | None = None,
    verbose: bool = False,
) -> BuiltEngine:
    """Parse an ONNX file and build a serialized, strongly typed engine from it.

    Dynamic inputs take their profile from ``settings.profiles``, else a fixed profile at
    ``default_shape``. When ``settings.timing_cache`` names a file, the cache is read
    from it (if present) and the updated cache written back atomically.

    Raises:
        TensorRTUnavailable: no TensorRT or no GPU.
        EngineBuildError: TensorRT cannot parse or build the model.
        ShapeError: a dynamic input with neither a profile nor a default shape.
    """
    import time

    trt = import_tensorrt()
    gpu_info()
    settings = settings or BuildSettings()
    logger = make_logger(trt, verbose)
    builder = trt.Builder(logger)
    network, parser = parse_onnx(trt, builder, logger, onnx_path)
    inputs, outputs = network_io(trt, network)
    profiles = dict(settings.profiles)
    for t in inputs:
        if -1 in t.shape and t.name not in profiles:
            if default_shape is None:
                raise ShapeError(f"input {t.name!r} is dynamic {t.shape}: give its shape")
            shape = tuple(int(d) for d in default_shape)
            profiles[t.name] = (shape, shape, shape)
    unknown = set(profiles) - {t.name for t in inputs}
    if unknown:
        raise ShapeError(f"the network has no input {sorted(unknown)[0]!r}")
    settings = replace(settings, profiles=profiles)
    config = configure_builder(trt, builder, settings)
    t0 = time.perf_counter()
    plan = build_serialized(trt, builder, network, config)
    build_s = time.perf_counter() - t0
    if settings.timing_cache is not None:
        atomic_write(settings.timing_cache, timing_cache_bytes(config))
    del parser  # owned the weights until the build was done
    return BuiltEngine(plan, inputs, outputs, profiles, trt.__version__, build_s)


# --- the device -----------------------------------------------------------------------


def gpu_info(device: int | None = None) -> dict[str, str]:
    """Name and compute capability of a CUDA GPU, read through torch.

    Raises:
        TensorRTUnavailable: no CUDA GPU is visible.
    """
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT needs an NVIDIA GPU, and no CUDA device is visible")
    index = torch.cuda.current_device() if device is None else device
    major, minor = torch.cuda.get_device_capability(index)
    return {"name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}
