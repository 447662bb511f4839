"""The engine sidecar: ``model.engine.json`` beside ``model.engine``.

A serialized TensorRT engine runs only on the TensorRT version that built it and on GPUs
of the compute capability it was built for, and says nothing readable about itself. The
sidecar records what a user and this tool need before deserialising one: input and
output names, shapes and profile, precision, TensorRT version, GPU name and compute
capability, the source ONNX file's SHA-256, the engine's own SHA-256 (a stale sidecar is
caught), build time and settings, and room for predicted and measured latency.

:func:`load_engine` checks the sidecar against the engine file and against this
machine's TensorRT and GPU before handing the bytes to TensorRT.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lut_builder.errors import UserError
from lut_builder.fileio import atomic_write_json, input_file

FORMAT = 1


class EngineMismatch(UserError):
    """An engine built for another TensorRT version or GPU, or a sidecar that is stale."""


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


@dataclass
class EngineSidecar:
    """Metadata of one serialized engine; checks itself and round-trips JSON.

    Attributes:
        engine_sha256: hash of the ``.engine`` file.
        onnx: ``{"path", "sha256"}`` of the source ONNX file.
        inputs: ``{"name", "shape", "dtype", "profile": {"min", "opt", "max"} | None}``
            per input (``-1`` marks a dynamic dimension).
        outputs: ``{"name", "shape", "dtype"}`` per output.
        precision: ``fp32``, ``fp16``, ``bf16``, ``mixed`` (from the ONNX types) or ``int8``
            (an explicitly quantized, Q/DQ, ONNX).
        tensorrt: version of the TensorRT that built the engine.
        gpu: ``{"name", "compute_capability"}`` of the GPU it was built on.
        build: ``{"created", "build_s", ...settings}``.
        latency: ``{"predicted_ms", "measured_ms"}``, filled in by later steps.
        halp_trt: version of this tool.
    """

    engine_sha256: str
    onnx: dict[str, str]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    precision: str
    tensorrt: str
    gpu: dict[str, str]
    build: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, float | None] = field(
        default_factory=lambda: {"predicted_ms": None, "measured_ms": None}
    )
    halp_trt: str = ""
    format: int = FORMAT

    def __post_init__(self) -> None:
        if self.format != FORMAT:
            raise UserError(f"engine sidecar format {self.format} is not {FORMAT}")
        if not self.inputs or not self.outputs:
            raise UserError("an engine sidecar needs inputs and outputs")
        for t in [*self.inputs, *self.outputs]:
            if not isinstance(t, dict) or not {"name", "shape", "dtype"} <= set(t):
                raise UserError("every engine tensor needs a name, shape and dtype")
        if not {"name", "compute_capability"} <= set(self.gpu):
            raise UserError("the sidecar's gpu needs a name and a compute_capability")
        if len(self.engine_sha256) != 64:
            raise UserError("the sidecar's engine_sha256 is not a SHA-256")
        if not self.halp_trt:
            from .._version import __version__

            self.halp_trt = __version__

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineSidecar:
        """Inverse of :meth:`to_dict`.

        Raises:
            UserError: missing or malformed fields.
        """
        try:
            return cls(**d)
        except TypeError as exc:
            raise UserError(f"malformed engine sidecar: {exc}") from None

    def write(self, path: str | os.PathLike) -> None:
        """Write the JSON atomically (temporary file beside it, then rename)."""
        atomic_write_json(path, self.to_dict(), indent=2)

    @classmethod
    def read(cls, path: str | os.PathLike) -> EngineSidecar:
        """Read a sidecar file.

        Raises:
            UserError: missing, not JSON, or malformed.
        """
        path = input_file(path, "engine sidecar")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"engine sidecar {str(path)!r} is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise UserError(f"engine sidecar {str(path)!r} is not a JSON object")
        return cls.from_dict(data)

    def mismatches(self, *, tensorrt: str, gpu: dict[str, str]) -> list[str]:
        """Why this engine cannot run with the given TensorRT version and GPU (empty: it can).

        TensorRT engines are tied to the exact TensorRT version, and tactics to the GPU:
        a different compute capability cannot load the engine at all, and a different
        GPU model of the same capability runs it with tactics timed elsewhere.
        """
        why = []
        if self.tensorrt != tensorrt:
            why.append(f"built with TensorRT {self.tensorrt}, this is TensorRT {tensorrt}")
        if self.gpu.get("compute_capability") != gpu.get("compute_capability"):
            why.append(
                f"built for compute capability {self.gpu.get('compute_capability')} "
                f"({self.gpu.get('name')}), this GPU is {gpu.get('compute_capability')} "
                f"({gpu.get('name')})"
            )
        elif self.gpu.get("name") != gpu.get("name"):
            why.append(f"built on a {self.gpu.get('name')}, this GPU is a {gpu.get('name')}")
        return why


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def check_engine(
    engine_path: str | os.PathLike,
    data: bytes,
    sidecar: EngineSidecar,
    *,
    tensorrt: str,
    gpu: dict[str, str],
    force: bool = False,
) -> None:
    """Check an engine's bytes and sidecar against each other and against this machine.

    Raises:
        EngineMismatch: the sidecar describes another file, or the engine was built for
            another TensorRT version or GPU (unless ``force``).
    """
    if sha256_bytes(data) != sidecar.engine_sha256:
        raise EngineMismatch(
            f"{sidecar_path(engine_path)} does not describe {engine_path} (hash differs): "
            "rebuild the engine or restore its sidecar"
        )
    why = sidecar.mismatches(tensorrt=tensorrt, gpu=gpu)
    if why and not force:
        raise EngineMismatch(
            f"{engine_path} cannot run here: {'; '.join(why)}; rebuild it on this machine with "
            "halp-trt engine"
        )


def load_engine(
    engine_path: str | os.PathLike, *, force: bool = False
) -> tuple[bytes, EngineSidecar]:
    """Read an engine and its sidecar, checked before TensorRT ever sees the bytes.

    Args:
        engine_path: the ``.engine`` file; ``<engine>.json`` must sit beside it.
        force: load an engine built for another TensorRT version or GPU anyway.

    Returns:
        ``(engine bytes, sidecar)``.

    Raises:
        UserError: a missing engine or sidecar.
        TensorRTUnavailable: no TensorRT or no GPU here.
        EngineMismatch: see :func:`check_engine`.
    """
    from lut_builder.backends.tensorrt import trt_compat

    path = input_file(engine_path, "engine")
    sidecar = EngineSidecar.read(sidecar_path(path))
    data = path.read_bytes()
    check_engine(
        path,
        data,
        sidecar,
        tensorrt=trt_compat.tensorrt_version(),
        gpu=trt_compat.gpu_info(),
        force=force,
    )
    return data, sidecar
