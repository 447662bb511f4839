"""A pruning plan: which channels every group keeps, and what latency that predicts.

A :class:`Plan` checks itself on construction and round-trips JSON (``to_dict`` /
``from_dict``, ``save`` / ``load``), so a plan written on the training machine can be
read back, validated and applied anywhere.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from halp_trt.errors import UserError
from lut_builder.fileio import atomic_write_json

#: Bumped when the JSON layout changes incompatibly.
PLAN_FORMAT = 1
#: Latency cost models of the solver (see :mod:`halp_trt.solver.knapsack`).
COST_MODELS = ("one-sided", "joint")


class PlanError(UserError):
    """A plan file or plan data that is malformed or inconsistent."""


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise PlanError(f"invalid plan: {message}")


@dataclass(frozen=True)
class Plan:
    """Kept channels per channel group, the widths they give, and the predicted latency.

    Attributes:
        keep: group id to the kept channel indices (group coordinates, ascending) of
            every group the solver decided on; groups not listed keep all channels.
        sizes: group id to the group's full size, for the same groups.
        widths: layer name to its ``(c_in, c_out)`` under the plan (every conv/linear).
        predicted_ms: the network latency model's prediction for the plan: the sum of
            every layer's table latency at these widths, times the table's scale, plus
            its overhead.
        budget_ms: the latency budget the plan was solved for.
        value: retained importance (sum of the kept channels' scores).
        total_value: importance of all channels the solver could choose from.
        cost_model: ``"one-sided"`` or ``"joint"``.
        model_ms: the cost model's own estimate of the plan's latency (what the
            knapsack saw); equal to ``predicted_ms`` when the model is exact there.
        overhead_ms: the table's whole-network overhead term included in
            ``predicted_ms`` (may be negative).
        scale: the table's factor on the layers' sum included in ``predicted_ms``.
        bundles: group id to the bundle size (channels per knapsack item) used.
        solves: how many knapsack solves the cost model needed.
    """

    keep: Mapping[int, tuple[int, ...]]
    sizes: Mapping[int, int]
    widths: Mapping[str, tuple[int, int]]
    predicted_ms: float
    budget_ms: float
    value: float
    total_value: float
    cost_model: str
    model_ms: float
    overhead_ms: float = 0.0
    scale: float = 1.0
    bundles: Mapping[int, int] = field(default_factory=dict)
    solves: int = 1

    def __post_init__(self) -> None:
        keep = {int(g): tuple(int(c) for c in k) for g, k in self.keep.items()}
        sizes = {int(g): int(s) for g, s in self.sizes.items()}
        widths = {str(n): (int(w[0]), int(w[1])) for n, w in self.widths.items()}
        bundles = {int(g): int(b) for g, b in self.bundles.items()}
        object.__setattr__(self, "keep", keep)
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "bundles", bundles)
        _check(set(keep) == set(sizes), "keep and sizes name different groups")
        for g, kept in keep.items():
            size = sizes[g]
            _check(size >= 1, f"group {g} has size {size}")
            _check(len(kept) <= size, f"group {g} keeps more channels than it has")
            _check(
                all(0 <= c < size for c in kept), f"group {g} keeps a channel outside 0..{size - 1}"
            )
            _check(
                all(a < b for a, b in zip(kept, kept[1:])),
                f"group {g}: kept channels must be unique and ascending",
            )
        for name, (c_in, c_out) in widths.items():
            _check(c_in >= 0 and c_out >= 0, f"layer {name} has a negative width")
        for g, b in bundles.items():
            _check(b >= 1, f"group {g} has bundle size {b}")
        _check(self.cost_model in COST_MODELS, f"unknown cost model {self.cost_model!r}")
        for name in ("predicted_ms", "budget_ms", "value", "total_value", "model_ms"):
            _check(math.isfinite(getattr(self, name)), f"{name} is not finite")
        _check(math.isfinite(self.overhead_ms), "overhead_ms is not finite")
        _check(math.isfinite(self.scale) and self.scale > 0, "scale is not a positive number")
        _check(self.solves >= 1, "solves must be >= 1")

    # -- derived -----------------------------------------------------------------------

    @property
    def keep_counts(self) -> dict[int, int]:
        """Group id to the number of channels kept."""
        return {g: len(k) for g, k in self.keep.items()}

    @property
    def retained(self) -> float:
        """Fraction of the available importance kept (1.0 when there was none)."""
        return self.value / self.total_value if self.total_value else 1.0

    @property
    def within_budget(self) -> bool:
        return self.predicted_ms <= self.budget_ms

    # -- JSON ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (group ids become strings, as JSON keys must)."""
        return {
            "format": PLAN_FORMAT,
            "cost_model": self.cost_model,
            "budget_ms": self.budget_ms,
            "predicted_ms": self.predicted_ms,
            "model_ms": self.model_ms,
            "overhead_ms": self.overhead_ms,
            "scale": self.scale,
            "value": self.value,
            "total_value": self.total_value,
            "solves": self.solves,
            "groups": [
                {
                    "id": g,
                    "size": self.sizes[g],
                    "bundle": self.bundles.get(g),
                    "kept": len(self.keep[g]),
                    "keep": list(self.keep[g]),
                }
                for g in sorted(self.keep)
            ],
            "widths": {n: list(w) for n, w in self.widths.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict`.

        Raises:
            PlanError: a missing field, a wrong format version or inconsistent data.
        """
        try:
            if d.get("format") != PLAN_FORMAT:
                raise PlanError(
                    f"plan format {d.get('format')!r} is not supported (expected {PLAN_FORMAT})"
                )
            groups = d["groups"]
            for g in groups:
                _check(g["kept"] == len(g["keep"]), f"group {g['id']}: 'kept' != len('keep')")
            return cls(
                keep={int(g["id"]): tuple(g["keep"]) for g in groups},
                sizes={int(g["id"]): int(g["size"]) for g in groups},
                bundles={int(g["id"]): int(g["bundle"]) for g in groups if g.get("bundle")},
                widths={str(n): tuple(w) for n, w in d["widths"].items()},
                predicted_ms=float(d["predicted_ms"]),
                budget_ms=float(d["budget_ms"]),
                value=float(d["value"]),
                total_value=float(d["total_value"]),
                cost_model=str(d["cost_model"]),
                model_ms=float(d["model_ms"]),
                overhead_ms=float(d.get("overhead_ms", 0.0)),
                scale=float(d.get("scale", 1.0)),
                solves=int(d.get("solves", 1)),
            )
        except PlanError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PlanError(f"invalid plan: {type(exc).__name__}: {exc}") from exc

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan as JSON, atomically (a temp file beside it, then a rename), with
        the mode of any new file under the user's umask."""
        return atomic_write_json(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        """Read a plan written by :meth:`save`.

        Raises:
            PlanError: the file is missing, not JSON, or not a valid plan; ``path`` is
                not a path.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise PlanError(f"a plan file's path must be a str or os.PathLike, not {type(path).__name__}")  # fmt: skip
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise PlanError(f"plan file not found: {path}") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PlanError(f"cannot read plan {path}: {exc}") from exc
        if not isinstance(d, dict):
            raise PlanError(f"{path} does not hold a plan")
        return cls.from_dict(d)
