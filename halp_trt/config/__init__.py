"""Typed configurations, validated once on construction, with a JSON round trip.

:class:`PruneConfig` (the pruning loop), :class:`TrainConfig` (the built-in trainer)
and :class:`RunConfig` (the whole pipeline). A bad value is one :class:`ConfigError`
naming the field and what it allows.
"""

from .base import ConfigBase, ConfigError
from .prune import PruneConfig
from .run import PRECISIONS, RUN_BACKENDS, RunConfig
from .train import TrainConfig

__all__ = [
    "PRECISIONS",
    "RUN_BACKENDS",
    "ConfigBase",
    "ConfigError",
    "PruneConfig",
    "RunConfig",
    "TrainConfig",
]
