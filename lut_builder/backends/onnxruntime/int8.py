"""INT8 layers as explicitly quantized (Q/DQ) ONNX graphs, and the channel step of their
kernels read from a measured staircase.

A deployed INT8 model is a Q/DQ ONNX (``onnxruntime.quantization.quantize_static`` or
ModelOpt write one): every convolution reads ``DequantizeLinear(x_q)``, its weight is
``DequantizeLinear(W_int8, per-channel scales, axis=0)``, its bias is folded BatchNorm,
and its (activated) output goes through ``QuantizeLinear``. :func:`qdq_layer_model`
builds one layer (or several copies of it) in exactly that form, in one of two flavours:

- ``"onnxruntime"``: UInt8 activations, Int8 symmetric per-channel weights, Int32 bias
  (what ``quantize_static`` writes with ``activation_type=QUInt8``). ONNX Runtime's CPU
  provider fuses ``DQ -> Conv -> Relu -> Q`` into one ``QLinearConv`` (the Relu folds
  into the output zero point) and runs it in NHWC. The graph takes and returns NHWC
  UInt8 tensors through a ``Transpose`` pair, which ONNX Runtime's layout transformer
  cancels against its own: measured, the optimised graph is one ``QLinearConv`` per
  copy and nothing else, as between two convolutions of a deployed INT8 network
  (graph inputs in NCHW would add a transpose per copy).
  Int8 activations are *not* used here: with ONNX Runtime 1.32 on x86 a symmetric
  Int8 ``DQ -> Conv -> Relu -> Q`` is left as a float convolution (the Relu cannot fold
  into a zero point of 0), 6-7x slower than the fused UInt8 kernel.
- ``"tensorrt"``: Int8 activations and weights, zero points 0 (TensorRT accepts only
  symmetric quantization), float bias, float32 input and output around ``Q -> DQ``:
  the explicit-quantization form TensorRT 10 (``STRONGLY_TYPED``) and 11 fuse into INT8
  convolutions.

The staircase: :func:`staircase_alignment` times one 3x3 layer over output channel
counts and returns the widest step at which latency is flat between multiples of it.
On the AVX-512 VNNI Xeon of the development machine ONNX Runtime's INT8 QLinearConv
(64 input channels, 16x16, batch 8) stepped every 16 output channels (20..32 cost the
same, 36 cost more) while input channels cost smoothly, so the INT8 table's alignment
there is 16.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ...signatures import LayerSignature
from ..base import check_channels, conv_groups

FLAVORS = ("onnxruntime", "tensorrt")
#: Opset of the Q/DQ layer graphs: per-channel DequantizeLinear needs at least 13.
OPSET = 17
IR_VERSION = 8
#: Activation scale of the layer graphs (values do not change INT8 kernel speed).
ACT_SCALE = 0.05


def check_flavor(flavor: str) -> None:
    """Raise ValueError for a flavour other than :data:`FLAVORS`."""
    if flavor not in FLAVORS:
        raise ValueError(f"unknown Q/DQ flavour {flavor!r}; known: {', '.join(FLAVORS)}")


def qdq_layer_model(
    sig: LayerSignature,
    c_in: int,
    c_out: int,
    *,
    copies: int = 1,
    flavor: str = "onnxruntime",
    seed: int = 0,
) -> Any:
    """An ONNX model (``onnx.ModelProto``) of one INT8 Q/DQ layer, or ``copies`` of it.

    Every copy reads the same quantized input and writes its own quantized output
    (``y0``, ``y1``, ...). See the module notes for the two flavours and their I/O.

    Raises:
        ValueError: channel counts the signature cannot have, ``copies < 1`` or an
            unknown flavour.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    check_channels(sig, c_in, c_out)
    check_flavor(flavor)
    if copies < 1:
        raise ValueError("copies must be >= 1")
    rng = np.random.default_rng(seed)
    ort = flavor == "onnxruntime"
    act_np, act_onnx = (np.uint8, TensorProto.UINT8) if ort else (np.int8, TensorProto.INT8)
    relu = "relu" in sig.epilogue
    conv = sig.op != "linear"
    if conv:
        g = conv_groups(sig, c_in)
        (h, w), (oh, ow) = sig.in_hw, sig.out_hw
        x_nchw, y_nchw = [sig.batch, c_in, h, w], [sig.batch, c_out, oh, ow]
        w_shape: tuple[int, ...] = (c_out, c_in // g, *sig.kernel)
        ph, pw = sig.padding
        attrs: dict[str, Any] = {
            "kernel_shape": list(sig.kernel),
            "strides": list(sig.stride),
            "pads": [ph, pw, ph, pw],
            "dilations": list(sig.dilation),
            "group": g,
        }
    else:
        x_nchw, y_nchw = [sig.batch, c_in], [sig.batch, c_out]
        w_shape, attrs = (c_out, c_in), {"transB": 1}
    nhwc = ort and conv
    # A ReLU output quantizes with zero point at the bottom of the range (UInt8: 0); a
    # signed output in UInt8 centres it (128). TensorRT: always 0.
    out_zero = 0 if (relu or not ort) else 128
    inits = [
        numpy_helper.from_array(np.array(ACT_SCALE, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, act_np), "x_zero"),
        numpy_helper.from_array(np.array(ACT_SCALE, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(out_zero, act_np), "y_zero"),
    ]
    nodes = []
    if nhwc:
        x_info = [x_nchw[0], *x_nchw[2:], x_nchw[1]]
        nodes.append(helper.make_node("Transpose", ["x"], ["x_t"], perm=[0, 3, 1, 2]))
        nodes.append(helper.make_node("DequantizeLinear", ["x_t", "x_scale", "x_zero"], ["x_dq"]))
        x_type = act_onnx
    elif ort:
        x_info, x_type = x_nchw, act_onnx
        nodes.append(helper.make_node("DequantizeLinear", ["x", "x_scale", "x_zero"], ["x_dq"]))
    else:
        x_info, x_type = x_nchw, TensorProto.FLOAT
        nodes.append(helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]))
        nodes.append(helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]))
    outputs = []
    for i in range(copies):
        w_q = rng.integers(-127, 128, w_shape, dtype=np.int8)
        w_scale = (rng.random(c_out, dtype=np.float32) + 0.5) * 1e-3
        inits += [
            numpy_helper.from_array(w_q, f"W{i}"),
            numpy_helper.from_array(w_scale, f"W{i}_scale"),
            numpy_helper.from_array(np.zeros(c_out, np.int8), f"W{i}_zero"),
        ]
        # Weights are [out, in, ...] for Conv and, with transB, for Gemm: axis 0 is out.
        nodes.append(
            helper.make_node(
                "DequantizeLinear", [f"W{i}", f"W{i}_scale", f"W{i}_zero"], [f"W{i}_dq"], axis=0
            )
        )
        if ort:  # quantize_static's Int32 bias at scale x_scale * w_scale
            b_q = rng.integers(-2000, 2000, c_out, dtype=np.int32)
            inits += [
                numpy_helper.from_array(b_q, f"B{i}"),
                numpy_helper.from_array(w_scale * np.float32(ACT_SCALE), f"B{i}_scale"),
                numpy_helper.from_array(np.zeros(c_out, np.int32), f"B{i}_zero"),
            ]
            nodes.append(
                helper.make_node(
                    "DequantizeLinear",
                    [f"B{i}", f"B{i}_scale", f"B{i}_zero"],
                    [f"B{i}_dq"],
                    axis=0,
                )
            )
        else:  # TensorRT takes no Int32 DequantizeLinear: a float bias
            b = (rng.standard_normal(c_out, dtype=np.float32) * 0.05).astype(np.float32)
            inits.append(numpy_helper.from_array(b, f"B{i}_dq"))
        op = "Conv" if conv else "Gemm"
        nodes.append(helper.make_node(op, ["x_dq", f"W{i}_dq", f"B{i}_dq"], [f"z{i}"], **attrs))
        pre = f"z{i}"
        if relu:
            nodes.append(helper.make_node("Relu", [pre], [f"r{i}"]))
            pre = f"r{i}"
        nodes.append(helper.make_node("QuantizeLinear", [pre, "y_scale", "y_zero"], [f"q{i}"]))
        if nhwc:
            nodes.append(helper.make_node("Transpose", [f"q{i}"], [f"y{i}"], perm=[0, 2, 3, 1]))
            outputs.append((f"y{i}", act_onnx, [y_nchw[0], *y_nchw[2:], y_nchw[1]]))
        elif ort:
            nodes[-1].output[0] = f"y{i}"
            outputs.append((f"y{i}", act_onnx, y_nchw))
        else:
            nodes.append(
                helper.make_node("DequantizeLinear", [f"q{i}", "y_scale", "y_zero"], [f"y{i}"])
            )
            outputs.append((f"y{i}", TensorProto.FLOAT, y_nchw))
    graph = helper.make_graph(
        nodes,
        "int8_layer",
        [helper.make_tensor_value_info("x", x_type, x_info)],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        initializer=inits,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )


