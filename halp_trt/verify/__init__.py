"""Verify: original and pruned model timed on the same backend, in one interleaved run.

:func:`verify_models` reports each model's median latency and throughput, the speed-up
(median per-round ratio) with its spread, and predicted vs measured latency for a plan.
:func:`uniform_prune` makes a uniform-width baseline for benchmarks and tests.
"""

from .baseline import uniform_keep, uniform_prune
from .compare import ModelTiming, SpeedupStats, VerifyReport, speedup_stats, verify_models

__all__ = [
    "ModelTiming",
    "SpeedupStats",
    "VerifyReport",
    "speedup_stats",
    "uniform_keep",
    "uniform_prune",
    "verify_models",
]
