"""A built-in classification trainer and data specs, used by ``halp-trt prune``."""

from ..config.train import TrainConfig
from .data import DataError, ImageData, load_data
from .trainer import Trainer, TrainResult, evaluate, lr_at, recalibrate_bn

__all__ = [
    "DataError",
    "ImageData",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "evaluate",
    "load_data",
    "lr_at",
    "recalibrate_bn",
]
