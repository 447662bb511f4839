"""PyTorch eager, per layer: on CPU, and on CUDA with cuDNN autotuning and CUDA graphs.

Each point is ``Conv2d(c_in, c_out, bias=True)`` followed by ``ReLU`` (BatchNorm folded
into the bias, as at deployment) or ``Linear`` (+ ``ReLU``), in eval mode without
autograd.

- CPU: timed with :func:`~lut_builder.timing.time_callable` (thread CPU time when torch
  uses one thread, see :mod:`lut_builder.timing`; wall time otherwise).
- CUDA: ``torch.backends.cudnn.benchmark`` picks the fastest kernel during warm-up; the
  layer is captured ``inner`` times into one CUDA graph, and each sample is one graph
  replay bracketed by CUDA events on the capture stream, divided by ``inner``: kernels
  run back to back as in a deployed engine, without Python launch gaps. Without
  ``cuda_graph`` the same loop launches eagerly. This path needs a GPU and is not run
  by the CPU test suite; its configuration logic is.
"""

from __future__ import annotations

from typing import Any

from ...errors import UserError
from ...parallelism import check_thread_count
from ...signatures import LayerSignature
from ...timing import Timing, time_callable
from ..base import (
    Backend,
    check_channels,
    conv_groups,
    cpu_block_size,
    host_fingerprint,
    register_backend,
)

#: Precisions of layers and models, by name.
PRECISIONS = ("fp32", "fp16", "bf16")


def torch_dtype(precision: str) -> Any:
    """The torch dtype of a precision name.

    Raises:
        UserError: an unknown precision (the message lists the known ones).
    """
    import torch

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise UserError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    return dtypes[precision]


def default_alignment(device_type: str, precision: str) -> int:
    """The channel step latency changes at: 8 for fp16/bf16 tensor cores, 4 for fp32
    (TF32) on CUDA; the CPU's blocked-layout width on CPU."""
    if device_type == "cuda":
        return 8 if precision in ("fp16", "bf16") else 4
    return cpu_block_size()


def layer_module(sig: LayerSignature, c_in: int, c_out: int) -> Any:
    """The ``nn.Module`` measured for one point: conv/linear with bias, then ReLU if the
    signature's epilogue has one.

    Raises:
        ValueError: channel counts the signature cannot have.
    """
    import torch.nn as nn

    check_channels(sig, c_in, c_out)
    if sig.op == "linear":
        layer: nn.Module = nn.Linear(c_in, c_out, bias=True)
    else:
        layer = nn.Conv2d(
            c_in,
            c_out,
            sig.kernel,
            stride=sig.stride,
            padding=sig.padding,
            dilation=sig.dilation,
            groups=conv_groups(sig, c_in),
            bias=True,
        )
    parts = [layer] + ([nn.ReLU(inplace=True)] if "relu" in sig.epilogue else [])
    return nn.Sequential(*parts).eval()


def input_shape(sig: LayerSignature, c_in: int) -> tuple[int, ...]:
    """The layer input's shape for a signature at ``c_in`` channels."""
    if sig.op == "linear":
        return (sig.batch, c_in)
    return (sig.batch, c_in, *sig.in_hw)


