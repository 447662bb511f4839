"""Pruning schedules: the latency target of every pruning step.

HALP shrinks the target exponentially, ``L_t = L0^(1 - t/T) * L_target^(t/T)`` for
``t = 1..T``: early steps remove a larger share of the latency while the network
is still redundant, in equal ratios from step to step. ``linear`` shrinks it in equal
differences; ``oneshot`` prunes once, straight to the target (SP-LAMP's setting).
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any

from ..errors import PruningError

SCHEDULES = ("exp", "linear", "oneshot")


def schedule_targets(schedule: str, base_ms: float, target_ms: float, steps: int) -> list[float]:
    """Latency budget (ms) of each pruning step; the last one is ``target_ms``.

    Args:
        schedule: ``"exp"``, ``"linear"`` or ``"oneshot"``.
        base_ms: predicted latency of the unpruned model.
        target_ms: the final budget (``0 < target_ms``).
        steps: number of pruning steps (``oneshot`` always has one).

    Raises:
        PruningError: unknown schedule, non-positive latencies or steps.
    """
    if schedule not in SCHEDULES:
        raise PruningError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    if steps < 1:
        raise PruningError(f"pruning steps must be >= 1, not {steps}")
    if not (base_ms > 0 and target_ms > 0 and math.isfinite(base_ms) and math.isfinite(target_ms)):
        raise PruningError(f"latencies must be positive (base {base_ms}, target {target_ms})")
    if schedule == "oneshot":
        return [float(target_ms)]
    out = []
    for t in range(1, steps + 1):
        f = t / steps
        if schedule == "exp":
            out.append(math.exp((1 - f) * math.log(base_ms) + f * math.log(target_ms)))
        else:
            out.append(base_ms + (target_ms - base_ms) * f)
    out[-1] = float(target_ms)  # exact, not exp(log(x))
    return out


_TARGET = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(x|ms)\s*$")


def split_target(target: str | float) -> tuple[float, str]:
    """``"0.5x"`` -> ``(0.5, "x")``, ``"3ms"`` or ``3`` -> ``(3.0, "ms")``.

    Raises:
        PruningError: malformed or non-positive.
    """
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        value, unit = float(target), "ms"
    else:
        m = _TARGET.match(str(target))
        if not m:
            raise PruningError(
                f"latency target {target!r} is not like 0.5x (fraction of the unpruned "
                "latency) or 3ms (milliseconds)"
            )
        value, unit = float(m.group(1)), m.group(2)
    if not (value > 0 and math.isfinite(value)):
        raise PruningError(f"latency target {target!r} must be positive")
    return value, unit


def target_fraction(target: Any) -> float | None:
    """The fraction of a relative target (``"0.5x"`` -> 0.5); None for an absolute,
    missing or malformed one."""
    try:
        value, unit = split_target(target)
    except PruningError:
        return None
    return value if unit == "x" else None


def parse_target(target: str | float, base_ms: float) -> float:
    """A latency target in milliseconds.

    Args:
        target: ``"0.5x"`` (a fraction of ``base_ms``), ``"3ms"`` (absolute), or a
            number (milliseconds).
        base_ms: predicted latency of the unpruned model.

    Raises:
        PruningError: malformed, non-positive, or not below the unpruned latency
            (``1x`` and above would prune nothing).
    """
    value, unit = split_target(target)
    ms = value * base_ms if unit == "x" else value
    if ms >= base_ms:
        raise PruningError(
            f"latency target {target} = {ms:.4g} ms is not below the unpruned model's "
            f"predicted {base_ms:.4g} ms: nothing to prune"
        )
    return ms


#: Share of the training over which the pruning steps are spread by default; the rest
#: fine-tunes the final widths. HALP's own ImageNet recipe prunes in 30 steps 40
#: iterations apart from the first iteration, about the first 1% of its 90 epochs; in a
#: short run a window that small leaves each step one minibatch of importance. In
#: bench/pareto.py's 2-epoch runs a quarter gained 1.1-3.1 points on the ResNet-18 of
#: harder digits and lost 2.9 at 0.3x on the MobileNetV2 (bench/PARETO.md: "The pruning window").
DEFAULT_SPREAD = 0.5
#: Fewest training iterations between two pruning steps when the steps are spread over
#: the window: HALP's own interval. Each step's importance is accumulated over its
#: interval and the network recovers in it; a run whose window is shorter prunes in fewer
#: steps, down to one (SP-LAMP's one shot). In bench/pareto.py's 2-epoch runs (46
#: iterations, 5 steps 4 apart) one shot was level or better on both models: +0.1, +0.7
#: and +3.8 points at 0.7x, 0.5x and 0.3x on the ResNet-18 of harder digits, +0.6, +0.3
#: and -0.1 on the MobileNetV2 (bench/PARETO.md: "Short runs prune in one shot").
MIN_INTERVAL = 40
#: What the built-in trainer (``halp-trt prune``, ``halp-trt run``) does with a run too
#: short for two of its steps ``min_interval`` apart in the window, where HALP's loop
#: comes down to one step taken while training: ``"calibrate"`` (default) prunes once
#: before training instead, scored on :data:`SHORT_RUN_BATCHES` minibatches of the dense
#: model with no weight updated, so the whole run trains the final widths
#: (:meth:`halp_trt.Pruner.calibrate`); ``"train"`` keeps the one step while training.
#: In bench/pareto.py's runs, all this short, the one step before training scored
#: +0.43 [+0.1, +0.8] points over the one step while training, same criterion, over
#: 54 pairs of models in nine settings (bench/PARETO.md: "Short runs prune before
#: training").
SHORT_RUNS = ("calibrate", "train")
#: Minibatches a short run's step is scored on (Torch-Pruning's Taylor takes its
#: gradients from 8 in bench/pareto.py; 4 scored 0.8 points under 8 on the ResNet-18,
#: 16 no better; bench/PARETO.md: "What of the path matters").
SHORT_RUN_BATCHES = 8


@dataclass(frozen=True)
class ScheduleFit:
    """When the pruning steps of one training run happen.

    Attributes:
        steps: pruning steps (may be fewer than asked: see ``note``).
        interval: training iterations between steps; the last step runs at
            ``start + steps * interval``.
        note: one line when the run was too short for the steps asked, else ``""``.
    """

    steps: int
    interval: int
    note: str = ""


def _whole(value: Any) -> bool:
    """An integer (or a float with no fraction, as the pruner's arguments take); not a
    bool."""
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())


def fit_schedule(
    steps: int,
    total_iterations: int,
    *,
    schedule: str = "exp",
    interval: int | None = None,
    interval_epochs: float | None = None,
    iterations_per_epoch: int | None = None,
    start: int = 0,
    spread: float = DEFAULT_SPREAD,
    min_interval: int = MIN_INTERVAL,
) -> ScheduleFit:
    """Fit ``steps`` pruning steps into a training run of ``total_iterations``.

    The interval between steps is, in order of precedence: ``interval`` iterations;
    ``interval_epochs`` epochs (needs ``iterations_per_epoch``); or, by default, the
    steps spread evenly over the first ``spread`` of the iterations after ``start``
    (what ``halp-trt prune`` does), at least ``min_interval`` apart: a window too
    short for every asked step that far apart gets fewer steps, spread over it, and one
    at the least, which then comes where the first of the asked steps would. A run too
    short for every asked step gets fewer steps, and ``note`` says so. ``oneshot``
    always has one step; without an explicit interval it comes where the stepped
    schedule's first step would, one ``steps``-th into the window (its importance sees
    as many minibatches), and the rest of the run fine-tunes the final widths (SP-LAMP's
    setting).

    Args:
        steps: pruning steps asked for (>= 1).
        total_iterations: training iterations of the whole run (>= 1).
        schedule: ``"exp"``, ``"linear"`` or ``"oneshot"``.
        interval, interval_epochs, iterations_per_epoch, start, spread, min_interval:
            see above (``min_interval`` applies to the spread steps only; 1: none).

    Returns:
        A :class:`ScheduleFit`.

    Raises:
        PruningError: a count that is not an integer, non-positive numbers, a
            ``spread`` outside (0, 1], a ``start`` at or after the end of the run, or an
            explicit interval longer than the iterations the run has after ``start``.
    """
    if schedule not in SCHEDULES:
        raise PruningError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    for name, value in (
        ("steps", steps),
        ("total_iterations", total_iterations),
        ("start", start),
        ("min_interval", min_interval),
        ("interval", interval),
        ("iterations_per_epoch", iterations_per_epoch),
    ):
        if value is not None and not _whole(value):
            raise PruningError(f"{name} must be an integer, not {value!r}")
    for name, value, most in (("spread", spread, 1.0), ("interval_epochs", interval_epochs, None)):
        if value is None and name == "interval_epochs":
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and math.isfinite(value) and value > 0 and (most is None or value <= most)):
            bound = f" and <= {most}" if most else ""
            raise PruningError(f"{name} must be a finite number > 0{bound}, not {value!r}")
    steps, total_iterations, start, min_interval = (
        int(v) for v in (steps, total_iterations, start, min_interval)
    )
    interval = None if interval is None else int(interval)
    if steps < 1 or total_iterations < 1 or start < 0 or min_interval < 1:
        raise PruningError(
            f"steps ({steps}), training iterations ({total_iterations}) and the minimum "
            f"interval ({min_interval}) must be >= 1, start ({start}) >= 0"
        )
    if start >= total_iterations:
        raise PruningError(
            f"start ({start}) must come before the end of the run ({total_iterations} "
            "training iterations)"
        )
    asked = 1 if schedule == "oneshot" else int(steps)
    room = total_iterations - start
    if interval_epochs is not None and interval is None:
        if not iterations_per_epoch or iterations_per_epoch < 1:
            raise PruningError("an interval in epochs needs the iterations per epoch")
        interval = max(1, round(interval_epochs * iterations_per_epoch))
    if interval is not None:
        if interval < 1 or interval > room:
            raise PruningError(
                f"a pruning interval of {interval} iterations does not fit the "
                f"{room} training iterations after iteration {start}"
            )
        fit = min(asked, room // interval)
        why = f"one every {interval} iterations"
    else:
        window = max(1, int(room * spread))
        interval = max(1, window // int(steps))  # oneshot: where the first step would be
        fit = min(asked, window // interval)
        why = f"over the first {spread:.0%} of {room} training iterations"
        if fit > 1 and interval < min_interval:
            fit = max(1, min(fit, window // min_interval))
            if fit > 1:
                interval = window // fit
            why += f" at least {min_interval} apart"
    note = ""
    if fit < asked:
        note = f"{room} training iterations are too few for {asked} pruning steps {why}: " + (
            f"pruning in {fit} steps, one every {interval} iterations"
            if fit > 1
            else f"pruning in one step, at iteration {start + interval}"
        )
    return ScheduleFit(steps=fit, interval=int(interval), note=note)
