"""TensorRT on an NVIDIA GPU, whole models: a serialized ``.engine``, an ``.onnx`` file
(built into an engine in memory for the example input's shape) or an ``nn.Module``
(exported to ONNX first, by :func:`lut_builder.onnx_export.export_onnx`; in int8 then
quantized to Q/DQ by :func:`lut_builder.onnx_export.quantize_qdq`, TensorRT flavour,
calibrated on random inputs of the example's shape: scales do not change kernel speed).

Imports neither TensorRT nor CUDA until a runner is made.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ...errors import UserError
from ...fileio import input_file
from ...onnx_export import export_onnx, quantize_qdq
from ..base import Runner, register_runner
from . import trt_compat
from .measurer import PRECISIONS
from .session import EngineSession, device_index


@register_runner("tensorrt")
class TensorRTRunner(Runner):
    """A TensorRT engine, ready to run one inference per call on its CUDA stream.

    Args:
        model_or_path: a ``.engine`` file, an ``.onnx`` file or an ``nn.Module``.
        example_input: a tensor (or numpy array, or just a shape) of the input; dynamic
            engine inputs are set to its shape.
        device: CUDA device index.
        precision: for an ``nn.Module`` only: ``"fp32"`` or ``"fp16"`` (the module is
            exported in that precision; a strongly typed engine follows the ONNX types),
            or ``"int8"`` (exported, then quantized to Q/DQ).
        cuda_graph: replay the inference from a CUDA graph.
        workspace_gib, opt_level, timing_cache: builder settings for ONNX and modules.

    Raises:
        TensorRTUnavailable: no TensorRT or no GPU.
        UserError: a missing file, or an engine TensorRT cannot load.
        ShapeError: an input shape the engine does not accept.
    """

    name = "tensorrt"

    def __init__(
        self,
        model_or_path: Any,
        example_input: Any,
        *,
        device: int | str = 0,
        precision: str = "fp32",
        cuda_graph: bool = True,
        workspace_gib: float | None = None,
        opt_level: int | None = None,
        timing_cache: str | os.PathLike | None = None,
    ) -> None:
        trt_compat.import_tensorrt()
        shape = tuple(int(d) for d in getattr(example_input, "shape", example_input))
        settings = trt_compat.BuildSettings(
            workspace_gib=workspace_gib, opt_level=opt_level, timing_cache=timing_cache
        )
        if isinstance(model_or_path, (str, os.PathLike)):
            path = input_file(model_or_path, "model file")
            if path.suffix == ".onnx":
                plan = trt_compat.build_onnx_engine(path, settings, default_shape=shape).plan
            else:
                plan = path.read_bytes()
        else:
            plan = self._from_module(model_or_path, shape, precision, settings)
        self.session = EngineSession(
            plan, default_shape=shape, device=device_index(device), cuda_graph=cuda_graph
        )

    @staticmethod
    def _from_module(model: Any, shape: tuple[int, ...], precision: str, settings: Any) -> bytes:
        import copy

        import torch

        if precision not in PRECISIONS:
            raise UserError(
                f"the tensorrt runner exports modules in {', '.join(PRECISIONS)}, not {precision}"
            )
        module = copy.deepcopy(model).eval()
        x = torch.randn(*shape)
        if precision == "fp16":
            module, x = module.half(), x.half()
        with tempfile.TemporaryDirectory(prefix="lut-trt-") as d:
            path = export_onnx(module, x, Path(d) / "model.onnx")
            if precision == "int8":
                batches = [torch.randn(*shape) for _ in range(4)]
                path = quantize_qdq(path, Path(d) / "int8.onnx", batches, flavor="tensorrt")
            return trt_compat.build_onnx_engine(path, settings, default_shape=shape).plan

    def __call__(self) -> None:
        self.session.run()

    def sync(self) -> None:
        self.session.sync()

    def close(self) -> None:
        self.session.close()
