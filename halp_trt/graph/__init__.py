"""Channel groups of a model: what can be pruned together, and exact removal."""

from .channel_graph import ChannelGraph, ChannelGroup, ChannelRef, CheckResult

__all__ = ["ChannelGraph", "ChannelGroup", "ChannelRef", "CheckResult"]
