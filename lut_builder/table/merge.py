"""Joining shard tables measured on separate machines into one table.

``lut-builder build --shard i/n`` fills one SQLite file from n processes; where the
processes run on different machines without a shared file system, each writes its own
file, and :func:`merge_tables` joins them. Only shards of one build are joined: every
input must have been measured on the same target (fingerprint, alignment, grid step,
reference workload) and plan the same signatures on the same grids. A point measured in
several inputs is kept once when the measurements agree (their medians differ by at most
the wider of their p10-p90 ranges: the spread of the measurement itself), the steadier
one kept; measurements that disagree are refused, naming the point.

Tables measured against a reference workload store ratios to it (see
:attr:`LatencyTable.reference`); the ratios are what is copied and compared, and the
merged table's unit is the fastest reference run of all inputs, as when several
processes fill one file. The network latency model (overhead, scale) is kept only when
every input holds the same one; otherwise the merged table is not calibrated, and
running the build once more on it without ``--shard`` calibrates it without measuring
any point again.

``average=True`` joins whole builds of the same plan instead of shards: every point
measured in several inputs becomes the mean of its measurements (median, p10, p90 and
mean averaged, counts added), whether or not they agree, so the noise of one
measurement is averaged down. A knapsack solved on one build is drawn to the points
that build measured low by chance (the optimizer's curse): on the MobileNetV2 of
bench/pareto.py, halp-trt's plans measured 5-9% slower than the build they were solved
on predicted, 7-9 points more than Torch-Pruning's plans; an independent second build
cut that excess to 3-7 points (bench/results/plan_pricing_mobilenetv2.json). The points on
which the inputs disagree beyond their spread are counted (``MergeResult.disagreeing``).

The merged table is written to a temporary directory, checked as any table is when it
is opened, and copied to its place atomically: a refused or failed merge writes nothing.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FingerprintMismatchError, UserError
from ..signatures import LayerSignature
from .store import LatencyTable


@dataclass
class MergeResult:
    """What :func:`merge_tables` wrote."""

    path: Path
    inputs: list[str]
    points: int
    #: Points measured in more than one input (with agreeing values, unless averaged).
    overlapping: int
    missing: int
    complete: bool
    calibrated: bool
    #: Why the merged table is not calibrated, when it is not.
    note: str = ""
    #: Whether duplicate points were averaged (``average=True``).
    averaged: bool = False
    #: Averaged points whose measurements disagreed beyond their p10-p90 spread.
    disagreeing: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "inputs": list(self.inputs),
            "points": self.points,
            "overlapping": self.overlapping,
            "missing": self.missing,
            "complete": self.complete,
            "calibrated": self.calibrated,
            "note": self.note,
            "averaged": self.averaged,
            "disagreeing": self.disagreeing,
        }


def merge_tables(
    inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *, average: bool = False
) -> MergeResult:
    """Join shard tables of one build (see the module notes) into a new table ``out``.

    Args:
        inputs: two or more table files.
        out: the merged table; must not exist yet, and its directory must be writable.
        average: the inputs are repeated builds: a point measured in several of them is
            stored as the mean of their measurements instead of kept once (and refused
            when they disagree).

    Returns:
        A :class:`MergeResult`.

    Raises:
        UserError: fewer than two inputs; ``out`` exists or cannot be written; an input
            that is missing, not a table or damaged; one table given twice;
            :class:`~lut_builder.errors.FingerprintMismatchError`: inputs measured on
            different targets; inputs that plan different signatures or grids; a point
            whose measurements disagree (unless averaged). Nothing is written then.
    """
    from ..fileio import check_output

    if len(inputs) < 2:
        raise UserError("merge needs at least two tables")
    out = check_output(out, flag="--out")
    if out.exists():
        raise UserError(f"--out {str(out)!r} exists; merge writes a new table: remove it first")
    tables: list[LatencyTable] = []
    try:
        for path in inputs:
            tables.append(LatencyTable.open(path, force=True))
        _check_distinct(tables)
        first = tables[0]
        for other in tables[1:]:
            _check_same_target(first, other)
            _check_same_plan(first, other)
        if average:
            rows, overlapping, disagreeing = _averaged_points(tables)
        else:
            (rows, overlapping), disagreeing = _union_points(tables), 0
        calibration, note = _common_calibration(tables)
        with tempfile.TemporaryDirectory(prefix="lut-merge-") as tmp:
            path = Path(tmp) / "merged.db"
            _write(path, tables, rows, calibration)
            # The same checks as any table read for use, then copied into place.
            with LatencyTable.open(path, force=True) as check:
                result = MergeResult(
                    path=out,
                    inputs=[str(t.path) for t in tables],
                    points=check.count_points(),
                    overlapping=overlapping,
                    missing=check.count_missing(),
                    complete=check.complete,
                    calibrated=check.overhead_ms is not None,
                    # An incomplete table is calibrated once complete: nothing to say yet.
                    note=note if check.complete else "",
                    averaged=average,
                    disagreeing=disagreeing,
                )
                check.copy_to(out)
        return result
    finally:
        for t in tables:
            t.close()


def _check_distinct(tables: Sequence[LatencyTable]) -> None:
    """No table is given twice (under one name or two): merged with itself it would
    count as agreeing with itself, and averaged it would double its counts."""
    for i, a in enumerate(tables):
        for b in tables[i + 1 :]:
            if os.path.samefile(a.path, b.path):
                same = (
                    f"{str(a.path)!r} is given twice"
                    if str(a.path) == str(b.path)
                    else f"{str(a.path)!r} and {str(b.path)!r} are the same file"
                )
                raise UserError(f"{same}: merge joins different tables, each once")


def _differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Keys whose values differ between two fingerprints, as ``key: a vs b``."""
    out = []
    for k in sorted(set(a) | set(b), key=str):
        x, y = a.get(k), b.get(k)
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            out += _differences(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}: {x!r} vs {y!r}")
    return out


