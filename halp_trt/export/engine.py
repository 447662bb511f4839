"""Build a TensorRT engine from an ONNX file: ``model.engine`` plus ``model.engine.json``.

Everything that can be decided without TensorRT is decided first, from the ONNX file
itself: that it is one, its inputs, its precision (from its tensor types: the network
is strongly typed on TensorRT 10 and 11 alike, so an FP16 ONNX gives an FP16 engine), and
the optimisation profile. A dynamic batch axis takes ``--batch MIN:OPT:MAX``, else the
range ``halp-trt export --dynamic-batch`` stored in the file; a static model needs no
profile, and a ``--batch`` that contradicts its fixed batch is an error. Only then is
TensorRT asked to build
(:func:`lut_builder.backends.tensorrt.trt_compat.build_onnx_engine`).

The engine and its sidecar are written atomically: a failed or interrupted build
leaves no ``.engine`` (and an older one at the same path untouched).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lut_builder.errors import ShapeError, UserError
from lut_builder.fileio import atomic_write, input_file

from .onnx_export import META_BATCH, BatchRange, file_sha256, onnx_io
from .sidecar import EngineSidecar, sha256_bytes, sidecar_path, utc_now

Shape = tuple[int, ...]


def read_onnx(path: str | os.PathLike) -> Any:
    """Load an ONNX model's graph (without external weights) as a ``ModelProto``.

    Raises:
        UserError: a missing file, or one that is not an ONNX model.
    """
    import onnx

    path = input_file(path, "ONNX file", kind="an ONNX model")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UserError(f"{str(path)!r} is not an ONNX model: {type(exc).__name__}") from None
    if not proto.graph.node or not proto.graph.output:
        raise UserError(f"{str(path)!r} is not an ONNX model (no graph)")
    return proto


def graph_inputs(proto: Any) -> list[dict[str, Any]]:
    """The real inputs of a graph (initializers listed as inputs by old exporters dropped)."""
    inits = {i.name for i in proto.graph.initializer}
    return [t for t in onnx_io(proto.graph.input) if t["name"] not in inits]


def onnx_precision(proto: Any) -> str:
    """``int8`` for explicit quantization (Q/DQ nodes), else ``fp32``, ``fp16``, ``bf16``
    or ``mixed``: the float type of inputs and weights."""
    import onnx

    if any(n.op_type == "QuantizeLinear" for n in proto.graph.node):
        return "int8"

    names = {
        onnx.TensorProto.FLOAT: "fp32",
        onnx.TensorProto.FLOAT16: "fp16",
        onnx.TensorProto.BFLOAT16: "bf16",
    }
    seen = {names[i.data_type] for i in proto.graph.initializer if i.data_type in names}
    seen |= {
        names[v.type.tensor_type.elem_type]
        for v in proto.graph.input
        if v.type.tensor_type.elem_type in names
    }
    if len(seen) == 1:
        return seen.pop()
    return "mixed" if seen else "fp32"


def onnx_metadata(proto: Any) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict."""
    return {p.key: p.value for p in proto.metadata_props}


