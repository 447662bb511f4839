"""Whole-model runners: one inference of a model on a backend, behind one small interface.

``make_runner(backend, model_or_path, example_input, **options)`` returns a
:class:`Runner`; ``runner()`` runs one inference, ``runner.sync()`` waits for the device,
``runner.close()`` frees it. Runners feed the timing loops of :mod:`lut_builder.timing`
(end-to-end latency, overhead calibration, fidelity benchmarks, verification).

Backends:

- ``onnxruntime``: an ``nn.Module`` (exported to a temporary ONNX file) or an ``.onnx``
  path, on the CPU execution provider, one intra-op thread by default: on a small shared
  machine a single thread gives far steadier timings than a thread pool whose workers
  compete with other processes.
- ``torch``: an ``nn.Module`` on CPU or CUDA, eval mode, no autograd, optionally
  channels_last and fp16/bf16.
- ``tensorrt``: dispatched to ``lut_builder.backends.tensorrt.make_runner`` (imported
  only when asked for); TensorRT missing is a :class:`~lut_builder.errors.UserError`.

ONNX export (:func:`export_onnx`) uses the TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``): on torch 2.13 it exports a CIFAR ResNet-56 in
about 1.3 s on this class of machine and folds eval-mode BatchNorm into the convolutions,
while the default dynamo exporter takes 12-22 s for the same model. The dynamo exporter is
the fallback when the TorchScript one is unavailable or fails.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from .errors import UserError

PRECISIONS = ("fp32", "fp16", "bf16")


class Runner:
    """One model on one backend, ready to run.

    Subclasses implement :meth:`__call__` (one inference with the example input) and may
    override :meth:`sync` (wait for asynchronous work) and :meth:`close`.
    """

    #: Backend name, as given to :func:`make_runner`.
    name: str = ""
    #: The clock to time this runner with (see :mod:`lut_builder.timing`): ``"thread"``
    #: for single-threaded CPU inference that runs on the calling thread, else ``"wall"``.
    clock: str = "wall"

    def __call__(self) -> Any:
        raise NotImplementedError

    def sync(self) -> None:
        """Block until all work started by :meth:`__call__` has finished."""

    def close(self) -> None:
        """Free the session, device memory and temporary files."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_runner(backend: str, model_or_path: Any, example_input: Any, **options: Any) -> Runner:
    """A runner for one model on a named backend.

    Args:
        backend: ``"onnxruntime"``, ``"torch"`` or ``"tensorrt"``.
        model_or_path: an ``nn.Module``, or for onnxruntime/tensorrt a path to a model
            file (``.onnx``; ``.engine`` for tensorrt).
        example_input: a tensor (or numpy array) of the input shape; its values are fed.
        **options: backend options; see :class:`OnnxRuntimeRunner` and
            :class:`TorchRunner`.

    Returns:
        A :class:`Runner`.

    Raises:
        UserError: unknown backend, a missing model file, TensorRT or CUDA not available.
    """
    if backend == "onnxruntime":
        return OnnxRuntimeRunner(model_or_path, example_input, **options)
    if backend == "torch":
        return TorchRunner(model_or_path, example_input, **options)
    if backend == "tensorrt":
        trt_backend = _import_tensorrt_backend()
        return trt_backend.make_runner(model_or_path, example_input, **options)
    raise UserError(f"unknown runner backend {backend!r}; known: onnxruntime, tensorrt, torch")


def _import_tensorrt_backend() -> Any:
    """``lut_builder.backends.tensorrt``, or a UserError when TensorRT cannot be used."""
    import importlib

    try:
        return importlib.import_module("lut_builder.backends.tensorrt")
    except ImportError as exc:
        raise UserError(
            f"the tensorrt backend needs TensorRT, which is not installed here ({exc})"
        ) from exc


