"""A criterion that measures: each group's accuracy (or loss) at each width it could be
pruned to, instead of a first-order estimate of it.

``sensitivity`` is FastNAS's sensitivity search (NVIDIA ModelOpt), and NetAdapt's
per-layer measurement, under halp-trt's measured latency table instead of FLOPs. Before
training, for each prunable group alone, at up to six widths from the pruner's floor up
(whole bundles), the channels of least L2 weight norm are masked, every BatchNorm's
statistics re-estimated over the calibration minibatches (a masked channel changes what
the layers after it see) and the subnet scored on those minibatches. A group's value at
a width is minus the accuracy it drops there (``sensitivity``) or minus the loss it
gains (``sensitivity-loss``), linear between the measured widths, and the groups are
summed as if each acted alone. The knapsack adds a group's channel scores in their
order, so each channel scores the slope of the least concave majorant of that curve at
its rank (:func:`upper_hull`), none below zero, plus a hair falling with rank that keeps
the order: the prefix sums are the measured curve wherever it is concave and rising,
and a budget the plan does not need is still spent.

It prunes once, before training (``Pruner(..., calibration_batches=N)`` and
:meth:`~halp_trt.Pruner.calibrate`; ``--calibration-batches N`` on the command line),
and costs ``1 + sum over groups of its widths measured`` subnets, each
``calibration_batches`` minibatches forward twice (statistics, then the score).

Why accuracy by default: on a model that fits its training images (accuracy 1.0) the
loss counts the confidence of answers that stay right, and loss-valued plans kept the
network's last, wide layer whole, which the measured table prices high; on
bench/pareto.py's MobileNetV2 (harder digits, 0.3x, three seeds) accuracy-valued plans
scored 0.839-0.850 in two runs, loss-valued 0.835. It is not a default: there, over six
seeds, it scored 0.837 where FastNAS scored 0.845 (bench/PARETO.md, "The measured
criterion re-run").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Importance, ImportanceError, get_importance, register_importance

#: Widths measured per group, at most (the floor, the widest below full, evenly between).
POINTS = 6


def upper_hull(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The least concave majorant of the points ``(xs, ys)`` (``xs`` increasing),
    evaluated at every integer from ``xs[0]`` to ``xs[-1]``."""
    hull: list[int] = []
    for i in range(len(xs)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b lies on or under the chord from a to i: not a vertex of the hull
            if (ys[b] - ys[a]) * (xs[i] - xs[a]) <= (ys[i] - ys[a]) * (xs[b] - xs[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    grid = np.arange(int(xs[0]), int(xs[-1]) + 1)
    return np.interp(grid, xs[hull], ys[hull])


def measured_widths(size: int, bundle: int, least: int, points: int = POINTS) -> list[int]:
    """The widths below ``size`` a group is measured at: whole ``bundle``s from ``least``
    (the floor, a whole number of bundles) up, at most ``points`` spread evenly (the
    floor and the widest always among them)."""
    counts = list(range(max(least, bundle), size, bundle))
    if len(counts) > points:
        counts = sorted(
            {counts[round(i * (len(counts) - 1) / (points - 1))] for i in range(points)}
        )
    return counts


def curve_scores(
    size: int,
    order: np.ndarray,
    widths: Sequence[int],
    lost: Sequence[float],
    power: float = 1.0,
) -> np.ndarray:
    """Per-channel scores whose prefix sums, in ``order``, follow a measured curve.

    Args:
        size: the group's channels.
        order: channel indices, the first kept first (the order the widths were
            measured in: width ``k`` kept ``order[:k]``).
        widths: the measured widths, increasing, each below ``size``.
        lost: what each width loses against the full group (accuracy dropped or loss
            gained; negative where it measured better).
        power: value ``-lost`` (1) or ``-max(lost, 0) ** power``: a sum over groups that
            tends to the largest loss of any group as the power grows.

    Returns:
        float64 scores in channel coordinates: the slope of the least concave majorant
        of ``(0 .. widths .. size, value)`` at each channel's rank, floored at zero, plus
        a positive hair falling with rank (1e-9 of the slope, or of the group's steepest
        measured slope where flatter) that keeps the order. Below the first measured
        width (channels every option keeps) the slope is steeper than any measured.
    """
    xs = np.array([0, *widths, size], dtype=np.float64)
    loss = np.array([*lost, 0.0], dtype=np.float64)
    value = -loss if power == 1 else -(np.maximum(loss, 0.0) ** power)
    measured = np.abs(np.diff(value) / np.diff(xs[1:]))
    steep = 2 * measured.max(initial=0) + 1.0
    ys = np.array([value[0] - steep * xs[1], *value])
    slope = np.maximum(np.diff(upper_hull(xs, ys)), 0.0)
    mag = np.maximum(slope, measured.max(initial=0) or 1e-30)
    score = np.empty(size)
    score[np.asarray(order)] = slope + 1e-9 * mag * np.arange(size, 0, -1) / size
    return score


def _score(
    model: nn.Module, batches: Sequence[Any], loss_fn: Callable, accuracy: bool
) -> tuple[float, float]:
    """Mean loss and top-1 accuracy of ``model`` (eval mode) over ``batches``; the
    accuracy NaN where the outputs are no class logits (an error if ``accuracy`` is
    the metric)."""
    total, loss_sum, correct, logits = 0, 0.0, 0, True
    model.eval()
    with torch.no_grad():
        for inputs, targets in batches:
            out = model(inputs)
            n = len(targets)
            loss_sum += float(loss_fn(out, targets)) * n
            logits = logits and (
                isinstance(out, torch.Tensor)
                and out.dim() == 2
                and isinstance(targets, torch.Tensor)
                and targets.dim() == 1
                and not targets.is_floating_point()
            )
            if logits:
                correct += int((out.argmax(1) == targets).sum())
            elif accuracy:
                raise ImportanceError(
                    "importance sensitivity scores top-1 accuracy: it needs class logits "
                    "(N, classes) and integer labels (N,), not outputs of shape "
                    f"{tuple(getattr(out, 'shape', ()))}; use sensitivity-loss"
                )
            total += n
    if total == 0:
        raise ImportanceError("importance sensitivity got no calibration minibatch")
    return loss_sum / total, (correct / total if logits else math.nan)


@register_importance("sensitivity")
class Sensitivity(Importance):
    """Each group's measured accuracy at each width (see the module notes).

    Args:
        graph: the model's channel graph.
        metric: ``"accuracy"`` (the accuracy a width drops) or ``"loss"`` (the loss it
            gains).
        power: value a group by minus its drop to this power (1: the drop itself).
        points: widths measured per group, at most.
        ranking: the criterion that orders a group's channels for masking, one that
            reads the weights alone (``"l2"``: filter norms, as FastNAS orders them).
        score_batches: minibatches to score subnets on instead of the calibration ones
            (the BatchNorm statistics still come from the calibration minibatches).
        loss_weight: under the accuracy metric, add this times the loss a width gains
            to the accuracy it drops: where a model fits its calibration minibatches,
            most groups drop no accuracy down to their floor, and the loss then tells
            them apart (0: accuracy alone).

    Attributes:
        curves: group id -> ``{"widths", "loss", "accuracy"}`` measured.
        full: the unpruned model's (loss, accuracy) on the same minibatches.
        evaluations: subnets scored; ``seconds``: how long the measurement took.
    """

    needs_batches: ClassVar[bool] = True
    metric: ClassVar[str] = "accuracy"

    def __init__(
        self,
        graph: Any,
        *,
        metric: str | None = None,
        power: float = 1.0,
        points: int = POINTS,
        ranking: str = "l2",
        score_batches: Sequence[Any] | None = None,
        loss_weight: float = 0.0,
    ) -> None:
        super().__init__(graph)
        metric = type(self).metric if metric is None else metric
        if metric not in ("accuracy", "loss"):
            raise ImportanceError(f"metric must be 'accuracy' or 'loss', not {metric!r}")
        if not power >= 1:
            raise ImportanceError(f"power must be at least 1, not {power!r}")
        if not (math.isfinite(loss_weight) and loss_weight >= 0):
            raise ImportanceError(f"loss_weight must be a number >= 0, not {loss_weight!r}")
        if loss_weight and metric != "accuracy":
            raise ImportanceError("loss_weight adds the loss to the accuracy metric only")
        if int(points) != points or points < 2:
            raise ImportanceError(f"points must be an integer >= 2, not {points!r}")
        self.metric_name, self.power, self.points = metric, float(power), int(points)
        self.loss_weight = float(loss_weight)
        rank = get_importance(ranking)  # an unknown ranking fails here, before any data
        if rank.needs_gradients or rank.needs_batches:
            raise ImportanceError(
                f"ranking must read the weights alone (l1, l2, sp-lamp), not {ranking!r}"
            )
        self.ranking = ranking
        self.score_batches = score_batches
        self._scores: dict[int, np.ndarray] | None = None
        self.curves: dict[int, dict[str, list]] = {}
        self.full: tuple[float, float] = (math.nan, math.nan)
        self.evaluations, self.seconds, self._batches = 0, 0.0, 0

    @property
    def count(self) -> int:
        """The calibration minibatches the scores were measured on (0: none yet)."""
        return self._batches

    @property
    def facts(self) -> dict[str, Any]:
        """What a run records: the curves, the full model's loss and accuracy, the
        metric valued, the subnets scored and the seconds."""
        return {
            "sensitivity_curves": {str(g): c for g, c in self.curves.items()},
            "sensitivity_full_loss": self.full[0],
            "sensitivity_full_accuracy": self.full[1],
            "sensitivity_metric": self.metric_name,
            "sensitivity_loss_weight": self.loss_weight,
            "sensitivity_evaluations": self.evaluations,
            "sensitivity_s": self.seconds,
        }

    def measurements(
        self,
        batches: Sequence[Any],
        options: Mapping[int, tuple[int, int]],
        loss_fn: Callable,
    ) -> tuple[tuple[float, float], dict[int, tuple[np.ndarray, list[int], list]]]:
        """The full model's (loss, accuracy) and, per group, its channels in the order
        they are kept, the widths measured and the (loss, accuracy) at each. The model
        is put back as it was, its LayerNorm channel masks cleared."""
        from ..graph.norms import clear_norm_masks
        from ..train.trainer import recalibrate_bn

        model = self.model
        score_on = batches if self.score_batches is None else self.score_batches
        accuracy = self.metric_name == "accuracy"
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        rank = get_importance(self.ranking)(self.graph).scores()
        was_training = model.training

        def subnet(keep: dict[int, list[int]]) -> tuple[float, float]:
            model.load_state_dict(saved)
            clear_norm_masks(model)
            if keep:
                self.graph.mask(keep)
            device = next(model.parameters()).device
            recalibrate_bn(model, batches, len(batches), device)
            self.evaluations += 1
            return _score(model, score_on, loss_fn, accuracy)

        groups: dict[int, tuple[np.ndarray, list[int], list]] = {}
        try:
            full = subnet({})
            for group in self.groups:
                bundle, least = options[group.id]
                unit = getattr(group, "unit", 1)
                units = np.arange(group.size // unit)
                unit_rank = rank[group.id].reshape(-1, unit).sum(1)
                order = units[np.argsort(-unit_rank, kind="stable")]
                order = (order[:, None] * unit + np.arange(unit)).reshape(-1)
                widths = measured_widths(group.size, bundle, least, self.points)
                scored = [subnet({group.id: sorted(order[:k].tolist())}) for k in widths]
                groups[group.id] = (order, widths, scored)
        finally:
            model.load_state_dict(saved)
            clear_norm_masks(model)
            model.train(was_training)
        return full, groups

    def measure(
        self,
        batches: Sequence[Any],
        options: Mapping[int, tuple[int, int]],
        loss_fn: Callable | None = None,
    ) -> None:
        """Measure every prunable group and set the scores (the pruner's
        :meth:`~halp_trt.Pruner.calibrate` calls it).

        Args:
            batches: ``(inputs, targets)`` minibatches on the model's device: the
                BatchNorm statistics of every subnet, and its score unless
                ``score_batches`` was given.
            options: group id -> ``(bundle, floor)``, the knapsack's (see
                :func:`halp_trt.solver.knapsack.least_option`).
            loss_fn: ``loss_fn(outputs, targets)``, a mean; default cross-entropy.

        Raises:
            ImportanceError: a model already pruned (LayerNorm channel masks set), a
                group without options, outputs that are no class logits under the
                accuracy metric, or no minibatch.
        """
        from ..graph.norms import current_norm_mask

        if any(current_norm_mask(m) is not None for m in self.model.modules()):
            raise ImportanceError("importance sensitivity measures a model not yet pruned")
        missing = [g.id for g in self.groups if g.id not in options]
        if missing:
            raise ImportanceError(f"importance sensitivity has no widths for groups {missing}")
        if not batches:
            raise ImportanceError("importance sensitivity got no calibration minibatch")
        t0 = time.perf_counter()
        self.full, measured = self.measurements(
            list(batches), options, F.cross_entropy if loss_fn is None else loss_fn
        )
        self.set_measured(self.full, measured)
        self.seconds, self._batches = time.perf_counter() - t0, len(batches)

    def set_measured(
        self,
        full: tuple[float, float],
        measured: Mapping[int, tuple[np.ndarray, list[int], list]],
    ) -> None:
        """Scores from measurements (:meth:`measurements`' output)."""
        at = 0 if self.metric_name == "loss" else 1
        sign = 1.0 if at == 0 else -1.0  # a loss gained, an accuracy dropped
        out = {}
        for group in self.groups:
            order, widths, scored = measured[group.id]
            self.curves[group.id] = {
                "widths": list(widths),
                "loss": [v[0] for v in scored],
                "accuracy": [v[1] for v in scored],
            }
            lost = [sign * (v[at] - full[at]) + self.loss_weight * (v[0] - full[0]) for v in scored]
            out[group.id] = curve_scores(group.size, order, widths, lost, self.power)
        self.full, self._scores = full, out

    def scores(self) -> dict[int, np.ndarray]:
        if self._scores is None:
            raise ImportanceError(
                "importance sensitivity has measured nothing: it prunes once, before "
                "training, from calibration minibatches (calibration_batches, "
                "--calibration-batches N)"
            )
        return self._scores

    def state_dict(self) -> dict[str, Any]:
        if self._scores is None:
            return {"scores": None}
        return {"scores": {g: s.copy() for g, s in self._scores.items()}, "full": self.full}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        scores = state.get("scores")
        if scores is None:
            self._scores = None
            return
        sizes = {g.id: g.size for g in self.groups}
        if {int(g) for g in scores} != set(sizes) or any(
            np.asarray(s).size != sizes[int(g)] for g, s in scores.items()
        ):
            raise ImportanceError("importance sensitivity: the saved scores fit another model")
        self._scores = {int(g): np.asarray(s, dtype=np.float64) for g, s in scores.items()}
        self.full = tuple(state.get("full", (math.nan, math.nan)))  # type: ignore[assignment]


@register_importance("sensitivity-loss")
class SensitivityLoss(Sensitivity):
    """:class:`Sensitivity` valued by the loss a width gains instead of the accuracy it
    drops (any task with a loss; the default metric's top-1 needs class logits)."""

    metric: ClassVar[str] = "loss"
