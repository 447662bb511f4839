"""ONNX Runtime on CPU, whole models: an ``nn.Module`` or an ``.onnx`` file.

One intra-op thread by default: on a small shared machine a single thread gives far
steadier timings than a thread pool whose workers compete with other processes.

``precision="int8"`` runs the model as an INT8 Q/DQ model: a module is exported, then
quantized by :func:`lut_builder.onnx_export.quantize_qdq` in the ONNX Runtime flavour
(UInt8 activations, per-channel Int8 weights: every conv fused into ``QLinearConv``),
calibrated on the example input (the calibration's scales do not change how fast the
kernels run); a file must already be a Q/DQ model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ...errors import UserError
from ...fileio import input_file
from ...onnx_export import export_onnx, quantize_qdq
from ...parallelism import check_thread_count
from ..base import Runner, register_runner
from .session import check_optimization, session_options


@register_runner("onnxruntime")
class OnnxRuntimeRunner(Runner):
    """ONNX Runtime on the CPU execution provider.

    Args:
        model_or_path: an ``nn.Module`` (exported to a temporary ONNX file, deleted on
            :meth:`close`) or a path to an ``.onnx`` file.
        example_input: a tensor or numpy array fed to the model's first input.
        threads: intra-op threads (default 1: steadiest timings on a shared machine).
        optimization: ``"all"`` (default, what deployment uses: layout transforms and
            conv+bias+activation fusion), ``"extended"``, ``"basic"`` or ``"disable"``.
        precision: ``"fp32"`` (default; the model as it is) or ``"int8"`` (see the
            module notes).

    Raises:
        UserError: a missing file, a model ONNX Runtime cannot load, an unknown
            precision, or with ``"int8"`` a file that is not a Q/DQ model.
    """

    name = "onnxruntime"

    def __init__(
        self,
        model_or_path: Any,
        example_input: Any,
        *,
        threads: int = 1,
        optimization: str = "all",
        precision: str = "fp32",
    ) -> None:
        import onnxruntime as ort

        check_optimization(optimization)
        check_thread_count(threads, "the onnxruntime runner's threads")
        if precision not in ("fp32", "int8"):
            raise UserError(f"the onnxruntime runner runs fp32 or int8, not {precision!r}")
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        if isinstance(model_or_path, (str, os.PathLike)):
            path = input_file(model_or_path, "ONNX file", kind="an ONNX model")
            if precision == "int8" and not is_qdq_model(path):
                raise UserError(f"{str(path)!r} is not an INT8 Q/DQ model (no QuantizeLinear)")
        else:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="lut-runner-")
            tmp = Path(self._tmpdir.name)
            try:
                path = export_onnx(model_or_path, example_input, tmp / "model.onnx")
                if precision == "int8":
                    path = quantize_qdq(
                        path, tmp / "int8.onnx", [example_input], flavor="onnxruntime"
                    )
            except BaseException:
                self.close()
                raise
        self.path = path
        self.precision = precision
        self.threads = threads
        # With one intra-op thread ONNX Runtime runs on the caller's thread, so that
        # thread's CPU time is the inference's cost, immune to preemption.
        self.clock = "thread" if threads == 1 else "wall"
        opts = session_options(threads, optimization)
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            self.close()
            raise UserError(f"ONNX Runtime cannot load {str(path)!r}: {exc}") from exc
        first = self.session.get_inputs()[0]
        self._feed = {first.name: _to_numpy(example_input, first.type)}

    def __call__(self) -> Any:
        return self.session.run(None, self._feed)

    def close(self) -> None:
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None


def _to_numpy(x: Any, onnx_type: str = "tensor(float)") -> Any:
    """The input as a contiguous array of the ONNX input's type (an fp16 model takes fp16)."""
    import numpy as np

    dtype = np.float16 if onnx_type == "tensor(float16)" else np.float32
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


def is_qdq_model(path: str | os.PathLike) -> bool:
    """The ONNX file holds explicit quantization (a ``QuantizeLinear`` node)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX: the session says so in its own words
        return False
    return any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