@register_backend("torch")
class TorchBackend(Backend):
    """PyTorch eager on CPU or CUDA.

    Args:
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        device: ``"cpu"`` (default), ``"cuda"`` or ``"cuda:N"``.
        channels_last: NHWC memory format; default True on CUDA (cuDNN's fast tensor-core
            kernels want it), False on CPU.
        cuda_graph: replay captured CUDA graphs (CUDA only; default True).
        inner: layer calls per timed sample on CUDA (amortises event overhead).
        threads: torch CPU threads on CPU, the deployment's thread count (stored in the
            fingerprint); 1 by default; None: the process's current setting. Torch's
            thread count is process-wide: each measurement sets it back to this.
        warmup, runs, min_time_s: the timing loop.
        alignment: default grid step; see :func:`default_alignment`.

    Raises:
        UserError: CUDA asked for but not available, or an unknown precision.
    """

    name = "torch"

    def __init__(
        self,
        *,
        precision: str = "fp32",
        device: str | None = "cpu",
        channels_last: bool | None = None,
        cuda_graph: bool = True,
        inner: int = 20,
        threads: int | None = 1,
        warmup: int = 10,
        runs: int = 30,
        min_time_s: float = 0.1,
        alignment: int | None = None,
    ) -> None:
        import torch

        dtype = torch_dtype(precision)
        try:
            self.device = torch.device(device or "cpu")
        except RuntimeError as exc:
            raise UserError(f"unknown device {device!r}: {exc}") from exc
        if self.device.type not in ("cpu", "cuda"):
            raise UserError(f"the torch backend runs on cpu or cuda, not {device!r}")
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise UserError("the torch backend was asked for CUDA, but CUDA is not available")
            torch.backends.cudnn.benchmark = True
        elif threads is not None:
            torch.set_num_threads(check_thread_count(threads, "the torch backend's threads"))
        #: CPU threads every measurement runs at (None on CUDA).
        self.threads = torch.get_num_threads() if self.device.type == "cpu" else None
        if inner < 1 or runs < 1:
            raise UserError("inner and runs must be >= 1")
        self.precision = precision
        self.dtype = dtype
        self.channels_last = (
            self.device.type == "cuda" if channels_last is None else bool(channels_last)
        )
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.inner = inner
        self.warmup, self.runs, self.min_time_s = warmup, runs, min_time_s
        self.alignment = alignment or default_alignment(self.device.type, precision)
        self._torch = torch

    def _prepare(self, sig: LayerSignature, c_in: int, c_out: int) -> tuple[Any, Any]:
        torch = self._torch
        fmt = torch.channels_last if self.channels_last and sig.op == "conv2d" else None
        module = layer_module(sig, c_in, c_out).to(self.device, self.dtype)
        x = torch.randn(input_shape(sig, c_in), device=self.device, dtype=self.dtype)
        if fmt is not None:
            module = module.to(memory_format=fmt)
            x = x.contiguous(memory_format=fmt)
        return module, x

    def measure(self, sig: LayerSignature, c_in: int, c_out: int) -> Timing:
        """Latency of conv/linear + bias + activation in milliseconds; see the module notes."""
        torch = self._torch
        module, x = self._prepare(sig, c_in, c_out)
        with torch.inference_mode():
            if self.device.type == "cpu":
                if torch.get_num_threads() != self.threads:  # changed since (process-wide)
                    torch.set_num_threads(self.threads)
                clock = "thread" if self.threads == 1 else "wall"
                return time_callable(
                    lambda: module(x),
                    warmup=self.warmup,
                    runs=self.runs,
                    min_time_s=self.min_time_s,
                    clock=clock,
                )
            return self._measure_cuda(module, x)

    def _measure_cuda(self, module: Any, x: Any) -> Timing:
        torch = self._torch
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(max(self.warmup, 3)):  # cudnn.benchmark autotunes here
                module(x)
            stream.synchronize()
            if self.cuda_graph:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=stream):
                    for _ in range(self.inner):
                        module(x)

                def step() -> None:
                    graph.replay()
            else:

                def step() -> None:
                    for _ in range(self.inner):
                        module(x)

            for _ in range(max(self.warmup // 2, 2)):
                step()
            pairs = []
            for _ in range(self.runs):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record(stream)
                step()
                end.record(stream)
                pairs.append((start, end))
            stream.synchronize()
        return Timing.from_samples([s.elapsed_time(e) / self.inner for s, e in pairs])

    def fingerprint(self) -> dict[str, Any]:
        torch = self._torch
        versions: dict[str, Any] = {"torch": torch.__version__}
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            device = props.name
            versions["cuda"] = torch.version.cuda
            versions["cudnn"] = torch.backends.cudnn.version()
            extra = {"compute_capability": f"{props.major}.{props.minor}"}
        else:
            device = f"cpu: {host_fingerprint()['cpu']}"
            extra = {"threads": self.threads}
        return {
            "backend": self.name,
            "precision": self.precision,
            "device": device,
            **extra,
            "versions": versions,
            "options": {
                "channels_last": self.channels_last,
                "cuda_graph": self.cuda_graph,
                "inner": self.inner if self.device.type == "cuda" else 1,
            },
            "host": host_fingerprint(),
        }