def qdq_layer_bytes(
    sig: LayerSignature, c_in: int, c_out: int, *, flavor: str, seed: int = 0
) -> bytes:
    """:func:`qdq_layer_model` (one copy), serialized: what an ONNX parser reads."""
    return qdq_layer_model(sig, c_in, c_out, flavor=flavor, seed=seed).SerializeToString()


def input_array(model: Any, seed: int = 1) -> Any:
    """A random input for a layer graph of :func:`qdq_layer_model` (its own dtype)."""
    import numpy as np
    from onnx import TensorProto

    t = model.graph.input[0].type.tensor_type
    shape = [d.dim_value for d in t.shape.dim]
    rng = np.random.default_rng(seed)
    if t.elem_type == TensorProto.FLOAT:
        return rng.standard_normal(shape, dtype=np.float32)
    dtype = np.uint8 if t.elem_type == TensorProto.UINT8 else np.int8
    return rng.integers(0, 100, shape).astype(dtype)


def fused_ops(optimized: Any) -> dict[str, int]:
    """Op counts of an optimised model, by ``domain:op`` (``":Conv"`` is a float conv)."""
    counts: dict[str, int] = {}
    for n in optimized.graph.node:
        key = f"{n.domain}:{n.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return counts


#: Candidate channel steps of :func:`staircase_alignment`, widest last.
CANDIDATES = (4, 8, 16, 32)
#: The share of a staircase's total rise that must happen where a step begins.
SHARE = 0.6