def export_onnx(
    model: Any, example_input: Any, path: str | os.PathLike, *, opset: int = 17
) -> Path:
    """Export an ``nn.Module`` to ONNX for inference (eval mode, BatchNorm folded).

    Tries the TorchScript-based exporter first (fast, folds BN into convs), then the
    dynamo exporter. The file is written beside ``path`` and moved into place, so a
    failed export leaves nothing behind.

    Args:
        model: the module; it is exported in eval mode and its mode restored afterwards.
        example_input: a tensor of the input shape.
        path: the ``.onnx`` file to write.
        opset: ONNX opset for the TorchScript exporter.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        UserError: neither exporter can export the model.
    """
    import torch

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    was_training = model.training
    model.eval()
    errors = []
    try:
        for kwargs in ({"dynamo": False, "opset_version": opset}, {"dynamo": True}):
            try:
                with warnings.catch_warnings(), torch.no_grad():
                    # The TorchScript exporter warns that it is deprecated on every call.
                    warnings.simplefilter("ignore")
                    torch.onnx.export(
                        model, (example_input,), str(tmp), input_names=["input"], **kwargs
                    )
                os.replace(tmp, path)
                return path
            except Exception as exc:  # any exporter failure: try the next one
                errors.append(
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                )
    finally:
        model.train(was_training)
        if tmp.exists():
            tmp.unlink()
    raise UserError(f"cannot export the model to ONNX: {' / '.join(errors)}")


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime on the CPU execution provider.

    Args:
        model_or_path: an ``nn.Module`` (exported to a temporary ONNX file, deleted on
            :meth:`close`) or a path to an ``.onnx`` file.
        example_input: a tensor or numpy array fed to the model's first input.
        threads: intra-op threads (default 1: steadiest timings on a shared machine).
        optimization: ``"all"`` (default, what deployment uses: layout transforms and
            conv+bias+activation fusion), ``"extended"``, ``"basic"`` or ``"disable"``.
    """

    name = "onnxruntime"

    def __init__(
        self,
        model_or_path: Any,
        example_input: Any,
        *,
        threads: int = 1,
        optimization: str = "all",
    ) -> None:
        import onnxruntime as ort

        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }
        if optimization not in levels:
            raise UserError(
                f"unknown optimization level {optimization!r}; known: {', '.join(levels)}"
            )
        if threads < 1:
            raise UserError("threads must be >= 1")
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        if isinstance(model_or_path, (str, os.PathLike)):
            path = Path(model_or_path)
            if not path.is_file():
                raise UserError(f"ONNX file {str(path)!r} does not exist")
        else:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="lut-runner-")
            path = export_onnx(model_or_path, example_input, Path(self._tmpdir.name) / "model.onnx")
        self.path = path
        self.threads = threads
        # With one intra-op thread ONNX Runtime runs on the caller's thread, so that
        # thread's CPU time is the inference's cost, immune to preemption.
        self.clock = "thread" if threads == 1 else "wall"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = levels[optimization]
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


class TorchRunner(Runner):
    """PyTorch eager inference on CPU or CUDA.

    Args:
        model: an ``nn.Module``; it is put in eval mode (and moved/cast in place).
        example_input: a tensor of the input shape.
        device: ``"cpu"`` (default), ``"cuda"`` or ``"cuda:N"``.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (weights and input cast).
        channels_last: use the NHWC memory format (what cuDNN's fastest kernels want).
        threads: CPU threads for torch (a process-wide setting), or None to leave it.
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
        if precision not in PRECISIONS:
            raise UserError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("the torch runner was asked for CUDA, but no CUDA device is available")
        if threads is not None:
            torch.set_num_threads(threads)
        if self.device.type == "cpu" and torch.get_num_threads() == 1:
            self.clock = "thread"
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(device=self.device, dtype=dtype, memory_format=fmt)
        x = torch.as_tensor(example_input)
        self.input = x.to(device=self.device, dtype=dtype).contiguous(memory_format=fmt)

    def __call__(self) -> Any:
        import torch

        with torch.inference_mode():
            return self.model(self.input)

    def sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)


def _to_numpy(x: Any, onnx_type: str = "tensor(float)") -> Any:
    """The input as a contiguous array of the ONNX input's type (an fp16 model takes fp16)."""
    import numpy as np

    dtype = np.float16 if onnx_type == "tensor(float16)" else np.float32
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.ascontiguousarray(x, dtype=dtype)
