"""The built-in trainer's hyper-parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lut_builder.cli_args import MAX_SEED

from ..errors import UserError
from .base import ConfigBase


@dataclass
class TrainConfig(ConfigBase):
    """Training hyper-parameters of the built-in classification trainer.

    Attributes:
        epochs: passes over the training set (0: evaluate only).
        batch_size: minibatch size per process.
        lr: peak learning rate (after warm-up).
        momentum, weight_decay: SGD's.
        warmup_epochs: epochs of linear warm-up from 0 (fractions allowed).
        label_smoothing: cross-entropy label smoothing.
        amp: mixed precision; None turns it on exactly when training on CUDA.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``; None: CUDA if present, else CPU.
        seed: seeds initial shuffling and everything random in the loop.
        workers: data-loader worker processes.
        eval_steps: evaluate on the validation set after every pruning step too.
        bn_batches: after the last epoch, re-estimate every BatchNorm's running mean and
            variance over this many training minibatches with the final weights
            (precise BN; at most one pass over the training set; 0: keep the running
            averages training left). Pruning while training leaves those averages
            behind the weights: every step changes what each BatchNorm sees.
        slim: with a pruner, remove the pruned channels as soon as its last step has
            run and train the slim model from there (the optimizer's momentum carried
            over for the channels kept); False trains the masked full-size model to the
            end. Both compute the same function (a masked channel's weights, outputs and
            gradients are zero); the slim one costs what the pruned model costs.

    Raises:
        ConfigError: a field outside its range (checked on construction).
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    amp: bool | None = None
    device: str | None = None
    seed: int = 0
    workers: int = 0
    eval_steps: bool = False
    bn_batches: int = 100
    slim: bool = True

    def __post_init__(self) -> None:
        self._int("epochs", 0)
        self._int("batch_size", 1)
        self._number("lr", low=0.0, open_low=True)
        self._number("momentum", low=0.0, high=1.0)
        self._number("weight_decay", low=0.0)
        self._number("warmup_epochs", low=0.0)
        self._number("label_smoothing", low=0.0, high=1.0)
        self._choice("amp", (None, True, False))
        self._require(
            "device",
            self.device is None or (isinstance(self.device, str) and bool(self.device)),
            "must be cpu, cuda, cuda:N or None",
        )
        self._int("seed", 0, most=MAX_SEED)
        self._int("workers", 0)
        self._choice("eval_steps", (True, False))
        self._int("bn_batches", 0)
        self._choice("slim", (True, False))

    def require_training(self) -> None:
        """Check that the run trains at all (``epochs >= 1``): HALP prunes while training.

        Raises:
            ConfigError: ``epochs`` is 0.
        """
        self._require(
            "epochs", self.epochs >= 1, "must be at least 1: pruning happens while training"
        )

    def resolved_device(self) -> Any:
        """The ``torch.device`` to train on.

        Raises:
            UserError: a CUDA device asked for where CUDA is not available, or a
                device string torch does not know.
        """
        import torch

        if self.device:
            try:
                dev = torch.device(self.device)
            except RuntimeError as exc:
                raise UserError(f"device {self.device!r} is not a torch device: {exc}") from None
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise UserError(f"device {self.device} asked for but CUDA is not available")
            return dev
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
