"""Running a serialized TensorRT engine: bound CUDA buffers, a private stream, CUDA
graphs, and GPU timing with CUDA events.

:class:`EngineSession` serves the per-layer measurements
(:mod:`lut_builder.backends.tensorrt.measurer`), the whole-model runner
(:mod:`lut_builder.backends.tensorrt.runner`) and the GPU tests of ``halp-trt engine``.
Buffers are torch CUDA tensors (no pycuda). Nothing here imports TensorRT or torch at
import time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import ShapeError, UserError
from .trt_compat import Shape, gpu_info, import_tensorrt, make_logger


def device_index(device: int | str) -> int:
    """A CUDA device index from ``0``, ``"cuda"``, ``"cuda:1"`` or ``"2"``.

    Raises:
        UserError: anything else (``"cpu"``...).
    """
    if isinstance(device, int):
        return device
    text = str(device)
    if text == "cuda":
        return 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    if text.isdigit():
        return int(text)
    raise UserError(f"the tensorrt backend runs on a CUDA device, not on {device!r}")


def torch_dtype(trt: Any, dtype: Any) -> Any:
    """The torch dtype of a TensorRT ``DataType``.

    Raises:
        UserError: a type this project does not bind buffers for.
    """
    import torch

    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int8: torch.int8,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.bool: torch.bool,
    }
    if dtype not in table:
        raise UserError(f"engine tensor type {dtype} is not supported here")
    return table[dtype]


class EngineSession:
    """A deserialized engine with one execution context and bound torch CUDA buffers.

    Inputs are set to given shapes (within the engine's profile), outputs allocated
    once; :meth:`run` enqueues one inference on a private (non-default) CUDA stream,
    replaying a CUDA graph of it when capture works.

    Args:
        engine_bytes: a serialized engine.
        input_shapes: input name -> shape; inputs missing here get ``default_shape``.
        default_shape: the shape of inputs not in ``input_shapes``, or None: then such
            an input must have a static shape in the engine. A static input given a
            different shape is an error.
        device: CUDA device index.
        cuda_graph: capture one inference in a CUDA graph and replay it.
        verbose: TensorRT's verbose log.

    Raises:
        TensorRTUnavailable: no TensorRT or no GPU.
        UserError: the engine cannot be deserialized (built by another TensorRT version
            or for another GPU) or has no I/O tensors.
        ShapeError: an input shape outside the engine's profile.
    """

    def __init__(
        self,
        engine_bytes: bytes,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        *,
        default_shape: Sequence[int] | None = None,
        device: int = 0,
        cuda_graph: bool = True,
        verbose: bool = False,
    ) -> None:
        import torch

        trt = import_tensorrt()
        gpu_info(device)
        self.trt = trt
        self.device = torch.device("cuda", device)
        torch.cuda.set_device(self.device)
        self.logger = make_logger(trt, verbose)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise UserError(
                f"TensorRT {trt.__version__} cannot deserialize this engine (built by another "
                "TensorRT version or for another GPU?)"
            )
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=self.device)
        shapes = dict(input_shapes or {})
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [
            n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        ]
        self.output_names = [n for n in names if n not in self.input_names]
        if not self.input_names or not self.output_names:
            raise UserError("the engine has no inputs or no outputs")
        unknown = set(shapes) - set(self.input_names)
        if unknown:
            raise ShapeError(
                f"the engine has no input {sorted(unknown)[0]!r}; inputs: {', '.join(self.input_names)}"
            )
        self.buffers: dict[str, Any] = {}
        for name in self.input_names:
            shape = self._input_shape(name, shapes.get(name, default_shape))
            if not self.context.set_input_shape(name, shape):
                raise ShapeError(f"TensorRT rejects shape {shape} for input {name!r}")
            self.buffers[name] = torch.randn(shape, device=self.device, dtype=torch.float32).to(
                torch_dtype(trt, self.engine.get_tensor_dtype(name))
            )
        for name in self.output_names:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            dtype = torch_dtype(trt, self.engine.get_tensor_dtype(name))
            self.buffers[name] = torch.empty(shape, device=self.device, dtype=dtype)
        for name, t in self.buffers.items():
            self.context.set_tensor_address(name, t.data_ptr())
        self.graph = None
        self._enqueue()  # the first enqueue does lazy set-up that must not be captured
        self.stream.synchronize()
        if cuda_graph:
            self._capture()

    def _input_shape(self, name: str, requested: Sequence[int] | None) -> Shape:
        static = tuple(int(d) for d in self.engine.get_tensor_shape(name))
        if -1 not in static:
            if requested is not None and tuple(requested) != static:
                raise ShapeError(
                    f"the engine's input {name!r} has the fixed shape {static}, not {tuple(requested)}"
                )
            return static
        lo, _, hi = (
            tuple(int(d) for d in s) for s in self.engine.get_tensor_profile_shape(name, 0)
        )
        if requested is None:
            raise ShapeError(f"the engine's input {name!r} is dynamic {static}: give its shape")
        shape = tuple(int(d) for d in requested)
        ok = len(shape) == len(static) and all(
            a <= d <= b and (s == -1 or s == d) for a, d, b, s in zip(lo, shape, hi, static)
        )
        if not ok:
            raise ShapeError(
                f"input shape {shape} does not fit the engine's input {name!r} "
                f"(profile {lo} .. {hi})"
            )
        return shape

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see its log)")

    def _capture(self) -> None:
        import torch

        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                self._enqueue()
        except RuntimeError:
            # Some engines cannot be captured (e.g. data-dependent shapes); they run
            # with plain enqueues instead.
            self.graph = None
            torch.cuda.synchronize(self.device)
            return
        self.graph = graph

    def run(self) -> None:
        """Enqueue one inference on the session's stream (asynchronous)."""
        if self.graph is not None:
            import torch

            with torch.cuda.stream(self.stream):
                self.graph.replay()
        else:
            self._enqueue()

    def sync(self) -> None:
        """Wait for the session's stream."""
        self.stream.synchronize()

    def outputs(self) -> dict[str, Any]:
        """The output buffers (torch CUDA tensors, overwritten by each run)."""
        return {n: self.buffers[n] for n in self.output_names}

    def close(self) -> None:
        """Free the graph, context, engine and buffers."""
        self.graph = None
        self.buffers = {}
        self.context = None
        self.engine = None


def time_on_stream(
    session: EngineSession, *, warmup: int = 20, runs: int = 100, min_time_s: float = 0.2
) -> list[float]:
    """GPU time per inference, from CUDA events recorded on the session's stream.

    Each sample covers ``inner`` back-to-back inferences (so that a sample of a tiny
    engine is well above the events' resolution) and is divided by ``inner``; at least
    ``runs`` samples and ``min_time_s`` seconds of them, bounded by ``100 * runs``.

    Returns:
        Per-inference milliseconds, one per sample.
    """
    import torch

    for _ in range(warmup):
        session.run()
    session.sync()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    # Calibrate how many inferences one sample needs to last >= ~0.1 ms.
    start.record(session.stream)
    for _ in range(10):
        session.run()
    end.record(session.stream)
    end.synchronize()
    per_run = max(start.elapsed_time(end) / 10, 1e-4)
    inner = max(1, min(1000, int(0.1 / per_run) + 1))
    samples: list[float] = []
    total_ms = 0.0
    while len(samples) < runs or (total_ms < min_time_s * 1e3 and len(samples) < 100 * runs):
        batch = []
        for _ in range(max(1, runs // 4)):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record(session.stream)
            for _ in range(inner):
                session.run()
            e.record(session.stream)
            batch.append((s, e))
        session.sync()
        for s, e in batch:
            ms = s.elapsed_time(e)
            total_ms += ms
            samples.append(ms / inner)
    return samples