def resolve_profiles(
    inputs: Sequence[Mapping[str, Any]],
    batch: BatchRange | None,
    stored: BatchRange | None = None,
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """The optimisation profile of each input; pure logic, no TensorRT.

    Args:
        inputs: ``{"name", "shape"}`` per input; ``-1`` marks a dynamic dimension.
        batch: the user's ``--batch``, or None.
        stored: the batch range recorded in the ONNX file, or None.

    Returns:
        Input name -> (min, opt, max) shapes, for inputs with a dynamic batch; empty for
        a static model.

    Raises:
        ShapeError: a dynamic dimension other than the batch, a dynamic batch with no
            range, or a ``--batch`` that a fixed batch contradicts.
    """
    profiles: dict[str, tuple[Shape, Shape, Shape]] = {}
    for t in inputs:
        name, shape = t["name"], tuple(int(d) for d in t["shape"])
        if not shape:
            continue
        if any(d < 1 for d in shape[1:]):
            raise ShapeError(
                f"input {name!r} has a dynamic dimension besides the batch {shape}; only the "
                "batch axis (dimension 0) may be dynamic"
            )
        if shape[0] >= 1:
            if batch is not None and (batch.min, batch.opt, batch.max) != (shape[0],) * 3:
                raise ShapeError(
                    f"input {name!r} has the fixed batch {shape[0]}, so --batch {batch} cannot "
                    "apply; export with --dynamic-batch for a batch range"
                )
            continue
        rng = batch or stored
        if rng is None:
            raise ShapeError(
                f"input {name!r} has a dynamic batch {shape}: give --batch MIN:OPT:MAX"
            )
        rest = shape[1:]
        profiles[name] = ((rng.min, *rest), (rng.opt, *rest), (rng.max, *rest))
    return profiles


def plan_build(
    onnx_path: str | os.PathLike,
    *,
    batch: BatchRange | None = None,
    workspace_gib: float | None = None,
    opt_level: int | None = None,
    timing_cache: str | os.PathLike | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Everything decided before TensorRT: the ONNX file, settings and its description.

    Returns:
        ``(onnx proto, trt_compat.BuildSettings, facts)`` where facts holds ``inputs``,
        ``outputs``, ``precision`` and ``onnx`` (path, sha256).

    Raises:
        UserError, ShapeError: see :func:`read_onnx`, :func:`resolve_profiles` and
            :class:`lut_builder.backends.tensorrt.trt_compat.BuildSettings`.
    """
    from lut_builder.backends.tensorrt.trt_compat import BuildSettings

    proto = read_onnx(onnx_path)
    inputs = graph_inputs(proto)
    stored = onnx_metadata(proto).get(META_BATCH)
    stored_range = None
    if stored:
        try:
            stored_range = BatchRange.parse(stored)
        except ShapeError:
            stored_range = None  # a hand-edited value; --batch can still supply one
    profiles = resolve_profiles(inputs, batch, stored_range)
    settings = BuildSettings(
        workspace_gib=workspace_gib,
        opt_level=opt_level,
        timing_cache=Path(timing_cache) if timing_cache else None,
        profiles=profiles,
    )
    for t in inputs:
        p = profiles.get(t["name"])
        t["profile"] = {"min": list(p[0]), "opt": list(p[1]), "max": list(p[2])} if p else None
    facts = {
        "inputs": inputs,
        "outputs": onnx_io(proto.graph.output),
        "precision": onnx_precision(proto),
        "onnx": {"path": str(onnx_path), "sha256": file_sha256(onnx_path)},
    }
    return proto, settings, facts


def build_engine(
    onnx_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    batch: BatchRange | None = None,
    workspace_gib: float | None = None,
    opt_level: int | None = None,
    timing_cache: str | os.PathLike | None = None,
    verbose: bool = False,
) -> EngineSidecar:
    """Build ``out`` (a serialized engine) and ``out.json`` (its sidecar) from an ONNX file.

    Args:
        onnx_path: the model.
        out: the ``.engine`` file to write.
        batch: optimisation profile of a dynamic batch (default: the range stored by
            ``halp-trt export``).
        workspace_gib: builder workspace limit in GiB.
        opt_level: builder optimisation level 0-5.
        timing_cache: a timing cache file to reuse and update.
        verbose: TensorRT's verbose log.

    Returns:
        The sidecar written beside the engine.

    Raises:
        UserError: a bad ONNX file, shapes or settings (before TensorRT is needed), no
            TensorRT or GPU (``TensorRTUnavailable``), or a failed build.
    """
    from lut_builder.backends.tensorrt import trt_compat

    out = Path(out)
    if not out.parent.is_dir():
        raise UserError(f"the output directory {str(out.parent)!r} does not exist")
    _, settings, facts = plan_build(
        onnx_path,
        batch=batch,
        workspace_gib=workspace_gib,
        opt_level=opt_level,
        timing_cache=timing_cache,
    )
    built = trt_compat.build_onnx_engine(onnx_path, settings, verbose=verbose)
    names = {t["name"] for t in facts["inputs"]}
    if names != {t.name for t in built.inputs}:
        raise UserError("TensorRT's network inputs differ from the ONNX graph's")
    outputs = {t.name: t for t in built.outputs}
    for t in facts["outputs"]:
        if t["name"] in outputs:
            t["dtype"] = outputs[t["name"]].dtype
    sidecar = EngineSidecar(
        engine_sha256=sha256_bytes(built.plan),
        onnx=facts["onnx"],
        inputs=facts["inputs"],
        outputs=facts["outputs"],
        precision=facts["precision"],
        tensorrt=built.tensorrt_version,
        gpu=trt_compat.gpu_info(),
        build={
            "created": utc_now(),
            "build_s": round(built.build_s, 3),
            "workspace_gib": workspace_gib,
            "opt_level": opt_level,
            "timing_cache": str(timing_cache) if timing_cache else None,
        },
    )
    atomic_write(out, built.plan)
    try:
        sidecar.write(sidecar_path(out))
    except BaseException:
        out.unlink(missing_ok=True)  # an engine without its sidecar could not be checked
        raise
    return sidecar
