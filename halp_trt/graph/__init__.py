"""Channel groups of a model: what can be pruned together, and exact removal."""

from .channel_graph import ChannelGraph, ChannelGroup, ChannelRef, CheckResult
from .uniform import (
    CALIBRATION_FRACTIONS,
    CHECK_MIN_KEEP,
    calibration_variants,
    check_variants,
    random_keep,
    uniform_keep,
    uniform_keep_count,
    uniform_width,
)

__all__ = [
    "CALIBRATION_FRACTIONS",
    "CHECK_MIN_KEEP",
    "ChannelGraph",
    "ChannelGroup",
    "ChannelRef",
    "CheckResult",
    "calibration_variants",
    "check_variants",
    "random_keep",
    "uniform_keep",
    "uniform_keep_count",
    "uniform_width",
]
