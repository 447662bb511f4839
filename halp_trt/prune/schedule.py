"""Pruning schedules: the latency target of every pruning step.

HALP shrinks the target exponentially, ``L_t = L0^(1 - t/T) * L_target^(t/T)`` for
``t = 1..T``: early steps remove a larger share of the latency while the network
is still redundant, in equal ratios from step to step. ``linear`` shrinks it in equal
differences; ``oneshot`` prunes once, straight to the target (SP-LAMP's setting).
"""

from __future__ import annotations

import math
import re
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
