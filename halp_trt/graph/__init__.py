"""Channel groups of a model: what can be pruned together, and exact removal."""

from .channel_graph import ChannelGraph, ChannelGroup, ChannelRef, CheckResult
from .uniform import uniform_keep, uniform_keep_count, uniform_width

__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "ChannelRef",
    "CheckResult",
    "uniform_keep",
    "uniform_keep_count",
    "uniform_width",
]
