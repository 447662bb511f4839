"""The one ONNX export path of the project: ``torch.onnx.export`` with a fallback.

Everything that turns an ``nn.Module`` into an ONNX file goes through
:func:`run_exporters`: the whole-model runners of ONNX Runtime and TensorRT (through
:func:`export_onnx`) and ``halp-trt export`` (:func:`halp_trt.export.export_onnx`, which
adds graph cleanup, ``onnx.checker``, the parity check and a report on top, and keeps
its own file handling).

Exporter: ``auto`` tries the TorchScript-based exporter first
(``torch.onnx.export(..., dynamo=False)``), then the dynamo (``torch.export``) one. On
torch 2.13 the TorchScript exporter exports a CIFAR ResNet-56 in about 1.3-2 s on a
2-core machine and folds eval-mode BatchNorm into the convolutions itself, where the
dynamo exporter takes 12-22 s for the same model. It is deprecated upstream, so a model
it cannot export (or a torch without it) falls through to dynamo.

INT8: :func:`quantize_qdq` turns an exported FP32 file into an explicitly quantized
(Q/DQ) one with ONNX Runtime's quantizer, for the INT8 whole-model runners and
``halp-trt export --int8``.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import ExportError, UserError, interrupted
from .fileio import atomic_output

EXPORTERS = ("auto", "torchscript", "dynamo")
#: Opset of the TorchScript exporter when none is asked for; dynamo emits at least 18.
DEFAULT_OPSET = 17
#: Opsets each exporter writes (torch 2.13: TorchScript 7-20, dynamo 18-23).
OPSETS = {"torchscript": (7, 20), "dynamo": (18, 23)}


def check_opset(opset: int | None, exporter: str = "auto") -> None:
    """Refuse an opset the chosen exporter cannot write, before anything is exported.

    Raises:
        UserError: naming the opsets that exporter (or, for ``auto``, either) writes.
    """
    if opset is None:
        return
    names = ("torchscript", "dynamo") if exporter == "auto" else (exporter,)
    ok = not isinstance(opset, bool) and isinstance(opset, int)
    if ok and any(OPSETS[e][0] <= opset <= OPSETS[e][1] for e in names):
        return
    each = ", ".join(f"{e} {OPSETS[e][0]}-{OPSETS[e][1]}" for e in names)
    lo, hi = min(OPSETS[e][0] for e in names), max(OPSETS[e][1] for e in names)
    raise UserError(f"--opset must be in {lo}-{hi} ({each}), not {opset!r}")


def export_onnx(
    model: Any, example_input: Any, path: str | os.PathLike, *, opset: int | None = None
) -> Path:
    """Export an ``nn.Module`` to ONNX for inference (eval mode, BatchNorm folded).

    The input is named ``input``; the file is written atomically, so a failed export
    leaves nothing behind.

    Args:
        model: the module; it is exported in eval mode and its mode restored afterwards.
        example_input: a tensor of the input shape.
        path: the ``.onnx`` file to write.
        opset: ONNX opset; None: 17 from the TorchScript exporter, 18 from dynamo.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ExportError: neither exporter can export the model.
    """
    path = Path(path)
    with atomic_output(path) as tmp:
        run_exporters(model, example_input, tmp, opset=opset)
    return path


def run_exporters(
    model: Any,
    example_input: Any,
    path: Path,
    *,
    output_names: Sequence[str] | None = None,
    dynamic_batch: tuple[int, int] | None = None,
    opset: int | None = None,
    exporter: str = "auto",
) -> tuple[str, list[str]]:
    """Write ``model`` to ``path`` with the first exporter that can export it.

    Args:
        model: the module, exported in eval mode (its mode is restored afterwards).
        example_input: a tensor of the input shape (the graph input is named ``input``).
        path: the file to write (not atomically: callers write to a temporary path).
        output_names: names of the graph outputs, or None for the exporter's own.
        dynamic_batch: ``(min, max)`` of a dynamic batch axis, or None for a fixed one.
        opset: the ONNX opset to write; None: 17 from TorchScript, 18 from dynamo. An
            opset asked for is written or the export fails: ``auto`` tries only the
            exporters that write it, never substituting another opset.
        exporter: ``"auto"`` (TorchScript, then dynamo), ``"torchscript"`` or
            ``"dynamo"``.

    Returns:
        ``(exporter used, notes)``: a note says why ``auto`` fell back to dynamo.

    Raises:
        UserError: an unknown exporter, or an opset it cannot write.
        ExportError: no exporter could export the model (each one's error is quoted).
    """
    if exporter not in EXPORTERS:
        raise UserError(f"unknown exporter {exporter!r}; known: {', '.join(EXPORTERS)}")
    check_opset(opset, exporter)
    order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    if opset is not None:
        order = [e for e in order if OPSETS[e][0] <= opset <= OPSETS[e][1]]
    names = list(output_names) if output_names is not None else None
    errors, notes = [], []
    was_training = model.training
    model.eval()
    try:
        for name in order:
            try:
                if name == "torchscript":
                    version = DEFAULT_OPSET if opset is None else opset
                    _export_torchscript(model, example_input, path, names, dynamic_batch, version)
                else:
                    version = 18 if opset is None else opset
                    _export_dynamo(model, example_input, path, names, dynamic_batch, version)
                if errors:
                    notes.append(f"fell back to the {name} exporter after: {errors[-1]}")
                return name, notes
            except Exception as exc:  # any exporter failure: say why, try the next one
                if interrupted():  # Ctrl-C caught and re-raised as the exporter's own error
                    raise KeyboardInterrupt from exc
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                errors.append(f"{name}: {type(exc).__name__}: {first}"[:300])
    finally:
        model.train(was_training)
    skipped = [e for e in EXPORTERS[1:] if e not in order and exporter == "auto"]
    why = "".join(
        f"; the {e} exporter writes opsets {OPSETS[e][0]}-{OPSETS[e][1]} only" for e in skipped
    )
    raise ExportError(f"cannot export the model to ONNX ({'; '.join(errors)}{why})")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No gradients, no warnings, nothing on stdout: the exporters warn on every call and
    print their whole IR graph when they fail (the error itself is reported)."""
    import warnings

    import torch

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        yield


def _export_torchscript(
    model: Any,
    x: Any,
    path: Path,
    output_names: list[str] | None,
    dyn: tuple[int, int] | None,
    opset: int,
) -> None:
    import torch

    axes = None
    if dyn is not None:
        axes = {n: {0: "batch"} for n in ["input", *(output_names or [])]}
    with _quiet():
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=output_names,
            dynamic_axes=axes,
            do_constant_folding=True,
        )


