"""Uniformly narrowed copies of a model: every prunable group at one fraction of its width.

Used to calibrate the network latency model on a few whole-network measurements
(``lut-builder build``) and as the uniform-width baseline of the pruning benchmarks.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import nn

from .channel_graph import ChannelGraph


def uniform_keep_count(size: int, fraction: float, alignment: int) -> int:
    """Channels a group of ``size`` keeps at ``fraction``: rounded to the nearest multiple
    of ``alignment``, at least one ``alignment`` step (or the whole group if smaller),
    at most ``size``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], not {fraction!r}")
    if alignment < 1:
        raise ValueError(f"alignment must be a positive integer, not {alignment!r}")
    k = int(math.floor(fraction * size / alignment + 0.5)) * alignment
    return min(size, max(alignment, k))


def uniform_width(
    model: nn.Module,
    example_inputs: Any,
    fraction: float,
    alignment: int = 1,
    *,
    scores: Mapping[int, Any] | None = None,
) -> nn.Module:
    """A copy of ``model`` whose every prunable group keeps ``fraction`` of its channels.

    Args:
        model: the model (not modified).
        example_inputs: its example input(s).
        fraction: kept fraction in (0, 1].
        alignment: widths are multiples of it (see :func:`uniform_keep_count`).
        scores: group id to per-channel scores; the highest-scoring channels are kept.
            Without, the first channels are kept (what latency depends on is the count).

    Returns:
        The narrowed copy, in eval mode.
    """
    slim = copy.deepcopy(model).eval()
    graph = ChannelGraph(slim, example_inputs)
    keep = {}
    for g in graph.prunable:
        k = uniform_keep_count(g.size, fraction, alignment)
        if scores is None:
            keep[g.id] = list(range(k))
        else:
            order = np.argsort(-np.asarray(scores[g.id], dtype=float), kind="stable")
            keep[g.id] = sorted(order[:k].tolist())
    return graph.remove(keep)
