"""``plan.json``: the solver's plan of the final widths plus how the pruning got there.

:class:`PrunePlan` is a :class:`halp_trt.solver.Plan` (kept channels and widths per
group, per-layer widths, predicted latency) with the pruning run's own facts added:
the target as asked and in milliseconds, the unpruned model's predicted latency, the
schedule, the importance criterion, the removed-vs-masked check and one record per
pruning step. Its JSON is the solver plan's JSON with a ``pruning`` section, so
``Plan.load("plan.json")`` reads it too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..solver.plan import Plan, PlanError


@dataclass(frozen=True)
class StepRecord:
    """One pruning step.

    Attributes:
        step: 1-based pruning step.
        iteration: training iteration (``Pruner.step`` calls) at which it ran.
        budget_ms: the schedule's latency budget for this step.
        predicted_ms: predicted latency of the widths chosen (table sum + overhead).
        retained: fraction of the step's importance kept (the knapsack's value over
            the importance of every channel still alive).
        kept: channels kept over all prunable groups.
        total: channels of all prunable groups before pruning.
        minibatches: minibatches the importance was accumulated over (0 for criteria
            that read only weights).
        solve_s: wall time of the step (importance, all-reduce, solve, masking, and
            measuring with feedback).
        measured_ratio: the step's plan measured against the unpruned model (with
            latency feedback), else None (no feedback, or a measurement the machine was
            too busy to make reliably).
        measured_halfwidth: the half-width of that measurement's 95% interval, over
            the ratio (None when the feedback gives none).
        feedback_tries: every plan the feedback measured in this step, in order, as
            ``(predicted ratio, measured ratio, half-width)`` to the unpruned model:
            the step's plan first, then each re-solve (the last step re-solves until a
            plan lands in the window); a half-width above the feedback's trust (5%)
            was too noisy to steer the plan. Empty without feedback.
    """

    step: int
    iteration: int
    budget_ms: float
    predicted_ms: float
    retained: float
    kept: int
    total: int
    minibatches: int
    solve_s: float
    measured_ratio: float | None = None
    measured_halfwidth: float | None = None
    feedback_tries: tuple[tuple[float, float, float], ...] = ()

    def __post_init__(self) -> None:
        tries = tuple(tuple(float(v) for v in t) for t in self.feedback_tries)
        if any(len(t) != 3 for t in tries):
            raise PlanError("invalid plan: each feedback try is (predicted, measured, halfwidth)")
        object.__setattr__(self, "feedback_tries", tries)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # the tries as tuples: JSON writes them as lists

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StepRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class PrunePlan(Plan):
    """A solver :class:`Plan` for the final widths, with the pruning run's facts.

    Attributes (beyond :class:`Plan`'s):
        target: the target as the user gave it (``"0.5x"``, ``"3ms"``, or ms).
        target_ms: the final latency budget in milliseconds.
        base_ms: predicted latency of the unpruned model on the same table.
        schedule: ``{"name", "steps", "interval", "start"}``.
        importance: the criterion's registry name.
        check: the removed-vs-masked comparison (:class:`CheckResult` as a dict).
        history: one :class:`StepRecord` per pruning step.
        table: where the latencies came from (path, fingerprint, alignment).
    """

    target: str = ""
    target_ms: float = 0.0
    base_ms: float = 0.0
    schedule: Mapping[str, Any] = field(default_factory=dict)
    importance: str = ""
    check: Mapping[str, Any] = field(default_factory=dict)
    history: tuple[StepRecord, ...] = ()
    table: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "history", tuple(self.history))
        for name in ("target_ms", "base_ms"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise PlanError(f"invalid plan: {name} must be a positive number, not {v!r}")

    @property
    def speedup(self) -> float:
        """Predicted speed-up: unpruned over pruned predicted latency."""
        return self.base_ms / self.predicted_ms if self.predicted_ms > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["pruning"] = {
            "target": self.target,
            "target_ms": self.target_ms,
            "base_ms": self.base_ms,
            "predicted_ms": self.predicted_ms,
            "speedup": self.speedup,
            "schedule": dict(self.schedule),
            "importance": self.importance,
            "check": dict(self.check),
            "table": dict(self.table),
            "steps": [r.to_dict() for r in self.history],
        }
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PrunePlan:
        """Inverse of :meth:`to_dict`.

        Raises:
            PlanError: not a pruning plan (no ``pruning`` section) or invalid.
        """
        base = Plan.from_dict(d)
        p = d.get("pruning")
        if not isinstance(p, Mapping):
            raise PlanError("invalid plan: no 'pruning' section (a solver plan, not a run's)")
        try:
            extra = {
                "target": str(p["target"]),
                "target_ms": float(p["target_ms"]),
                "base_ms": float(p["base_ms"]),
                "schedule": dict(p.get("schedule", {})),
                "importance": str(p.get("importance", "")),
                "check": dict(p.get("check", {})),
                "table": dict(p.get("table", {})),
                "history": tuple(StepRecord.from_dict(r) for r in p.get("steps", [])),
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"invalid plan: {type(exc).__name__}: {exc}") from exc
        kwargs = {f.name: getattr(base, f.name) for f in fields(Plan)}
        return cls(**kwargs, **extra)

    @classmethod
    def load(cls, path: str | Path) -> PrunePlan:
        """Read ``plan.json``.

        Raises:
            PlanError: missing, not JSON, or not a pruning plan.
        """
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise PlanError(f"plan file not found: {path}") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PlanError(f"cannot read plan {path}: {exc}") from exc
        if not isinstance(d, dict):
            raise PlanError(f"{path} does not hold a plan")
        return cls.from_dict(d)
