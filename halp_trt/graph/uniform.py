"""Narrowed copies of a model: every prunable group at one fraction of its width, or
each at a random width.

One implementation for every uniform-width copy the project makes: the calibration of
the network latency model (:func:`calibration_variants`: copies at 3/4 and 1/2 width,
widths rounded to the nearest alignment step, which ``lut_builder.build_table`` finds
through the ``lut_builder.calibration_variants`` entry point), the uniform baseline of the pruning benchmarks
(channels chosen by score), and the fixed reference models of the export and verify
tests (:mod:`halp_trt.verify.baseline`, widths rounded up). And the copies a table's
build checks its latency model on (:func:`check_variants`: every group at its own random
width, as pruning leaves a network; the ``lut_builder.check_variants`` entry point).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import nn

from ..errors import PruningError
from .channel_graph import ChannelGraph

ROUNDING = ("nearest", "up")
#: Widths of the narrowed copies the affine network latency model is fitted on.
CALIBRATION_FRACTIONS = (0.75, 0.5)
#: The smallest fraction of its channels a group keeps in a random-width copy.
CHECK_MIN_KEEP = 0.25


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
        scores: group id to per-channel scores; the highest-scoring channels are kept
            (whole units of a group coupled through grouped convolutions, by their
            summed score). Without, the first channels are kept (what latency depends
            on is the count). Counts are multiples of ``lcm(alignment, group.unit)``.
    """
    keep = {}
    for g in graph.prunable:
        # Whole units (a grouped convolution's groups): counts are multiples of both,
        # and at least two units (one group left would be a dense convolution).
        k = uniform_keep_count(g.size, fraction, math.lcm(alignment, g.unit), rounding)
        if g.unit > 1:
            k = max(k, min(g.size, 2 * g.unit))
        if scores is None:
            keep[g.id] = list(range(k))
        else:
            per_unit = np.asarray(scores[g.id], dtype=float).reshape(-1, g.unit).sum(1)
            units = np.argsort(-per_unit, kind="stable")[: k // g.unit]
            keep[g.id] = sorted(int(u) * g.unit + r for u in units for r in range(g.unit))
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


def calibration_variants(model: nn.Module, x: Any, alignment: int) -> list[nn.Module]:
    """Copies of ``model`` with every prunable channel group at 3/4 and 1/2 width.

    What ``lut_builder.build_table`` fits its affine network latency model on; registered
    as the ``lut_builder.calibration_variants`` entry point (``halp_trt`` in
    pyproject.toml), so ``lut-builder build`` finds it without importing halp_trt itself.

    Args:
        model: the unpruned model (left as it was).
        x: its example input.
        alignment: the table's channel step; widths are rounded to the nearest multiple.

    Returns:
        One copy per :data:`CALIBRATION_FRACTIONS`, in eval mode; empty when the model
        has no prunable group or its channel groups cannot be traced (the calibration is
        then additive).
    """
    try:
        if not ChannelGraph(copy.deepcopy(model), x).prunable:
            return []
        return [uniform_width(model, x, f, alignment) for f in CALIBRATION_FRACTIONS]
    except PruningError:
        return []


def random_keep(
    graph: ChannelGraph,
    rng: np.random.Generator,
    alignment: int = 1,
    min_keep: float = CHECK_MIN_KEEP,
) -> dict[int, list[int]]:
    """A keep plan with every prunable group at its own random width: a multiple of
    ``lcm(alignment, group.unit)`` (or the whole group) from ``min_keep`` of the group up,
    drawn uniformly, then that many random channels (whole units of a grouped
    convolution, at least two of them).

    Args:
        graph: the model's channel graph.
        rng: the random generator (the plan is a function of its state).
        alignment: the channel step, e.g. a latency table's grid step.
        min_keep: the smallest kept fraction, in (0, 1].

    Raises:
        ValueError: ``min_keep`` outside (0, 1] or an alignment below 1.
    """
    if not 0 < min_keep <= 1:
        raise ValueError(f"min_keep must be in (0, 1], not {min_keep!r}")
    if alignment < 1:
        raise ValueError(f"alignment must be a positive integer, not {alignment!r}")
    keep = {}
    for g in graph.prunable:
        step = math.lcm(alignment, g.unit)
        lo = max(step, math.ceil(min_keep * g.size / step) * step)
        choices = sorted(set(range(lo, g.size + 1, step)) | {g.size})
        k = int(rng.choice(choices))
        if g.unit == 1:
            keep[g.id] = sorted(rng.choice(g.size, size=k, replace=False).tolist())
            continue
        k = max(k, min(g.size, 2 * g.unit))
        units = rng.choice(g.size // g.unit, size=k // g.unit, replace=False)
        keep[g.id] = sorted(int(u) * g.unit + r for u in units for r in range(g.unit))
    return keep


def check_variants(
    model: nn.Module, x: Any, alignment: int, count: int, seed: int = 0
) -> list[nn.Module]:
    """``count`` copies of ``model``, each with every prunable group at a random width
    (:func:`random_keep`, widths on the ``alignment`` grid, from a quarter of each group
    up, the random generator seeded with ``seed``).

    What ``lut_builder.build_table`` checks its network latency model on: the model and
    its uniform copies fit it, these are held out (a pruned network's groups are cut
    unevenly, which uniform copies do not show). Registered as the
    ``lut_builder.check_variants`` entry point (``halp_trt`` in pyproject.toml).

    Returns:
        The copies, in eval mode; empty when ``count`` is 0, the model has no prunable
        group or its channel groups cannot be traced.
    """
    if count < 1:
        return []
    try:
        if not ChannelGraph(copy.deepcopy(model), x).prunable:
            return []
        rng = np.random.default_rng(seed)
        copies = []
        for _ in range(count):
            slim = copy.deepcopy(model).eval()
            graph = ChannelGraph(slim, x)
            copies.append(graph.remove(random_keep(graph, rng, alignment)).eval())
        return copies
    except PruningError:
        return []
