"""Export a PyTorch CNN to ONNX for deployment, checked end to end.

Steps: ``torch.onnx.export`` (eval mode, one input named ``input``, outputs ``output`` or
``output0``, ``output1``, ..., optionally a dynamic batch axis), onnx-graphsurgeon
constant folding, cleanup and topological sort, ``onnx.checker`` (full check, with shape
inference), then the parity check of :mod:`halp_trt.export.parity`. The file is written
beside the target and moved into place only when every step passed, so a failed export
leaves nothing behind.

Exporter: the project's one export path, :func:`lut_builder.onnx_export.run_exporters`
(also what lut-builder's whole-model runners use): ``auto`` tries the TorchScript-based
exporter first, then the dynamo (``torch.export``) one. On torch 2.13 both export the
repository's CNNs with a dynamic batch axis; the TorchScript one takes about 2 s for a
CIFAR ResNet-56 where dynamo takes 13-20 s on a 2-core machine, and it folds eval-mode
BatchNorm into the convolutions itself. ``--exporter`` picks one explicitly. This module
adds what a deployment export needs on top: cleanup, checks, parity, metadata, a report.

FP16: the module and its example input are cast to half precision before export, so
every weight and activation of the ONNX graph is fp16. That is how TensorRT 11, whose
networks are always strongly typed, builds an FP16 engine (TensorRT 10 does the same
with a strongly typed network, as :mod:`lut_builder.backends.tensorrt.trt_compat` builds
them).

The batch range of a dynamic export is stored in the ONNX metadata
(``halp_trt.batch`` = ``MIN:OPT:MAX``), where ``halp-trt engine`` finds its default
optimisation profile.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lut_builder.errors import ExportError, ShapeError, UserError
from lut_builder.fileio import atomic_output
from lut_builder.onnx_export import EXPORTERS, check_opset, run_exporters
from lut_builder.specs import random_input

from .parity import ParityError, ParityReport, check_parity, flatten_outputs

PRECISIONS = ("fp32", "fp16")
#: ONNX metadata keys written by the exporter.
META_BATCH = "halp_trt.batch"
META_PRECISION = "halp_trt.precision"


@dataclass(frozen=True)
class BatchRange:
    """A dynamic batch range ``MIN:OPT:MAX`` (TensorRT's optimisation profile)."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not (1 <= self.min <= self.opt <= self.max):
            raise ShapeError(f"a batch range needs 1 <= MIN <= OPT <= MAX, not {self}")

    @classmethod
    def parse(cls, text: str) -> BatchRange:
        """``"1:8:32"`` -> ``BatchRange(1, 8, 32)``; ``"8"`` -> ``BatchRange(8, 8, 8)``.

        Raises:
            ShapeError: not one or three positive integers in order.
        """
        parts = [p.strip() for p in str(text).split(":")]
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise ShapeError(f"batch range {text!r} is not MIN:OPT:MAX like 1:8:32") from None
        if len(nums) == 1:
            nums = nums * 3
        if len(nums) != 3:
            raise ShapeError(f"batch range {text!r} is not MIN:OPT:MAX like 1:8:32")
        return cls(*nums)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and checked."""

    path: str
    exporter: str
    opset: int
    precision: str
    input_shape: list[int]
    dynamic_batch: str | None
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    nodes: int
    sha256: str
    export_s: float
    parity: ParityReport | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["parity"] = self.parity.to_dict() if self.parity else None
        return d


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_onnx(
    model: Any,
    input_shape: tuple[int, ...],
    out: str | os.PathLike,
    *,
    dynamic_batch: BatchRange | None = None,
    fp16: bool = False,
    opset: int | None = None,
    exporter: str = "auto",
    parity: bool = True,
    seed: int = 0,
) -> ExportReport:
    """Export ``model`` to ``out`` and check it (see the module notes).

    Args:
        model: an ``nn.Module``; it is not modified (a copy is exported).
        input_shape: ``(N, C, H, W)`` (or any shape whose first dimension is the batch).
        out: the ``.onnx`` file to write.
        dynamic_batch: make the batch axis dynamic over this range (N must lie in it).
        fp16: export in half precision.
        opset: the ONNX opset to write, or None (17 from TorchScript, 18 from dynamo);
            an opset asked for is written or the export fails, never substituted.
        exporter: ``"auto"``, ``"torchscript"`` or ``"dynamo"``.
        parity: run the ONNX Runtime vs PyTorch parity check.
        seed: seed of the example and parity inputs.

    Returns:
        An :class:`ExportReport`.

    Raises:
        ShapeError: the model does not take ``input_shape``, or N is outside the range.
        ExportError: no exporter can export the model, or the result is not valid ONNX.
        ParityError: ONNX Runtime's outputs differ from PyTorch's beyond the tolerance
            (exit code 1; nothing is written).
        UserError: a bad option or an output directory that does not exist.
    """
    import torch

    if exporter not in EXPORTERS:
        raise UserError(f"unknown exporter {exporter!r}; known: {', '.join(EXPORTERS)}")
    check_opset(opset, exporter)
    out = Path(out)
    if not out.parent.is_dir():
        raise UserError(f"the output directory {str(out.parent)!r} does not exist")
    shape = tuple(int(d) for d in input_shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ShapeError(f"input shape {shape} needs a batch and at least one more dimension")
    if dynamic_batch is not None and not dynamic_batch.min <= shape[0] <= dynamic_batch.max:
        raise ShapeError(
            f"batch {shape[0]} of the input shape is outside --dynamic-batch {dynamic_batch}"
        )
    precision = "fp16" if fp16 else "fp32"

    reference = copy.deepcopy(model).float().eval()
    torch.manual_seed(seed)
    x = random_input(shape)
    try:
        with torch.no_grad():
            n_out = len(flatten_outputs(reference(x)))
    except Exception as exc:
        raise ShapeError(
            f"the model does not accept an input of shape {shape}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    if n_out == 0:
        raise ExportError("the model returns no tensors")
    output_names = ["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
    exported = copy.deepcopy(reference)
    if fp16:
        exported, x = exported.half(), x.half()

    start = time.perf_counter()
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        raw = tmpdir / "raw.onnx"
        used, notes = run_exporters(
            exported,
            x,
            raw,
            output_names=output_names,
            dynamic_batch=(dynamic_batch.min, dynamic_batch.max) if dynamic_batch else None,
            opset=opset,
            exporter=exporter,
        )
        model_proto = _clean(raw, dynamic_batch, precision)
        with atomic_output(out) as final:
            _save_and_check(model_proto, final)
            export_s = time.perf_counter() - start
            report_parity = None
            if parity:
                batches = sorted(
                    {shape[0]}
                    | ({dynamic_batch.min, dynamic_batch.max} if dynamic_batch else set())
                )
                report_parity = check_parity(
                    final, reference, batches=batches, precision=precision, seed=seed
                )
            report = _describe(final, out, used, precision, shape, dynamic_batch, export_s)
            report.parity = report_parity
            report.notes = notes
            if report_parity is not None and not report_parity.passed:
                raise ParityError(f"{report_parity.summary()}; {out} was not written")
        return report
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _clean(raw: Path, dyn: BatchRange | None, precision: str) -> Any:
    """Fold constants, drop dead nodes, sort; record batch range and precision."""
    import onnx
    import onnx_graphsurgeon as gs

    proto = onnx.load(str(raw))
    graph = gs.import_onnx(proto)
    graph.fold_constants().cleanup().toposort()
    cleaned = gs.export_onnx(graph)
    # graphsurgeon may raise the IR version to the onnx package's newest; keep the
    # exporter's, which the ONNX Runtime and TensorRT parsers of the day read.
    cleaned.ir_version = proto.ir_version
    del cleaned.opset_import[:]
    cleaned.opset_import.extend(proto.opset_import)
    cleaned.producer_name = proto.producer_name
    cleaned.producer_version = proto.producer_version
    meta = {p.key: p.value for p in proto.metadata_props}
    meta[META_PRECISION] = precision
    if dyn is not None:
        meta[META_BATCH] = str(dyn)
    del cleaned.metadata_props[:]
    for k, v in sorted(meta.items()):
        entry = cleaned.metadata_props.add()
        entry.key, entry.value = k, v
    return cleaned


def _save_and_check(proto: Any, path: Path) -> None:
    import onnx

    onnx.save(proto, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported graph is not valid ONNX: {exc}") from exc


def _describe(
    path: Path,
    out: Path,
    exporter: str,
    precision: str,
    shape: tuple[int, ...],
    dyn: BatchRange | None,
    export_s: float,
) -> ExportReport:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return ExportReport(
        path=str(out),
        exporter=exporter,
        opset=opset,
        precision=precision,
        input_shape=list(shape),
        dynamic_batch=str(dyn) if dyn else None,
        inputs=onnx_io(proto.graph.input),
        outputs=onnx_io(proto.graph.output),
        nodes=len(proto.graph.node),
        sha256=file_sha256(path),
        export_s=round(export_s, 3),
    )


def onnx_io(values: Any) -> list[dict[str, Any]]:
    """Name, shape (``-1`` for symbolic dimensions) and dtype of ONNX graph inputs/outputs."""
    import onnx

    out = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "?"
        out.append({"name": v.name, "shape": dims, "dtype": dtype})
    return out
