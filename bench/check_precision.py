"""How precisely a table's own check measured, read back from fidelity runs of it.

`lut-builder build` checks its latency model on four random-width copies of the model,
timed in the calibration's blocks beside the unpruned model, and warns when the
predicted speed-ups miss the measured ones by more than 5% median or 10% at most. Each
copy's measured speed-up is a median over those blocks; paired block by block, the
blocks also say how precisely it was measured (two standard errors of the per-block
speed-ups: :func:`lut_builder.latency_model.speedup_standard_errors`). A build now
prints that beside its check; this reads it back from bench/lut_fidelity.py results,
which carry their table's stored check (``table_check``) and calibration blocks
(``calibration_block_medians_ms``), and sets each table's check beside its precision
and beside what the fidelity runs of the same table measured on 20 random widths.

    python bench/check_precision.py bench/results/lut_fidelity_*.json \\
        --out bench/results/check_precision.json

Results without a stored check or its blocks are left out (and counted); runs of one
table (same file name, same check) are read as one table with several fidelity runs.
"""

from __future__ import annotations

import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any


class PrecisionError(Exception):
    """A result that cannot be read."""


def read(path: str) -> dict[str, Any] | None:
    """The check, its blocks and the fidelity errors of one bench/lut_fidelity.py result,
    None where it carries no check with blocks, or PrecisionError."""
    try:
        run = json.loads(Path(path).read_text())
        check, blocks = run.get("table_check"), run.get("calibration_block_medians_ms")
        if not check or not blocks or not check.get("points"):
            return None
        copies = len(check["points"])
        fitted = len(blocks) - copies
        if fitted < 1:
            raise ValueError(f"{len(blocks)} block lists for {copies} copies")
        return {
            "table": Path(str(run["table"])).name,
            "run": Path(path).name,
            "check": check,
            "blocks": [blocks[0], *blocks[fitted:]],
            "fidelity": run["errors_table_speedup"],
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PrecisionError(f"{path} is not a bench/lut_fidelity.py result ({exc})") from None


def table_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per table (runs grouped by table file name and check)."""
    from lut_builder.latency_model import over_within_scatter, speedup_standard_errors

    tables: dict[tuple, dict[str, Any]] = {}
    for run in runs:
        check = run["check"]
        key = (run["table"], check["speedup_error_median"], check["speedup_error_max"])
        if key not in tables:
            ses = speedup_standard_errors(run["blocks"], len(check["points"]))
            if ses is None:
                continue
            points = [{**p, "speedup_se": se} for p, se in zip(check["points"], ses)]
            check = {**check, "points": points, "speedup_se_median": statistics.median(ses)}
            tables[key] = {
                "table": run["table"],
                "regime": check.get("regime", "round-robin"),
                "check_median": check["speedup_error_median"],
                "check_max": check["speedup_error_max"],
                "two_se_median": 2 * check["speedup_se_median"],
                "two_se_per_copy": [2 * se for se in ses],
                "within_limits": check["within"],
                # Over a limit by less than the check's own scatter (the build's line
                # then says a second measurement may not confirm it).
                "over_within_scatter": over_within_scatter(check),
                "fidelity_runs": [],
            }
        tables[key]["fidelity_runs"].append(
            {
                "run": run["run"],
                "median": run["fidelity"]["median_abs"],
                "max": run["fidelity"]["max_abs"],
            }
        )
    return list(tables.values())


def main(argv: list[str] | None = None) -> int:
    from lut_builder.cli_args import OneLineParser
    from lut_builder.errors import UserError
    from lut_builder.fileio import atomic_write_json, check_output
    from lut_builder.latency_model import CHECK_LIMITS

    p = OneLineParser(prog="check_precision.py", description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="+", help="bench/lut_fidelity.py results (JSON)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    try:
        out = check_output(args.out, flag="--out", parents=True) if args.out else None
        read_runs = [read(path) for path in args.results]
        runs = [r for r in read_runs if r is not None]
        rows = table_rows(runs)
    except (PrecisionError, UserError, ValueError) as exc:  # ValueError: blocks unreadable
        print(f"check_precision.py: error: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(
            "check_precision.py: error: no result carries a check with its blocks", file=sys.stderr
        )
        return 2
    print(f"{'table':<44} {'check (median / max)':>21} {'measured to':>12}  fidelity runs")
    for r in rows:
        fid = ", ".join(f"{f['median']:.1%} / {f['max']:.1%}" for f in r["fidelity_runs"])
        mark = "within" if r["within_limits"] else "over"
        if r["over_within_scatter"]:
            mark += ", within its scatter"
        print(
            f"{r['table']:<44} {r['check_median']:>9.1%} / {r['check_max']:>6.1%}"
            f"{'±' + format(r['two_se_median'], '.1%'):>12}  {fid} ({mark})"
        )
    spans = [r["two_se_median"] for r in rows]
    print(
        f"{len(rows)} tables ({len(read_runs) - len(runs)} results without a check left out): "
        f"checks measured to ±{min(spans):.1%} to ±{max(spans):.1%} (two standard errors, "
        f"median of the copies)"
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            out,
            {
                "benchmark": "check_precision",
                "limits": list(CHECK_LIMITS),
                "results": [Path(path).name for path in args.results],
                "left_out": len(read_runs) - len(runs),
                "tables": rows,
                "command": "python bench/check_precision.py " + shlex.join(argv or sys.argv[1:]),
            },
        )
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
