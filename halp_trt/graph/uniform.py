"""Uniformly narrowed models: every prunable group at one fraction of its width.

One implementation for every uniform-width copy the project makes: the calibration of
the network latency model (``lut-builder build``: copies at 3/4 and 1/2 width, widths
rounded to the nearest alignment step), the uniform baseline of the pruning benchmarks
(channels chosen by score), and the fixed reference models of the export and verify
tests (:mod:`halp_trt.verify.baseline`, widths rounded up).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import nn

from .channel_graph import ChannelGraph

ROUNDING = ("nearest", "up")


def uniform_keep_count(
    size: int, fraction: float, alignment: int, rounding: str = "nearest"
) -> int:
    """Channels a group of ``size`` keeps at ``fraction``: ``fraction * size`` rounded to
    a multiple of ``alignment`` (``"nearest"`` or ``"up"``), at least one ``alignment``
    step (or the whole group if smaller), at most ``size``.

    Raises:
        ValueError: a fraction outside (0, 1], an alignment below 1, an unknown rounding.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], not {fraction!r}")
    if alignment < 1:
        raise ValueError(f"alignment must be a positive integer, not {alignment!r}")
    if rounding not in ROUNDING:
        raise ValueError(f"rounding must be one of {ROUNDING}, not {rounding!r}")
    steps = fraction * size / alignment
    k = (math.ceil(steps) if rounding == "up" else math.floor(steps + 0.5)) * alignment
    return min(size, max(alignment, k))


def uniform_keep(
    graph: ChannelGraph,
    fraction: float,
    alignment: int = 1,
    *,
    scores: Mapping[int, Any] | None = None,
    rounding: str = "nearest",
) -> dict[int, list[int]]:
    """A keep plan with every prunable group at ``fraction`` of its channels.

    Args:
        graph: the model's channel graph.
        fraction, alignment, rounding: as :func:`uniform_keep_count`.
        scores: group id to per-channel scores; the highest-scoring channels are kept.
            Without, the first channels are kept (what latency depends on is the count).
    """
    keep = {}
    for g in graph.prunable:
        k = uniform_keep_count(g.size, fraction, alignment, rounding)
        if scores is None:
            keep[g.id] = list(range(k))
        else:
            order = np.argsort(-np.asarray(scores[g.id], dtype=float), kind="stable")
            keep[g.id] = sorted(order[:k].tolist())
    return keep


def uniform_width(
    model: nn.Module,
    example_inputs: Any,
    fraction: float,
    alignment: int = 1,
    *,
    scores: Mapping[int, Any] | None = None,
    rounding: str = "nearest",
) -> nn.Module:
    """A copy of ``model`` whose every prunable group keeps ``fraction`` of its channels
    (see :func:`uniform_keep`); ``model`` is left as it was.

    Returns:
        The narrowed copy, in eval mode.
    """
    slim = copy.deepcopy(model).eval()
    graph = ChannelGraph(slim, example_inputs)
    keep = uniform_keep(graph, fraction, alignment, scores=scores, rounding=rounding)
    return graph.remove(keep).eval()
