"""What ``halp-trt run`` (and :func:`halp_trt.run`) asks for: the whole path from a
model and a latency budget to a verified, deployable model."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

from lut_builder.parallelism import usable_cpus

from .base import ConfigBase
from .prune import PruneConfig
from .train import TrainConfig

#: Backends a run can measure and verify on; ``auto`` picks TensorRT, else PyTorch on
#: CUDA, else ONNX Runtime on the CPU.
RUN_BACKENDS = ("auto", "tensorrt", "torch", "onnxruntime")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass
class RunConfig(ConfigBase):
    """One run of the whole pipeline (see :mod:`halp_trt.pipeline` for the stages).

    Attributes:
        model: a model spec (``halp_trt.models:resnet20``, ``torchvision:resnet50``,
            ``file.py:factory``, each optionally with factory keywords:
            ``torchvision:mobilenet_v2,num_classes=10``) or a saved ``.pt`` module.
        weights: a state_dict file (or checkpoint holding one) to load into the model.
        data: ``digits``, ``npz:PATH`` or ``imagefolder:PATH``.
        input_shape: the deployment input ``(N, C, H, W)`` (or ``"N,C,H,W"``).
        out: the run directory.
        prune: the pruning (target, criterion, schedule, solver).
        train: fine-tuning while pruning (epochs >= 1: pruning happens while
            training); ``seed`` also seeds the dense model's initialisation.
        backend: ``auto``, ``tensorrt``, ``torch`` or ``onnxruntime``.
        precision: ``fp32``, ``fp16``, ``bf16`` or ``int8`` (of the table, the exported
            models and the engines; ``int8`` is explicit Q/DQ quantization calibrated on
            ``data``, on ``onnxruntime`` or ``tensorrt``).
        lut: a latency table to reuse when its fingerprint matches the backend.
        step: channel step of the table's grid (None: the backend's alignment).
        threads: CPU threads of the deployment (ONNX Runtime, torch on the CPU): the
            table is measured, its latency model calibrated and verify timed at this
            count (a ``lut`` measured at another is refused). Ignored on GPUs; at most the
            CPUs this process may use (:func:`lut_builder.parallelism.usable_cpus`).
        pretrain_epochs: train the dense model first (for untrained model specs).
        verify_rounds: timed rounds of the interleaved original-vs-pruned timing.
        feedback: on a CPU backend at FP32, measure each pruning step's plan on this
            machine and correct the budgets by it (:class:`halp_trt.prune.MeasuredLatency`).
        resume: continue the run in ``out`` after its last completed stage.
        progress: show progress bars.

    Raises:
        ConfigError: a field outside what it allows (checked on construction).
    """

    _nested: ClassVar[dict[str, type[ConfigBase]]] = {"prune": PruneConfig, "train": TrainConfig}

    model: str
    data: str
    input_shape: tuple[int, ...] | str
    out: str
    prune: PruneConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    backend: str = "auto"
    precision: str = "fp32"
    lut: str | None = None
    weights: str | None = None
    step: int | None = None
    threads: int = 1
    pretrain_epochs: int = 0
    verify_rounds: int = 30
    feedback: bool = True
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("model", "data", "out"):
            self._require(name, isinstance(getattr(self, name), str) and getattr(self, name), "must be a non-empty string")  # fmt: skip
        self.out = str(self.out)
        self.input_shape = self._shape()
        for name, cls in self._nested.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, cls.from_dict(value))
            self._require(name, isinstance(getattr(self, name), cls), f"must be a {cls.__name__}")
        self.train.require_training()
        self._choice("backend", RUN_BACKENDS)
        self._choice("precision", PRECISIONS)
        self._require("precision", not (self.precision == "int8" and self.backend == "torch"), "int8 runs on onnxruntime or tensorrt (Q/DQ models), not on the torch backend")  # fmt: skip
        if self.lut is not None:
            self.lut = str(self.lut)
        if isinstance(self.weights, os.PathLike):
            self.weights = os.fspath(self.weights)
        self._require("weights", self.weights is None or (isinstance(self.weights, str) and self.weights.strip() != ""), "must be None or the path of a state_dict file")  # fmt: skip
        self._int("step", 1, optional=True)
        self._int("threads", 1)
        cpus = usable_cpus()
        self._require("threads", self.threads <= cpus, f"must be at most {cpus}, the CPUs this process may use")  # fmt: skip
        self._int("pretrain_epochs", 0)
        self._int("verify_rounds", 1)
        self._choice("resume", (True, False))
        self._choice("progress", (True, False))
        self._choice("feedback", (True, False))

    def _shape(self) -> tuple[int, ...]:
        from ..errors import UserError
        from ..specs import parse_shape

        shape = self.input_shape
        try:
            dims = parse_shape(shape) if isinstance(shape, str) else tuple(shape)
        except (UserError, TypeError):
            dims = ()
        if len(dims) != 4 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):  # fmt: skip
            self._fail("input_shape", "must be N,C,H,W (four positive integers)")
        return tuple(int(d) for d in dims)

    @property
    def shape_text(self) -> str:
        """``input_shape`` as ``N,C,H,W``."""
        return ",".join(str(d) for d in self.input_shape)
