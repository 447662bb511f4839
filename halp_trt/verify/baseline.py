"""A uniform-width baseline: every prunable group keeps the same fraction of channels.

Not the latency-aware solver: it ignores latency and importance (it keeps each group's
first channels), which is what makes it a fixed, reproducible reference for benchmarks
and tests of the export and verify steps. Keeping a fraction ``f`` of every group
leaves about ``f**2`` of the convolutions' multiply-accumulates.
"""

from __future__ import annotations

from typing import Any


def uniform_keep(graph: Any, fraction: float, *, multiple: int = 1) -> dict[int, list[int]]:
    """A keep plan that keeps ``ceil(fraction * size)`` channels of every prunable group.

    Args:
        graph: a :class:`halp_trt.graph.ChannelGraph`.
        fraction: in (0, 1].
        multiple: round each kept count up to a multiple of this (channel alignment),
            never above the group's size.

    Raises:
        ValueError: a fraction outside (0, 1] or a multiple below 1.
    """
    from ..graph import uniform_keep as keep_plan

    return keep_plan(graph, fraction, multiple, rounding="up")


def uniform_prune(model: Any, example_input: Any, fraction: float, *, multiple: int = 1) -> Any:
    """A copy of ``model`` with every prunable group cut to ``fraction`` of its channels.

    Returns:
        The slim ``nn.Module`` (eval mode); ``model`` is left as it was.
    """
    from ..graph import uniform_width

    return uniform_width(model, example_input, fraction, multiple, rounding="up")
