"""PyTorch, whole models: an ``nn.Module`` on CPU (eager) or CUDA (one CUDA graph), in
eval mode without autograd, optionally channels_last and fp16/bf16."""

from __future__ import annotations

import os
from typing import Any

from ...errors import UserError
from ...parallelism import check_thread_count
from ..base import Runner, register_runner
from .measurer import torch_dtype


@register_runner("torch")
class TorchRunner(Runner):
    """PyTorch inference on CPU (eager) or CUDA (a captured CUDA graph, replayed).

    On CUDA a whole model run eagerly from Python costs its kernel launches: a
    ResNet-50 at batch 32 in fp16 took 5.2 ms eagerly on an H200 whether at full width or
    pruned to about half its weights (speed-up 1.01x), the time of the launches, not of
    the GPU's work. The torch backend times its table's layers in CUDA graphs; the runner
    replays the whole model as one graph, so that it and the table time the same thing and
    a narrower model shows the GPU time it saves. A model that cannot be captured (host
    synchronisation, data-dependent shapes) runs eagerly, with :attr:`note` saying why.

    Args:
        model: an ``nn.Module``; a copy of it is put in eval mode, moved and cast (the
            caller's model is left as it was, on its device and in its dtype).
        example_input: a tensor of the input shape.
        device: ``"cpu"`` (default), ``"cuda"`` or ``"cuda:N"``.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (weights and input cast).
        channels_last: use the NHWC memory format (what cuDNN's fastest kernels want);
            None (default): on CUDA, off on CPU, as the torch backend measures its layers,
            so that a table's points and its whole-model calibration share one layout.
        threads: CPU threads for torch, or None for the process's current setting.
            Torch's thread count is process-wide: every call sets it back to this.
        cuda_graph: replay a captured CUDA graph (CUDA only; default True there).
    """

    name = "torch"

    def __init__(
        self,
        model: Any,
        example_input: Any,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        channels_last: bool | None = None,
        threads: int | None = None,
        cuda_graph: bool | None = None,
    ) -> None:
        import copy

        import torch

        if isinstance(model, (str, os.PathLike)):
            raise UserError("the torch runner takes an nn.Module, not a file path")
        dtype = torch_dtype(precision)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("the torch runner was asked for CUDA, but no CUDA device is available")
        if threads is not None:
            torch.set_num_threads(check_thread_count(threads, "the torch runner's threads"))
        #: CPU threads every call runs at (None on CUDA).
        self.threads = torch.get_num_threads() if self.device.type == "cpu" else None
        if self.threads == 1:
            self.clock = "thread"
        if channels_last is None:
            channels_last = self.device.type == "cuda"
        #: Whether the model and input are NHWC.
        self.channels_last = bool(channels_last)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        model = copy.deepcopy(model).eval()
        self.model = model.to(device=self.device, dtype=dtype, memory_format=fmt)
        x = torch.as_tensor(example_input)
        self.input = x.to(device=self.device, dtype=dtype).contiguous(memory_format=fmt)
        #: Why the model runs eagerly on CUDA ("" when it replays a graph, or on CPU).
        self.note = ""
        self._graph: Any = None
        self._output: Any = None
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as the torch backend measures layers
            if cuda_graph is None or cuda_graph:
                self._capture()

    def _capture(self) -> None:
        """Warm up on a side stream (cuDNN autotunes there), then capture one graph."""
        import torch

        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.inference_mode(), torch.cuda.stream(stream):
                for _ in range(3):
                    self.model(self.input)
                stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=stream):
                    output = self.model(self.input)
            stream.synchronize()
        except Exception as exc:  # capture is not possible for every model
            torch.cuda.synchronize(self.device)
            why = f"{type(exc).__name__}: {exc}".splitlines()[0]
            self.note = f"runs eagerly: CUDA graph capture failed ({why})"
            return
        self._graph, self._output = graph, output

    @property
    def cuda_graph(self) -> bool:
        """Whether each call replays a captured CUDA graph."""
        return self._graph is not None

    def __call__(self) -> Any:
        import torch

        if self._graph is not None:
            self._graph.replay()
            return self._output
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)  # another runner of this process changed it
        with torch.inference_mode():
            return self.model(self.input)

    def sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