def staircase_alignment(
    times: Sequence[tuple[int, float]],
    candidates: Sequence[int] = CANDIDATES,
    share: float = SHARE,
) -> int:
    """The widest channel step at whose boundaries a measured staircase rises.

    A kernel that processes channels in tiles of ``step`` costs the same for every width
    of a tile and jumps when a width starts a new one. So with latencies on a regular
    grid of widths, the rises from one width to the next should fall at widths one grid
    step past a multiple of ``step``. A candidate is accepted when those rises make up
    at least ``share`` of all the (positive) rises: a smooth curve gives each candidate
    about ``grid / step`` of it, noise a scattered share.

    Args:
        times: ``(channels, latency)`` pairs on a regular grid whose step divides every
            candidate (e.g. every 4 channels), spanning a few of the widest steps.
        candidates: steps to try; the widest accepted wins.
        share: the least share of the rise at step boundaries.

    Returns:
        The step (the smallest candidate when none is accepted).
    """
    pts = sorted(times)
    grid = min(b[0] - a[0] for a, b in zip(pts, pts[1:]))
    rises = [(c1, t1 - t0) for (c0, t0), (c1, t1) in zip(pts, pts[1:]) if c1 - c0 == grid]
    total = sum(max(r, 0.0) for _, r in rises)
    best = min(candidates)
    if total <= 0:
        return best
    for step in sorted(candidates):
        at_steps = sum(max(r, 0.0) for c, r in rises if (c - grid) % step == 0)
        if at_steps >= share * total:
            best = step
    return best


def probe_widths(candidates: Sequence[int] = CANDIDATES) -> list[int]:
    """Output channel counts :func:`staircase_alignment` is measured at: every
    ``min(candidates)`` channels over the widest step's second and third blocks (narrow
    widths take special kernels: measured, 4-12 output channels ran slower than 16)."""
    lo, hi = max(candidates), 3 * max(candidates)
    return list(range(lo + min(candidates), hi + 1, min(candidates)))


class MeasuredAlignment:
    """Mixin of a backend whose alignment, unless given (``_alignment``), is measured by
    its ``measure_alignment()`` once, on first use: building a backend (to check its
    options or fingerprint) measures nothing."""

    _alignment: int | None = None

    @property
    def alignment(self) -> int:
        if self._alignment is None:
            self._alignment = self.measure_alignment()
        return self._alignment

    def measure_alignment(self) -> int:
        raise NotImplementedError


#: The layer the staircase is measured on: a 3x3 conv on a 16x16 map, batch 8, 64 input
#: channels, over the output widths of :func:`probe_widths`.
PROBE_SIG = LayerSignature("conv2d", kernel=3, padding=1, in_hw=(16, 16), batch=8)
PROBE_C_IN = 64


def probe_alignment(time_widths: Callable[[LayerSignature, int, list[int]], list[float]]) -> int:
    """A backend's channel step, read from a staircase it measures.

    Args:
        time_widths: ``(sig, c_in, widths)`` -> the latency of ``sig`` at ``c_in`` input
            channels and each output width (interleaved, where the backend can).

    Returns:
        :func:`staircase_alignment` of the :data:`PROBE_SIG` staircase.
    """
    widths = probe_widths()
    return staircase_alignment(list(zip(widths, time_widths(PROBE_SIG, PROBE_C_IN, widths))))