def _check_same_target(a: LatencyTable, b: LatencyTable) -> None:
    diffs = _differences(a.fingerprint, b.fingerprint)
    diffs += [
        f"{name}: {x!r} vs {y!r}"
        for name, x, y in (
            ("alignment", a.alignment, b.alignment),
            ("step", a.step, b.step),
            ("reference", _kind(a), _kind(b)),
        )
        if x != y
    ]
    if diffs:
        shown = "; ".join(diffs[:3]) + (f" and {len(diffs) - 3} more" if len(diffs) > 3 else "")
        raise FingerprintMismatchError(
            f"cannot merge {b.path} into {a.path}: measured on another target ({shown}); "
            "merge joins shards of one build"
        )


def _kind(table: LatencyTable) -> Any:
    ref = table.reference
    return None if ref is None else (ref["kind"], ref.get("gate"))


def _check_same_plan(a: LatencyTable, b: LatencyTable) -> None:
    plan_a = {s.key(): a.grid(s) for s in a.signatures()}
    plan_b = {s.key(): b.grid(s) for s in b.signatures()}
    if plan_a == plan_b:
        return
    only = [k for k in plan_b if k not in plan_a] + [k for k in plan_a if k not in plan_b]
    moved = [k for k in plan_a if k in plan_b and plan_a[k] != plan_b[k]]
    label = LayerSignature.from_key((only or moved)[0]).short()
    why = "is planned in one only" if only else "is planned on other grids"
    raise UserError(
        f"cannot merge {b.path} into {a.path}: they hold the plans of different builds "
        f"(signature {label} {why}; another model, input shape, step or strategy)"
    )


def _agree(x: Sequence[Any], y: Sequence[Any]) -> bool:
    """Two stored measurements of one point agree: equal, or medians apart by no more
    than the wider p10-p90 range."""
    (mx, p10x, p90x), (my, p10y, p90y) = x[3:6], y[3:6]
    return mx == my or abs(mx - my) <= max(p90x - p10x, p90y - p10y)


def _relative_spread(row: Sequence[Any]) -> float:
    return (row[5] - row[4]) / row[3]


def _union_points(tables: Sequence[LatencyTable]) -> tuple[list[tuple[Any, ...]], int]:
    """Every input's points once; the steadier of agreeing duplicates.

    Raises:
        UserError: a point whose measurements disagree, naming it and both inputs.
    """
    kept: dict[tuple[str, int, int], tuple[tuple[Any, ...], LatencyTable]] = {}
    overlapping: set[tuple[str, int, int]] = set()
    for table in tables:
        for row in table.stored_points():
            key = (row[0], row[1], row[2])
            if key not in kept:
                kept[key] = (row, table)
                continue
            have, where = kept[key]
            if not _agree(have, row):
                sig = LayerSignature.from_key(key[0]).short()
                raise UserError(
                    f"point ({key[1]}, {key[2]}) of signature {sig} conflicts: "
                    f"{_shown(have, where)} in {where.path}, {_shown(row, table)} in "
                    f"{table.path}; re-measure it or leave one table out"
                )
            overlapping.add(key)
            if _relative_spread(row) < _relative_spread(have):
                kept[key] = (row, table)
    return [row for row, _ in kept.values()], len(overlapping)