def _export_dynamo(
    model: Any,
    x: Any,
    path: Path,
    output_names: list[str] | None,
    dyn: tuple[int, int] | None,
    opset: int,
) -> None:
    import logging

    import torch

    shapes = None
    if dyn is not None:
        lo, hi = dyn
        # torch.export specialises a dimension whose example size is 1, so trace a
        # dynamic batch with at least 2 samples.
        if x.shape[0] == 1 and hi >= 2:
            x = x.expand(2, *x.shape[1:]).contiguous()
        shapes = ({0: torch.export.Dim("batch", min=lo, max=hi)},)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with _quiet():
        program = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            opset_version=opset,
            input_names=["input"],
            output_names=output_names,
            dynamic_shapes=shapes,
            verbose=False,
        )
        program.save(str(path))


#: Q/DQ flavours of :func:`quantize_qdq`, by the engine that runs the model.
INT8_FLAVORS = ("onnxruntime", "tensorrt")


def quantize_qdq(
    fp32_path: str | os.PathLike,
    out: str | os.PathLike,
    batches: Iterable[Any],
    *,
    flavor: str = "tensorrt",
    input_name: str = "input",
) -> Path:
    """Quantize an FP32 ONNX model to INT8 Q/DQ, calibrated on ``batches``.

    The maintained quantizer does the work: ``onnxruntime.quantization.quant_pre_process``
    (shape inference, constant folding: a bias computed by a node is not quantized
    otherwise) and ``quantize_static`` (QDQ format, per-channel symmetric Int8 weights,
    MinMax calibration of every activation). The flavour picks what the engine that
    runs the file needs:

    - ``"tensorrt"``: symmetric Int8 activations (zero points 0), float biases: the
      explicit quantization TensorRT 10 (strongly typed) and 11 take; ONNX Runtime runs
      it too, but fuses only part of it into INT8 kernels on x86.
    - ``"onnxruntime"``: UInt8 activations with zero points, Int32 biases: ONNX
      Runtime's CPU provider fuses every conv into ``QLinearConv``; TensorRT rejects
      non-zero zero points.

    Args:
        fp32_path: the FP32 model (opset >= 13).
        out: the Q/DQ model to write (atomically).
        batches: calibration inputs, numpy arrays or tensors of the model's input shape.
        flavor: ``"tensorrt"`` or ``"onnxruntime"``.
        input_name: the model's input.

    Returns:
        ``out`` as a Path.

    Raises:
        UserError: an unknown flavour, or no calibration batch.
        ExportError: the quantizer fails.
    """
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if flavor not in INT8_FLAVORS:
        raise UserError(f"unknown INT8 flavour {flavor!r}; known: {', '.join(INT8_FLAVORS)}")
    feeds = [{input_name: _as_float_array(b)} for b in batches]
    if not feeds:
        raise UserError("INT8 calibration needs at least one batch of data")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._it, None)

    trt = flavor == "tensorrt"
    options = {"WeightSymmetric": True, "ActivationSymmetric": trt, "QuantizeBias": not trt}
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="qdq-") as tmp, _quiet_quantizer():
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre))
            with atomic_output(out) as final:
                quantize_static(
                    str(pre),
                    str(final),
                    Reader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QInt8 if trt else QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    extra_options=options,
                )
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as exc:  # the quantizer's own failures, in one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ExportError(f"INT8 quantization failed: {type(exc).__name__}: {first}") from exc
    return out


def _as_float_array(x: Any) -> Any:
    import numpy as np

    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantizer logs advice (pre-processing, bias) through the root logger."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
