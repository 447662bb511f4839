"""TensorRT on an NVIDIA GPU, per layer: the production backend.

Each point is a tiny strongly typed network built with TensorRT's network API, a
convolution (or matrix multiply) with its bias and activation, as TensorRT fuses a conv
+ folded BatchNorm + ReLU of a deployed network. Weights are random normal (zero weights
could take shortcuts). The build shares one timing cache across all points (and a file,
when given, across runs) and serialises layers (``max_aux_streams=0``). The engine runs
on a private CUDA stream from a CUDA graph; CUDA events on that stream time it (GPU
time, no host overhead, no transfers, like ``trtexec``): a warm-up, then at least
``runs`` samples and ``min_time_s`` seconds of them; the median is the figure.

INT8 (``precision="int8"``): TensorRT takes INT8 only as explicit quantization (its
INT8 builder flag is gone in 11), so each point is the same Q/DQ layer a deployed
INT8 ONNX holds (:func:`lut_builder.backends.onnxruntime.int8.qdq_layer_model`,
TensorRT flavour: symmetric Int8 activations and per-channel weights, float bias,
float32 input and output), serialized and parsed by TensorRT's ONNX parser into a
strongly typed network, which fuses the Q/DQ pairs into an INT8 convolution. Its
alignment, unless given, is read from a measured staircase
(:func:`~lut_builder.backends.onnxruntime.int8.staircase_alignment`).

All TensorRT calls go through :mod:`.trt_compat` (building, TensorRT 10 and 11) and
:mod:`.session` (running). This module imports neither TensorRT nor CUDA until a backend
is made. It is written against the documented API and checked against the real bindings
by ``tests/test_tensorrt_api.py``; running it needs a GPU with TensorRT (tests marked
``tensorrt``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...errors import UserError
from ...fileio import atomic_write
from ...signatures import LayerSignature
from ...timing import Timing
from ..base import Backend, check_channels, conv_groups, host_fingerprint, register_backend
from ..onnxruntime.int8 import MeasuredAlignment
from . import trt_compat
from .session import EngineSession, device_index, time_on_stream

#: Precisions the per-layer networks can be built in (weights are numpy arrays, and
#: numpy has no bfloat16).
LAYER_PRECISIONS = ("fp32", "fp16")
#: What the backend measures: the typed layer networks, and INT8 Q/DQ layers.
PRECISIONS = (*LAYER_PRECISIONS, "int8")


def int8_layer_onnx(sig: LayerSignature, c_in: int, c_out: int, seed: int = 0) -> bytes:
    """The serialized Q/DQ ONNX model of one INT8 layer, as TensorRT takes it.

    Raises:
        ValueError: channel counts the signature cannot have.
    """
    from ..onnxruntime.int8 import qdq_layer_bytes

    return qdq_layer_bytes(sig, c_in, c_out, flavor="tensorrt", seed=seed)


def layer_network(
    trt: Any,
    builder: Any,
    sig: LayerSignature,
    c_in: int,
    c_out: int,
    precision: str,
    seed: int = 0,
) -> tuple[Any, list[Any]]:
    """A strongly typed one-layer network: conv2d/linear + bias (+ ReLU).

    Returns:
        ``(network, keep_alive)``: TensorRT reads the weights from the numpy arrays in
        ``keep_alive`` when it builds, so they must live until then.

    Raises:
        ValueError: channel counts the signature cannot have.
        UserError: a precision the layer networks do not support.
    """
    import numpy as np

    check_channels(sig, c_in, c_out)
    if precision not in LAYER_PRECISIONS:
        raise UserError(
            f"the tensorrt backend builds layers in {', '.join(LAYER_PRECISIONS)}, not {precision}"
        )
    np_dtype = np.float16 if precision == "fp16" else np.float32
    dtype = trt_compat.trt_dtype(trt, precision)
    rng = np.random.default_rng(seed)
    network = trt_compat.create_network(trt, builder)
    bias = (rng.standard_normal(c_out) * 0.05).astype(np_dtype)
    if sig.op == "linear":
        x = network.add_input("x", dtype, (sig.batch, c_in))
        weight = (rng.standard_normal((c_out, c_in)) * 0.05).astype(np_dtype)
        w = network.add_constant((c_out, c_in), weight)
        mm = network.add_matrix_multiply(
            x, trt.MatrixOperation.NONE, w.get_output(0), trt.MatrixOperation.TRANSPOSE
        )
        b = network.add_constant((1, c_out), bias)
        out = network.add_elementwise(
            mm.get_output(0), b.get_output(0), trt.ElementWiseOperation.SUM
        ).get_output(0)
    else:
        g = conv_groups(sig, c_in)
        h, w_ = sig.in_hw
        x = network.add_input("x", dtype, (sig.batch, c_in, h, w_))
        weight = (rng.standard_normal((c_out, c_in // g, *sig.kernel)) * 0.05).astype(np_dtype)
        conv = network.add_convolution_nd(x, c_out, tuple(sig.kernel), weight, bias)
        conv.stride_nd = tuple(sig.stride)
        conv.padding_nd = tuple(sig.padding)
        conv.dilation_nd = tuple(sig.dilation)
        conv.num_groups = g
        out = conv.get_output(0)
    if "relu" in sig.epilogue:
        out = network.add_activation(out, trt.ActivationType.RELU).get_output(0)
    out.name = "y"
    network.mark_output(out)
    return network, [weight, bias]


@register_backend("tensorrt")
class TensorRTBackend(MeasuredAlignment, Backend):
    """TensorRT engines of single layers on a CUDA GPU.

    Args:
        precision: ``"fp16"`` (default; tensor cores) or ``"fp32"``, set by the input
            and weight types of the strongly typed layer network; or ``"int8"``, a Q/DQ
            layer (see the module notes).
        device: CUDA device index or ``"cuda"`` / ``"cuda:N"``.
        warmup, runs, min_time_s: the timing loop (see :func:`.session.time_on_stream`).
        workspace_gib, opt_level: builder settings (see :class:`trt_compat.BuildSettings`).
        timing_cache: a file to start the shared timing cache from and save it to on
            :meth:`close`, or None for an in-memory cache.
        alignment: the default grid step; 8 channels in fp16 (tensor-core tiles), 4 in
            fp32 (TF32); in int8 read from a measured staircase on first use.
        cuda_graph: replay each layer from a CUDA graph (less launch overhead).

    Raises:
        TensorRTUnavailable: no TensorRT or no CUDA GPU.
        UserError: an unsupported precision or bad builder settings.
    """

    name = "tensorrt"

    def __init__(
        self,
        *,
        precision: str = "fp16",
        device: int | str = 0,
        warmup: int = 20,
        runs: int = 50,
        min_time_s: float = 0.1,
        workspace_gib: float | None = 1.0,
        opt_level: int | None = None,
        timing_cache: str | os.PathLike | None = None,
        alignment: int | None = None,
        cuda_graph: bool = True,
    ) -> None:
        if precision not in PRECISIONS:
            raise UserError(
                f"the tensorrt backend measures {', '.join(PRECISIONS)}, not {precision}"
            )
        self.trt = trt_compat.import_tensorrt()
        self.device = device_index(device)
        self.gpu = trt_compat.gpu_info(self.device)
        self.precision = precision
        self.warmup, self.runs, self.min_time_s = warmup, runs, min_time_s
        self.cuda_graph = cuda_graph
        self._alignment = alignment or {"fp16": 8, "fp32": 4}.get(precision)
        self.settings = trt_compat.BuildSettings(
            workspace_gib=workspace_gib,
            opt_level=opt_level,
            timing_cache=Path(timing_cache) if timing_cache else None,
            max_aux_streams=0,
        )
        self.logger = trt_compat.make_logger(self.trt)
        self.builder = self.trt.Builder(self.logger)
        self._cache: Any = None

    def measure_alignment(self) -> int:
        """The output channel step of INT8 layers on this GPU, read from a measured
        staircase (:func:`lut_builder.backends.onnxruntime.int8.probe_alignment`)."""
        from ..onnxruntime.int8 import probe_alignment

        def time_widths(sig: LayerSignature, c_in: int, widths: list[int]) -> list[float]:
            return [self.measure(sig, c_in, c).median_ms for c in widths]

        return probe_alignment(time_widths)

    def build(self, sig: LayerSignature, c_in: int, c_out: int) -> bytes:
        """The serialized engine of one layer (see :func:`layer_network`, and
        :func:`int8_layer_onnx` in int8)."""
        trt = self.trt
        if self.precision == "int8":
            check_channels(sig, c_in, c_out)
            network, keep_alive = trt_compat.parse_onnx_bytes(
                trt, self.builder, self.logger, int8_layer_onnx(sig, c_in, c_out)
            )
        else:
            network, keep_alive = layer_network(trt, self.builder, sig, c_in, c_out, self.precision)
        config = trt_compat.configure_builder(trt, self.builder, self.settings, cache=self._cache)
        if self._cache is None:
            self._cache = config.get_timing_cache()
        plan = trt_compat.build_serialized(trt, self.builder, network, config)
        del keep_alive
        return plan

    def measure(self, sig: LayerSignature, c_in: int, c_out: int) -> Timing:
        """Median GPU time of conv/linear + bias + activation; see the module notes."""
        session = EngineSession(
            self.build(sig, c_in, c_out), device=self.device, cuda_graph=self.cuda_graph
        )
        try:
            samples = time_on_stream(
                session, warmup=self.warmup, runs=self.runs, min_time_s=self.min_time_s
            )
        finally:
            session.close()
        return Timing.from_samples(samples)

    def fingerprint(self) -> dict[str, Any]:
        import torch

        return {
            "backend": self.name,
            "precision": self.precision,
            "device": f"cuda: {self.gpu['name']} (sm {self.gpu['compute_capability']})",
            "gpu": dict(self.gpu),
            "versions": {
                "tensorrt": self.trt.__version__,
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
            },
            "options": {
                "workspace_gib": self.settings.workspace_gib,
                "opt_level": self.settings.opt_level,
                "cuda_graph": self.cuda_graph,
                "max_aux_streams": 0,
                **(
                    {"qdq": "int8 symmetric activations, per-channel int8 weights"}
                    if self.precision == "int8"
                    else {}
                ),
            },
            "host": host_fingerprint(),
        }

    def close(self) -> None:
        """Save the timing cache to its file (atomically), when one was given."""
        path = self.settings.timing_cache
        if path is not None and self._cache is not None:
            atomic_write(path, bytes(self._cache.serialize()))
        self._cache = None
