"""INT8 export: a model to an explicitly quantized (Q/DQ) ONNX file, calibrated on the
user's data, with its accuracy and its agreement with the FP32 model.

Steps: the FP32 export of :func:`halp_trt.export.export_onnx` (cleanup, ``onnx.checker``,
parity with PyTorch), then ONNX Runtime's maintained quantizer
(:func:`lut_builder.onnx_export.quantize_qdq`: ``quant_pre_process`` + ``quantize_static``,
QDQ format, per-channel symmetric Int8 weights, MinMax calibration of every activation)
on batches of the data's training split, then checks on the result before it is moved
into place:

- ``onnx.checker`` (full check) and an ONNX Runtime session;
- accuracy of the FP32 and the INT8 model on the data's validation split (both run by
  ONNX Runtime) and their top-1 agreement;
- what ONNX Runtime's CPU provider makes of it: its optimised graph's INT8 kernels
  (``QLinearConv``) against convolutions left in float;
- for the TensorRT flavour, the rules TensorRT's ONNX parser sets for explicit
  quantization, checked statically (:func:`tensorrt_qdq_problems`: opset >= 13, only
  standard-domain ops, Int8 Q/DQ with zero points 0, no Int32 DequantizeLinear). The
  parse itself needs TensorRT and a GPU (``halp-trt engine`` on the file).

Flavours (see :func:`~lut_builder.onnx_export.quantize_qdq`): ``tensorrt`` (default:
symmetric Int8 activations, float bias; TensorRT 10 strongly typed and 11 take it, and
ONNX Runtime runs it, partly in float kernels on x86) and ``onnxruntime`` (UInt8
activations: every conv an INT8 ``QLinearConv`` on ONNX Runtime's CPU provider).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lut_builder.errors import UserError
from lut_builder.fileio import atomic_output
from lut_builder.onnx_export import INT8_FLAVORS, quantize_qdq

from .onnx_export import META_PRECISION, ExportReport, export_onnx, file_sha256

#: ONNX metadata key naming the Q/DQ flavour of an INT8 export.
META_INT8 = "halp_trt.int8"
#: Calibration batches used unless asked otherwise.
CALIBRATION_BATCHES = 16
#: Op domains TensorRT's ONNX parser reads (ONNX Runtime's contrib ops are not among them).
_ONNX_DOMAINS = ("", "ai.onnx")


@dataclass
class Int8Report:
    """What :func:`export_int8` wrote and measured.

    Attributes:
        path: the INT8 ONNX file.
        flavor: ``tensorrt`` or ``onnxruntime``.
        fp32: the FP32 export's report (its file was temporary).
        calibration: ``{"data", "batches", "samples"}``.
        accuracy: ``{"samples", "fp32", "int8", "agreement"}`` on the validation split.
        onnxruntime_ops: op counts (``domain:op``) of ONNX Runtime's optimised graph.
        int8_convs, float_convs: convolutions ONNX Runtime runs as INT8 kernels / in float.
        tensorrt_problems: what TensorRT's parser would refuse (empty: nothing found;
            a TensorRT-flavour export with any is refused).
        size_bytes: ``{"fp32", "int8"}`` file sizes.
    """

    path: str
    flavor: str
    opset: int
    sha256: str
    fp32: dict[str, Any]
    calibration: dict[str, Any]
    accuracy: dict[str, Any]
    onnxruntime_ops: dict[str, int]
    int8_convs: int
    float_convs: int
    tensorrt_problems: list[str]
    size_bytes: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibration_batches(data: Any, batch: int, count: int) -> list[Any]:
    """Up to ``count`` full batches of ``batch`` images from the training split, in order.

    Raises:
        UserError: fewer training images than one batch.
    """
    import torch

    n = len(data.train)
    if n < batch:
        raise UserError(
            f"INT8 calibration needs at least one batch of {batch} images; {data.spec} has "
            f"{n} training images"
        )
    out = []
    for b in range(min(count, n // batch)):
        out.append(torch.stack([data.train[i][0] for i in range(b * batch, (b + 1) * batch)]))
    return out


def check_data_shape(data: Any, input_shape: tuple[int, ...]) -> None:
    """Raise UserError when the data's images are not the model input's ``C,H,W``."""
    if tuple(data.image_shape) != tuple(input_shape[1:]):
        shape = "x".join(str(d) for d in data.image_shape)
        want = "x".join(str(d) for d in input_shape[1:])
        raise UserError(f"--data {data.spec} gives {shape} images; the model takes {want}")


def evaluate_onnx(path: str | os.PathLike, data: Any, batch: int) -> Any:
    """Top-1 predictions of an ONNX classifier on the validation split, and the labels.

    The model may have a static batch: the last batch is padded and the padding ignored.

    Returns:
        ``(predictions, labels)`` as numpy arrays.
    """
    import numpy as np
    import onnxruntime as ort

    from lut_builder.backends.onnxruntime.session import session_options

    sess = ort.InferenceSession(
        str(path), session_options(1, "all"), providers=["CPUExecutionProvider"]
    )
    name = sess.get_inputs()[0].name
    images = np.stack([np.asarray(x, dtype=np.float32) for x, _ in data.val])
    labels = np.asarray([int(y) for _, y in data.val])
    preds = []
    for i in range(0, len(images), batch):
        chunk = images[i : i + batch]
        k = len(chunk)
        if k < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - k, *chunk.shape[1:]), np.float32)])
        logits = sess.run(None, {name: chunk})[0]
        preds.append(np.asarray(logits).reshape(batch, -1)[:k].argmax(axis=1))
    return np.concatenate(preds), labels


def tensorrt_qdq_problems(proto: Any) -> list[str]:
    """What TensorRT's ONNX parser would refuse in an explicitly quantized model.

    Checked without TensorRT: the opset (per-channel DequantizeLinear needs 13), ops of
    other domains (ONNX Runtime's ``QLinear*``/``com.microsoft`` ops), Q/DQ types other
    than Int8 (UInt8 activations), non-zero zero points (TensorRT quantizes
    symmetrically only) and Int32 DequantizeLinear (a quantized bias).

    Returns:
        One line per problem kind (empty: none found).
    """
    from onnx import TensorProto, numpy_helper

    problems = []
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:
        problems.append(f"opset {opset} < 13 (per-channel DequantizeLinear)")
    inits = {i.name: i for i in proto.graph.initializer}
    foreign = sorted({f"{n.domain}:{n.op_type}" for n in proto.graph.node if n.domain not in _ONNX_DOMAINS})  # fmt: skip
    if foreign:
        problems.append(f"ops outside the ONNX domain: {', '.join(foreign)}")
    types, nonzero, int32 = set(), 0, 0
    for n in proto.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is not None:
            types.add(zp.data_type)
            if numpy_helper.to_array(zp).any():
                nonzero += 1
        first = inits.get(n.input[0])
        if n.op_type == "DequantizeLinear" and first is not None:
            int32 += first.data_type == TensorProto.INT32
    bad_types = types - {TensorProto.INT8, TensorProto.INT32}
    if bad_types:
        names = ", ".join(sorted(TensorProto.DataType.Name(t) for t in bad_types))
        problems.append(f"Q/DQ of type {names} (TensorRT quantizes to INT8)")
    if nonzero:
        problems.append(f"{nonzero} Q/DQ nodes with non-zero zero points (TensorRT: symmetric)")
    if int32:
        problems.append(f"{int32} Int32 DequantizeLinear (quantized biases)")
    return problems


def export_int8(
    model: Any,
    input_shape: tuple[int, ...],
    out: str | os.PathLike,
    data: Any,
    *,
    flavor: str = "tensorrt",
    batches: int = CALIBRATION_BATCHES,
    opset: int | None = None,
    exporter: str = "auto",
    dynamic_batch: Any = None,
    seed: int = 0,
) -> Int8Report:
    """Export ``model`` as an INT8 Q/DQ ONNX calibrated on ``data`` (see the module notes).

    Args:
        model: an ``nn.Module`` (not modified).
        input_shape: ``(N, C, H, W)``; calibration batches have N images.
        out: the ``.onnx`` file to write; written only when every step passed.
        data: an :class:`halp_trt.train.ImageData` (training split: calibration;
            validation split: accuracy and agreement).
        flavor: ``"tensorrt"`` or ``"onnxruntime"``.
        batches: calibration batches (at most; fewer when the data has fewer).
        opset, exporter, dynamic_batch, seed: as for :func:`export_onnx` (opset >= 13).

    Returns:
        An :class:`Int8Report`.

    Raises:
        UserError: an unknown flavour, an opset below 13, data whose images are not the
            input's shape, too little data for one batch, an output directory that does
            not exist, or (TensorRT flavour) a model TensorRT's parser would refuse.
        ExportError, ParityError: the FP32 export failed (see :func:`export_onnx`).
    """
    import numpy as np
    import onnx

    from lut_builder.backends.onnxruntime.measurer import optimized_ops

    if flavor not in INT8_FLAVORS:
        raise UserError(f"unknown INT8 flavour {flavor!r}; known: {', '.join(INT8_FLAVORS)}")
    if opset is not None and opset < 13:
        raise UserError(f"INT8 Q/DQ needs opset 13 or newer (per-channel scales), not {opset}")
    if batches < 1:
        raise UserError(f"calibration needs at least 1 batch, not {batches}")
    out = Path(out)
    if not out.parent.is_dir():
        raise UserError(f"the output directory {str(out.parent)!r} does not exist")
    shape = tuple(int(d) for d in input_shape)
    check_data_shape(data, shape)
    calib = calibration_batches(data, shape[0], batches)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fp32_path = tmpdir / "fp32.onnx"
        fp32 = export_onnx(
            model,
            shape,
            fp32_path,
            opset=opset,
            exporter=exporter,
            dynamic_batch=dynamic_batch,
            seed=seed,
        )
        int8_path = quantize_qdq(fp32_path, tmpdir / "int8.onnx", calib, flavor=flavor)
        proto = onnx.load(str(int8_path))
        meta = {p.key: p.value for p in proto.metadata_props}
        meta.update({META_PRECISION: "int8", META_INT8: flavor})
        del proto.metadata_props[:]
        for k, v in sorted(meta.items()):
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.save(proto, str(int8_path))
        onnx.checker.check_model(str(int8_path), full_check=True)
        p32, labels = evaluate_onnx(fp32_path, data, shape[0])
        p8, _ = evaluate_onnx(int8_path, data, shape[0])
        ops = optimized_ops(str(int8_path))
        report = Int8Report(
            path=str(out),
            flavor=flavor,
            opset=fp32.opset,
            sha256=file_sha256(int8_path),
            fp32=_fp32_summary(fp32),
            calibration={
                "data": data.spec,
                "batches": len(calib),
                "samples": len(calib) * shape[0],
            },  # fmt: skip
            accuracy={
                "samples": int(labels.size),
                "fp32": float(np.mean(p32 == labels)),
                "int8": float(np.mean(p8 == labels)),
                "agreement": float(np.mean(p8 == p32)),
            },
            onnxruntime_ops=ops,
            int8_convs=ops.get("com.microsoft:QLinearConv", 0) + ops.get(":ConvInteger", 0),
            float_convs=ops.get(":Conv", 0) + ops.get("com.microsoft:FusedConv", 0),
            tensorrt_problems=tensorrt_qdq_problems(proto),
            size_bytes={"fp32": fp32_path.stat().st_size, "int8": int8_path.stat().st_size},
        )
        if flavor == "tensorrt" and report.tensorrt_problems:
            raise UserError(
                f"the INT8 model has what TensorRT refuses: {'; '.join(report.tensorrt_problems)}"
                f"; {out} was not written"
            )
        with atomic_output(out) as final:
            shutil.copyfile(int8_path, final)
        return report
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _fp32_summary(report: ExportReport) -> dict[str, Any]:
    d = report.to_dict()
    parity = d.get("parity") or {}
    return {
        "exporter": d["exporter"],
        "opset": d["opset"],
        "nodes": d["nodes"],
        "parity_passed": parity.get("passed") if parity else None,
    }
