"""ONNX Runtime on CPU, per layer: the default backend where no GPU is present.

Each point is built as an ONNX graph directly with ``onnx.helper`` (well under a
millisecond, where exporting a module from torch takes a second): ``Conv(x, W, B)`` then
``Relu`` for a conv whose BatchNorm is folded into the bias, ``Gemm(x, W, B)`` (+ ``Relu``)
for a linear layer. ONNX Runtime fuses these exactly as in the deployed network. Sessions
are created and warmed up before the clock starts, so setup never enters a measurement.

**Why a differential measurement.** In a deployed network, ONNX Runtime on x86 runs every
convolution in a blocked NCHWc layout: the input is reordered once at the start, and each
conv reads and writes blocked tensors. A graph holding one conv alone also pays an input
reorder, an output reorder and the per-run overhead of the session, all of which grow or
stay constant with the channel counts but do not exist per layer in the real network.
Summing such single-layer times over a CIFAR ResNet-56 gave 5.7-6.0 ms against 3.9-4.1 ms
measured end to end, and mispredicted a uniformly halved network by 40%. So by default
(``method="differential"``) each point times two graphs, interleaved round by round: one
with the layer once, and one with ``copies`` copies of it reading the same input, chained
by residual adds (``y_i = relu(conv_i(x) + y_{i-1})``, which ONNX Runtime fuses into the
conv as a sum epilogue, as it does for the second conv of a residual block). The point's
latency is the median over rounds of ``(T_copies - T_1) / (copies - 1)``: the cost of one
more conv in the steady blocked state, reorders and run overhead cancelled. The
``method="single"`` measurement (one layer alone) is kept for comparison.

**Why normalised by a reference.** The machine's speed itself changes: on a 2-vCPU
machine shared with other processes, a ResNet-56 inference took 2.9 ms or 4.4 ms of
thread CPU time depending on whether the sibling vCPU was busy, for seconds at a time.
So by default (``normalize=True``) every timed run is bracketed by runs of a fixed
reference graph (:data:`REFERENCE_SIG` at 64 -> 64 channels), and a point's value is its
median ratio to the reference. (``gate`` can further drop runs made while the reference
ran slow; it is off by default because the machine's fastest state itself drifted: the
reference's fastest run was 0.18 ms for an hour, then 0.22-0.27 ms.) Tables store these
ratios; their unit is the fastest reference run seen while the table was filled (the
minimum of thousands of runs, which stays put while medians swing), so every process and
every later end-to-end measurement against the table
(:func:`lut_builder.end_to_end.measure_end_to_end`) shares it. On a quiet machine this
changes nothing; on a shared one it keeps points measured minutes apart in one
consistent state.

Timing on a small shared CPU: one intra-op thread (ONNX Runtime then runs the graph on
the calling thread, and a thread pool would compete with other processes), timed on
that thread's CPU-time clock (see :mod:`lut_builder.timing`: preemption by other
processes is not counted), a warm-up, then at least ``runs`` rounds and at least
``min_time_s`` seconds; the median is the figure, p10/p90 the dispersion. With more
threads the clock is the wall clock.

**INT8** (``precision="int8"``): each point is the layer as a deployed Q/DQ model runs
it, built by :func:`.int8.qdq_layer_model` (UInt8 activations, per-channel Int8
weights, Int32 bias; ONNX Runtime fuses it into one ``QLinearConv`` per copy, which the
backend checks in ONNX Runtime's optimised graph before it measures a layer kind). The
copies of the differential graph each write their own output instead of a residual add
(an INT8 add is a separate ``QLinearAdd``, not a conv epilogue). The alignment, unless
given, is read from a measured staircase (:func:`.int8.staircase_alignment`) the first
time it is asked for.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ...errors import UserError
from ...parallelism import check_thread_count
from ...signatures import LayerSignature
from ...timing import Timing, get_clock, time_interleaved, time_relative
from ..base import (
    Backend,
    check_channels,
    conv_groups,
    cpu_block_size,
    host_fingerprint,
    register_backend,
    register_reference,
)
from . import int8
from .session import check_optimization, session_options

OPSET = 17
IR_VERSION = 8
#: What this backend measures: fp32 layers, or INT8 Q/DQ layers.
PRECISIONS = ("fp32", "int8")


#: The reference workload: a dense 3x3 conv + bias + ReLU on a 16x16 map, 64 -> 64
#: channels (about 0.2-0.3 ms on one core of a 2.5 GHz Xeon).
REFERENCE_SIG = LayerSignature("conv2d", kernel=3, padding=1, in_hw=(16, 16))
REFERENCE_CHANNELS = 64
#: The INT8 reference: the same conv as an INT8 Q/DQ layer, batch 8 (INT8 kernels are
#: about 8x faster; the batch keeps the reference as long as the fp32 one).
INT8_REFERENCE_SIG = LayerSignature("conv2d", kernel=3, padding=1, in_hw=(16, 16), batch=8)


#: The latency recorded for a differential point that resolves to zero twice: far
#: below any layer the tables price (the smallest measured layers take microseconds).
UNRESOLVED_MS = 1e-6


def reference_kind(threads: int, precision: str = "fp32") -> str:
    """The name under which a table records its reference workload.

    An INT8 table's reference is the same conv as an INT8 Q/DQ layer: VNNI integer
    kernels and float kernels do not slow down alike when the machine is shared (a
    hyperthread sibling competes for other execution units), so a float yardstick
    would carry that difference into an INT8 table.
    """
    c = REFERENCE_CHANNELS
    if precision == "int8":
        return f"onnxruntime/int8-conv3x3-16x16-{c}-{c}-b8/threads={threads}"
    return f"onnxruntime/conv3x3-16x16-{c}-{c}/threads={threads}"


@register_reference("onnxruntime")
def reference_callable(kind: str) -> Any:
    """A callable running the reference workload named ``kind`` once.

    Raises:
        UserError: ``kind`` is not an onnxruntime reference.
    """
    import re

    m = re.fullmatch(r"onnxruntime/(int8-)?conv3x3-16x16-64-64(-b8)?/threads=(\d+)", kind)
    if m is None or bool(m.group(1)) != bool(m.group(2)):
        raise UserError(f"unknown onnxruntime reference workload {kind!r}")
    precision = "int8" if m.group(1) else "fp32"
    backend = OnnxRuntimeBackend(
        threads=int(m.group(3)), precision=precision, alignment=1, normalize=False
    )
    return backend._reference_fn()


def layer_model(
    sig: LayerSignature, c_in: int, c_out: int, *, copies: int = 1, seed: int = 0
) -> Any:
    """An ONNX model (``onnx.ModelProto``) of one layer, or of several copies of it.

    The input is ``x`` (float32, ``[batch, c_in, H, W]`` or ``[batch, c_in]``), the output
    ``y``. With ``copies > 1`` every copy reads ``x`` and adds the previous copy's output
    before its activation (a residual-add epilogue); see the module notes. Weights are
    random normal: zero weights could take shortcuts real ones do not.

    Raises:
        ValueError: channel counts the signature cannot have, or ``copies < 1``.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    check_channels(sig, c_in, c_out)
    if copies < 1:
        raise ValueError("copies must be >= 1")
    rng = np.random.default_rng(seed)
    relu = "relu" in sig.epilogue
    if sig.op == "linear":
        x_shape, y_shape = [sig.batch, c_in], [sig.batch, c_out]
        w_shape: tuple[int, ...] = (c_out, c_in)
        attrs: dict[str, Any] = {"transB": 1}
        op = "Gemm"
    else:
        g = conv_groups(sig, c_in)
        (h, w), (oh, ow) = sig.in_hw, sig.out_hw
        x_shape, y_shape = [sig.batch, c_in, h, w], [sig.batch, c_out, oh, ow]
        w_shape = (c_out, c_in // g, *sig.kernel)
        ph, pw = sig.padding
        attrs = {
            "kernel_shape": list(sig.kernel),
            "strides": list(sig.stride),
            "pads": [ph, pw, ph, pw],
            "dilations": list(sig.dilation),
            "group": g,
        }
        op = "Conv"
    nodes, inits, prev = [], [], None
    for i in range(copies):
        w_arr = rng.standard_normal(w_shape, dtype=np.float32) * 0.05
        b_arr = rng.standard_normal(c_out, dtype=np.float32) * 0.05
        inits += [numpy_helper.from_array(w_arr, f"W{i}"), numpy_helper.from_array(b_arr, f"B{i}")]
        nodes.append(helper.make_node(op, ["x", f"W{i}", f"B{i}"], [f"z{i}"], **attrs))
        pre = f"z{i}"
        if prev is not None:
            nodes.append(helper.make_node("Add", [pre, prev], [f"s{i}"]))
            pre = f"s{i}"
        if relu:
            nodes.append(helper.make_node("Relu", [pre], [f"y{i}"]))
            pre = f"y{i}"
        prev = pre
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        initializer=inits,
    )
    # IR version 8 goes with opset 17; the onnx package's newest IR may be newer than
    # what the installed ONNX Runtime reads.
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )


@register_backend("onnxruntime")
class OnnxRuntimeBackend(int8.MeasuredAlignment, Backend):
    """ONNX Runtime, CPU execution provider.

    Args:
        precision: ``"fp32"`` or ``"int8"`` (Q/DQ layers; see the module notes). The
            CPU provider has no fast fp16 convolutions.
        device: only ``"cpu"`` (accepted for a uniform CLI).
        threads: intra-op threads; 1 by default for stable timings.
        method: ``"differential"`` (default) or ``"single"``; see the module notes.
        copies: layer copies of the differential graph (>= 2).
        warmup, runs, min_time_s: the timing loop: warm-up calls, then at least ``runs``
            rounds and at least ``min_time_s`` seconds of timed calls per point.
        alignment: the default grid step; the CPU's NCHWc block by default in fp32, read
            from a measured staircase in int8.
        optimization: ``"all"`` (default; what a deployed session uses) or ``"extended"``.
        clock: ``"thread"`` or ``"wall"``; by default thread CPU time with one thread,
            wall time otherwise.
        normalize: time every run against the reference workload (default True).
        gate: with ``normalize``, count only runs made while the reference ran within
            ``gate`` times its fastest time (the machine's unshared state); None
            counts every run. See :func:`lut_builder.timing.time_relative`.

    Raises:
        UserError: another precision or device, or an unknown method, level or clock.
    """

    name = "onnxruntime"

    def __init__(
        self,
        *,
        precision: str = "fp32",
        device: str | None = "cpu",
        threads: int = 1,
        method: str = "differential",
        copies: int = 5,
        warmup: int = 5,
        runs: int = 20,
        min_time_s: float = 0.3,
        alignment: int | None = None,
        optimization: str = "all",
        clock: str | None = None,
        normalize: bool = True,
        gate: float | None = None,
    ) -> None:
        import onnxruntime as ort

        if precision not in PRECISIONS:
            raise UserError(
                f"the onnxruntime backend measures {' or '.join(PRECISIONS)} on CPU, not "
                f"{precision}"
            )
        if device not in ("cpu", None):
            raise UserError(f"the onnxruntime backend runs on the CPU, not on {device!r}")
        check_optimization(optimization, ("all", "extended"))
        if method not in ("differential", "single"):
            raise UserError(f"unknown method {method!r}; known: differential, single")
        check_thread_count(threads, "the onnxruntime backend's threads")
        for name, value, least in (
            ("copies", copies, 2),
            ("runs", runs, 1),
        ):
            if value < least:  # named one by one: the message names the option given
                raise UserError(f"the onnxruntime backend's {name} must be >= {least}, not {value}")
        clock = clock or ("thread" if threads == 1 else "wall")
        if clock not in ("thread", "wall"):
            raise UserError(f"unknown clock {clock!r}; known: thread, wall")
        if clock == "thread" and threads != 1:
            raise UserError("the thread clock measures single-threaded runs only (threads=1)")
        self.clock = clock
        self.normalize = normalize
        self.gate = gate if normalize else None
        self.reference_kind = reference_kind(threads, precision) if normalize else None
        self.reference_ms = None
        self._reference = None
        self.precision = precision
        self.threads = threads
        self.method, self.copies = method, copies
        self.warmup, self.runs, self.min_time_s = warmup, runs, min_time_s
        self._alignment = alignment or (cpu_block_size() if precision == "fp32" else None)
        self.optimization = optimization
        self._ort = ort
        self._fused_checked: set[tuple[str, str]] = set()

    def measure_alignment(self) -> int:
        """The output channel step of this CPU's kernels at this precision, read from a
        measured staircase (:func:`.int8.probe_alignment`)."""
        import statistics

        def time_widths(sig: LayerSignature, c_in: int, widths: list[int]) -> list[float]:
            fns = [self._runner(sig, c_in, c, 1) for c in widths]
            series = time_interleaved(fns, warmup=3, rounds=25, clock=self.clock)
            return [statistics.median(s) for s in series]

        return int8.probe_alignment(time_widths)

    def session(self, model: Any) -> Any:
        """An ``InferenceSession`` for an ONNX model with this backend's settings."""
        opts = session_options(self.threads, self.optimization)
        return self._ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )

    def _runner(self, sig: LayerSignature, c_in: int, c_out: int, copies: int) -> Any:
        import numpy as np

        if self.precision == "int8":
            model = int8.qdq_layer_model(sig, c_in, c_out, copies=copies)
            self._check_fused(sig, model)
            sess = self.session(model)
            int8_feed = {"x": int8.input_array(model)}
            int8_run = sess.run
            return lambda: int8_run(None, int8_feed)
        sess = self.session(layer_model(sig, c_in, c_out, copies=copies))
        shape = [d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape]
        feed = {"x": np.random.default_rng(1).standard_normal(shape, dtype=np.float32)}
        run = sess.run
        return lambda: run(None, feed)

    def _reference_fn(self) -> Any:
        if self._reference is None:
            # The reference conv, at this backend's precision (see reference_kind).
            sig = INT8_REFERENCE_SIG if self.precision == "int8" else REFERENCE_SIG
            self._reference = self._runner(sig, REFERENCE_CHANNELS, REFERENCE_CHANNELS, 1)
        return self._reference

    def _check_fused(self, sig: LayerSignature, model: Any) -> None:
        """Refuse to measure an INT8 layer kind that this ONNX Runtime would run as a
        float conv (checked once per op and group mode, in its optimised graph)."""
        key = (sig.op, sig.group_mode)
        if key in self._fused_checked:
            return
        ops = optimized_ops(model, self.threads)
        floats = [k for k in ops if k in (":Conv", ":Gemm", ":MatMul", "com.microsoft:FusedConv")]
        if floats or not any(k.startswith("com.microsoft:Q") for k in ops):
            raise UserError(
                f"ONNX Runtime {self._ort.__version__} does not fuse an INT8 {sig.group_mode} "
                f"{sig.op} into an INT8 kernel here (optimised graph: "
                f"{', '.join(f'{k} x{v}' for k, v in sorted(ops.items()))}); an INT8 table "
                "would time float kernels"
            )
        self._fused_checked.add(key)

    def measure_reference(self, seconds: float = 2.0) -> Timing:
        """Time the reference workload alone for ``seconds`` of wall time.

        Updates ``reference_floor_ms`` (the fastest run) and returns the runs made in the
        machine's fast state (within ``gate`` of the fastest; all runs without a gate).
        """
        import time

        fn = self._reference_fn()
        clock = get_clock(self.clock)
        for _ in range(20):
            fn()
        samples: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(samples) < 50:
            t0 = clock()
            fn()
            samples.append((clock() - t0) * 1e3)
        # A run the clock saw take no time (seen once, on a heavily loaded machine) is
        # not the machine's fastest state: it would make the table's unit zero.
        samples = [t for t in samples if t > 0] or samples
        floor = min(samples)
        self.reference_floor_ms = min(self.reference_floor_ms or floor, floor)
        if self.gate is not None:
            samples = [t for t in samples if t <= self.gate * floor]
        return Timing.from_samples(samples)

    def measure(self, sig: LayerSignature, c_in: int, c_out: int) -> Timing:
        """Latency of conv/linear + bias + activation in milliseconds; see the module notes.

        A differential point whose median comes out zero (a layer cheaper than the
        noise of the copies' graph: most rounds saw the copies no slower than one
        layer) is timed once more with four times the rounds; if it still resolves to
        zero, its median is recorded as :data:`UNRESOLVED_MS`, a positive stand-in for
        "below what this measurement resolves" (a table stores positive latencies).
        """
        timing = self._measure(sig, c_in, c_out, 1)
        if self.method == "differential" and not timing.median_ms > 0:
            timing = self._measure(sig, c_in, c_out, 4)
            if not timing.median_ms > 0:
                timing = dataclasses.replace(
                    timing,
                    median_ms=UNRESOLVED_MS,
                    p10_ms=min(timing.p10_ms, UNRESOLVED_MS),
                    p90_ms=max(timing.p90_ms, UNRESOLVED_MS),
                )
        return timing

    def _measure(self, sig: LayerSignature, c_in: int, c_out: int, longer: int) -> Timing:
        one = self._runner(sig, c_in, c_out, 1)
        fns = [one]
        if self.method == "differential":
            fns.append(self._runner(sig, c_in, c_out, self.copies))
        k = self.copies - 1
        rounds = self.runs * longer
        min_time_s = None if self.min_time_s is None else self.min_time_s * longer
        if not self.normalize:
            series = time_interleaved(
                fns,
                warmup=self.warmup,
                rounds=rounds,
                min_time_s=min_time_s,
                clock=self.clock,
            )
            if self.method == "single":
                return Timing.from_samples(series[0])
            # A round where noise made the big graph look faster says "about zero".
            return Timing.from_samples([max(b - a, 0.0) / k for a, b in zip(*series)])
        if self.reference_ms is None:
            self.measure_reference()
            self.reference_ms = self.reference_floor_ms
        rel = time_relative(
            fns,
            self._reference_fn(),
            warmup=self.warmup,
            rounds=rounds,
            min_time_s=min_time_s,
            clock=self.clock,
            gate=self.gate,
            reference_floor_ms=self.reference_ms,
        )
        if rel.reference_floor_ms and rel.reference_floor_ms > 0:
            self.reference_floor_ms = min(
                self.reference_floor_ms or math.inf, rel.reference_floor_ms
            )
        ms = self.reference_ms
        if self.method == "single":
            return Timing.from_samples([r * ms for r in rel.accepted(0)])
        return Timing.from_samples([max(b - a, 0.0) / k * ms for a, b in rel.paired(0, 1)])

    def fingerprint(self) -> dict[str, Any]:
        host = host_fingerprint()
        return {
            "backend": self.name,
            "precision": self.precision,
            "device": f"cpu: {host['cpu']}",
            "versions": {"onnxruntime": self._ort.__version__},
            "options": {
                "threads": self.threads,
                "optimization": self.optimization,
                "method": self.method,
                "copies": self.copies if self.method == "differential" else 1,
                "clock": self.clock,
                "reference": self.reference_kind,
                "gate": self.gate,
                # Several threads are timed without spinning (see session_options).
                **({"spinning": False} if self.threads > 1 else {}),
                **(
                    {"qdq": "uint8 activations, per-channel int8 weights"}
                    if self.precision == "int8"
                    else {}
                ),
            },
            "host": host,
        }


def optimized_ops(model: Any, threads: int = 1) -> dict[str, int]:
    """Op counts (``domain:op``) of ONNX Runtime's optimised graph of ``model`` at the
    level a deployed session uses: what actually runs (see :func:`.int8.fused_ops`)."""
    import tempfile
    from pathlib import Path

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="ort-opt-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        opts = session_options(threads, "all")
        opts.optimized_model_filepath = str(path)
        opts.log_severity_level = 3  # it warns that the file is hardware-specific
        data = model if isinstance(model, str) else model.SerializeToString()
        ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        return int8.fused_ops(onnx.load(str(path)))
