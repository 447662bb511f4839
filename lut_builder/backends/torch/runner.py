"""PyTorch eager, whole models: an ``nn.Module`` on CPU or CUDA, in eval mode without
autograd, optionally channels_last and fp16/bf16."""

from __future__ import annotations

import os
from typing import Any

from ...errors import UserError
from ..base import Runner, register_runner
from .measurer import torch_dtype


@register_runner("torch")
class TorchRunner(Runner):
    """PyTorch eager inference on CPU or CUDA.

    Args:
        model: an ``nn.Module``; it is put in eval mode (and moved/cast in place).
        example_input: a tensor of the input shape.
        device: ``"cpu"`` (default), ``"cuda"`` or ``"cuda:N"``.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (weights and input cast).
        channels_last: use the NHWC memory format (what cuDNN's fastest kernels want).
        threads: CPU threads for torch, or None for the process's current setting.
            Torch's thread count is process-wide: every call sets it back to this.
    """

    name = "torch"

    def __init__(
        self,
        model: Any,
        example_input: Any,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        channels_last: bool = False,
        threads: int | None = None,
    ) -> None:
        import torch

        if isinstance(model, (str, os.PathLike)):
            raise UserError("the torch runner takes an nn.Module, not a file path")
        dtype = torch_dtype(precision)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("the torch runner was asked for CUDA, but no CUDA device is available")
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise UserError(f"the torch runner's threads must be >= 1, not {threads!r}")
            torch.set_num_threads(threads)
        #: CPU threads every call runs at (None on CUDA).
        self.threads = torch.get_num_threads() if self.device.type == "cpu" else None
        if self.threads == 1:
            self.clock = "thread"
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(device=self.device, dtype=dtype, memory_format=fmt)
        x = torch.as_tensor(example_input)
        self.input = x.to(device=self.device, dtype=dtype).contiguous(memory_format=fmt)

    def __call__(self) -> Any:
        import torch

        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)  # another runner of this process changed it
        with torch.inference_mode():
            return self.model(self.input)

    def sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