def _averaged_points(tables: Sequence[LatencyTable]) -> tuple[list[tuple[Any, ...]], int, int]:
    """Every input's points once, a point of several inputs as their mean: median, p10,
    p90 and mean averaged, std as the root of the mean variance, counts added, the
    workers joined, the latest time. Returns the rows, how many points were measured
    more than once, and how many of those disagreed beyond their spread."""
    import math

    seen: dict[tuple[str, int, int], list[tuple[Any, ...]]] = {}
    for table in tables:
        for row in table.stored_points():
            seen.setdefault((row[0], row[1], row[2]), []).append(tuple(row))
    rows, overlapping, disagreeing = [], 0, 0
    for key, found in seen.items():
        if len(found) == 1:
            rows.append(found[0])
            continue
        overlapping += 1
        disagreeing += any(not _agree(found[0], r) for r in found[1:])
        k = len(found)
        median, p10, p90, mean = (sum(r[i] for r in found) / k for i in (3, 4, 5, 6))
        std = math.sqrt(sum(r[7] ** 2 for r in found) / k)
        workers = ",".join(dict.fromkeys(str(r[9]) for r in found if r[9]))
        rows.append(
            (*key, median, p10, p90, mean, std, sum(r[8] for r in found), workers or None,
             max(r[10] for r in found))
        )  # fmt: skip
    return rows, overlapping, disagreeing


def _shown(row: Sequence[Any], table: LatencyTable) -> str:
    u = table.unit_ms
    return f"{row[3] * u:.4g} ms (p10-p90 {row[4] * u:.4g}-{row[5] * u:.4g})"


def _common_calibration(tables: Sequence[LatencyTable]) -> tuple[dict[str, Any] | None, str]:
    """The network latency model every input holds, or None and why not."""
    if not tables[0].fingerprint.get("is_measurement", True):
        return None, ""  # a model's numbers (analytic) are never calibrated
    models = [(t.overhead_ms, t.scale, t.overhead) for t in tables]
    if models[0][0] is not None and all(m == models[0] for m in models):
        overhead_ms, scale, details = models[0]
        return {"overhead_ms": overhead_ms, "scale": scale, "details": details}, ""
    return None, (
        "the merged table is not calibrated (its inputs hold no common latency model): "
        "run the same `lut-builder build` once more on it without --shard to calibrate "
        "it; no point is measured again"
    )


def _write(
    path: Path,
    tables: Sequence[LatencyTable],
    rows: list[tuple[Any, ...]],
    calibration: Mapping[str, Any] | None,
) -> None:
    """Create the merged table at ``path``."""
    first = tables[0]
    info = {k: v for k, v in first.info.items() if k != "builds"}
    builds = [b for t in tables for b in t.info.get("builds", [])]
    info["builds"] = sorted(builds, key=lambda b: b.get("finished_at", 0))
    # How each input's points were timed: every input's loops, or none where an input
    # does not say (its points' loop is unknown, so the merged table's is too).
    info.pop("timing_loops", None)
    if all(t.info.get("timing_loops") for t in tables):
        info["timing_loops"] = [e for t in tables for e in t.info["timing_loops"]]
    info["merged"] = {"inputs": [str(t.path) for t in tables], "at": time.time()}
    ref = first.reference
    table = LatencyTable.create(
        path,
        first.fingerprint,
        first.alignment,
        step=first.step,
        info=info,
        plan={s: first.grid(s) for s in first.signatures()},
        reference_kind=None if ref is None else ref["kind"],
    )
    try:
        if ref is not None:
            # Stored values are ratios to the reference; the unit is the fastest
            # reference run any input saw, as when processes fill one file.
            unit = min(t.unit_ms for t in tables)
            table.adopt_reference(ref["kind"], unit, ref.get("gate"))
        table.add_stored_points(rows)
        if calibration is not None:
            table.set_overhead(
                calibration["overhead_ms"], calibration["details"], scale=calibration["scale"]
            )
        table.mark_complete()
    finally:
        table.close()
