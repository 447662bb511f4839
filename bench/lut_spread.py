"""How far apart separate builds of one latency table put the same pruned models.

bench/lut_fidelity.py builds a table (or takes one), draws random widths and compares the
table's prediction of each pruned model with a measurement of it. Run it several times
with the same model, shape, step and ``--seed`` on one machine, each time with a fresh
build, and the runs hold the same random widths priced by different builds: this reads
those runs and says, for each pruned model, how far the builds' predicted latency
ratios (pruned over unpruned, what pruning to a fraction of a model depends on) lie
apart, beside how far the runs' measured ratios of the same models lie apart (the
machine's own scatter between runs, which bounds what a build can reproduce).

    python bench/lut_spread.py A.json B.json [C.json ...] --out bench/results/lut_spread_X.json

Per model: each build's predicted ratio, each run's measured ratio, and the spread of
each (largest over smallest, minus 1); over the models the median and largest spread,
each build's error of the predicted ratio against its own run's measurement, and
against the runs' mean (the geometric mean of the measured ratios: the measurement with
its scatter between runs averaged down); and each run's measured ratios against that
mean, split into a shift common to every model (``measured_shift``: the run's one
measurement of the unpruned model divides them all) and the rms scatter beside it. Runs
of tables with probes, which price their models filled with the lines too, get that fill
against the runs' mean beside the table's.

``--same-table`` reads runs of one table instead (``lut_fidelity.py --table T`` run
several times, the table not recalibrated): the predictions are then the same in every
run (runs whose predictions differ are refused), and what the runs show
is the measurement's own scatter, and how far the table stands from the mean of the runs
where one run's error mixes the table's with its measurement's.

    python bench/lut_spread.py --same-table A.json B.json C.json
"""

from __future__ import annotations

import math
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: What the runs must share to hold the same pruned models priced the same way.
SAME = ("model", "input_shape", "backend", "precision", "step", "seed", "assignments")


class SpreadError(Exception):
    """Bad input: one line, exit code 2."""


def load_run(path: str) -> dict[str, Any]:
    """A bench/lut_fidelity.py result, or SpreadError."""
    import json

    try:
        run = json.loads(Path(path).read_text())
        rows = run["rows"]
        for key in SAME:
            run[key]  # noqa: B018
        if not any(r.get("model") == "unpruned" for r in rows):
            raise KeyError("no unpruned row")
        for r in rows:
            if not (r["pred_table_ms"] > 0 and r["measured_ms"] > 0):
                raise ValueError(f"{r['model']}: a latency that is not positive")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SpreadError(f"{path} is not a bench/lut_fidelity.py result ({exc})") from None
    return run


def ratios(run: dict[str, Any], predicted: str = "pred_table_ms") -> dict[str, tuple[float, float]]:
    """Each pruned model's (predicted, measured) latency over the unpruned model's, the
    prediction read from each row's ``predicted`` (the table's; ``pred_table_lines_ms``:
    the same table filled with its lines)."""
    rows = {r["model"]: r for r in run["rows"]}
    base = rows["unpruned"]
    return {
        name: (r[predicted] / base[predicted], r["measured_ms"] / base["measured_ms"])
        for name, r in rows.items()
        if r.get("sample")
    }


def spread(values: list[float]) -> float:
    return max(values) / min(values) - 1


def compare(runs: list[tuple[str, dict[str, Any]]], same_table: bool = False) -> dict[str, Any]:
    """The builds' spread per pruned model and over them. Raises SpreadError for fewer
    than two runs, runs that differ in what :data:`SAME` names, or the same table twice
    (with ``same_table``: runs of different tables)."""
    if len(runs) < 2:
        raise SpreadError("give at least two bench/lut_fidelity.py results")
    first_name, first = runs[0]
    for name, run in runs[1:]:
        for key in SAME:
            if run[key] != first[key]:
                what = "random widths" if key == "assignments" else key
                raise SpreadError(
                    f"{name} and {first_name} differ in {what}: only runs of one model, "
                    "shape, backend, precision, step and seed price the same pruned models"
                )
    tables = [run.get("table") for _, run in runs]
    if not same_table and None not in tables and len(set(tables)) < len(tables):
        raise SpreadError(
            f"the table {tables[0]!r} is in two runs: give separate builds, or --same-table "
            "to read runs of one table"
        )
    per_run = [ratios(run) for _, run in runs]
    models = sorted(per_run[0])
    if same_table:  # one table, one calibration: the same predictions in every run
        for (name, _), r in zip(runs[1:], per_run[1:]):
            off = [m for m in models if not math.isclose(r[m][0], per_run[0][m][0], rel_tol=1e-9)]
            if off:
                raise SpreadError(
                    f"--same-table reads runs of one table, but {name} predicts {off[0]} "
                    f"otherwise than {first_name} (another build or calibration)"
                )
    rows = []
    for m in models:
        pred = [r[m][0] for r in per_run]
        meas = [r[m][1] for r in per_run]
        rows.append(
            {
                "model": m,
                "predicted_ratio": pred,
                "measured_ratio": meas,
                "predicted_spread": spread(pred),
                "measured_spread": spread(meas),
            }
        )

    def stats(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "max": max(values)}

    errors = [
        stats([abs(r[m][0] / r[m][1] - 1) for m in models]) for r in per_run
    ]  # each build against its own run's measurement
    mean_measured = {
        m: math.exp(statistics.fmean(math.log(r[m][1]) for r in per_run)) for m in models
    }
    # Each run's measured ratios against the runs' mean: the part common to every model
    # (a run's one measurement of the unpruned model divides all of them) and the rest.
    shifts, scatter = [], []
    for r in per_run:
        dev = [math.log(r[m][1] / mean_measured[m]) for m in models]
        shift = statistics.fmean(dev)
        shifts.append(math.exp(shift) - 1)
        scatter.append(math.sqrt(statistics.fmean((d - shift) ** 2 for d in dev)))
    mean_errors = [
        stats([abs(r[m][0] / mean_measured[m] - 1) for m in models]) for r in per_run
    ]  # each build against the runs' mean measurement

    # Runs of tables with probes also priced the same models filled with their lines
    # (bench/lut_fidelity.py's pred_table_lines_ms): that fill against the same mean. Of
    # one table, those predictions are the same in every run that made them (checked), so
    # they stand against the mean of all the runs, older ones without them included.
    def lines_ratios(run: dict[str, Any]) -> dict[str, float] | None:
        if not all("pred_table_lines_ms" in row for row in run["rows"]):
            return None
        return {m: pred for m, (pred, _) in ratios(run, "pred_table_lines_ms").items()}

    priced = [lines_ratios(run) for _, run in runs]
    if same_table:
        priced = [p for p in priced if p is not None]
        for p in priced[1:]:
            if any(not math.isclose(p[m], priced[0][m], rel_tol=1e-9) for m in models):
                raise SpreadError(
                    "--same-table reads runs of one table, but their lines' fills price "
                    "the same models otherwise"
                )
        priced = priced[:1]
    lines = None
    if priced and None not in priced:
        lines = [stats([abs(p[m] / mean_measured[m] - 1) for m in models]) for p in priced]
    return {
        "benchmark": "lut_spread",
        "runs": [name for name, _ in runs],
        "tables": tables,
        "built_here": [run.get("build") is not None for _, run in runs],
        **{key: first[key] for key in SAME if key != "assignments"},
        "models": len(models),
        "predicted_spread": stats([r["predicted_spread"] for r in rows]),
        "measured_spread": stats([r["measured_spread"] for r in rows]),
        "ratio_errors": errors,
        "ratio_errors_against_mean": mean_errors,
        "ratio_errors_against_mean_lines": lines,
        "measured_shift": shifts,
        "measured_scatter_after_shift": scatter,
        "same_table": same_table,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    from lut_builder.cli_args import OneLineParser
    from lut_builder.errors import UserError
    from lut_builder.fileio import atomic_write_json, check_output

    p = OneLineParser(prog="lut_spread.py", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="bench/lut_fidelity.py results (JSON), one per build")
    p.add_argument(
        "--same-table", action="store_true",
        help="the runs priced one table: read the measurement's scatter between runs",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    try:
        out = check_output(args.out, flag="--out", parents=True) if args.out else None
        found = compare([(Path(path).name, load_run(path)) for path in args.runs], args.same_table)
    except (SpreadError, UserError) as exc:
        print(f"lut_spread.py: error: {exc}", file=sys.stderr)
        return 2
    n = len(found["runs"])
    what = "runs of one table" if found["same_table"] else "builds"
    print(f"{found['model']} {found['input_shape']}, {found['models']} pruned models, {n} {what}")
    print(f"{'model':<10} {'predicted ratio, each build':<{8 * n + 2}} spread  measured spread")
    for r in found["rows"]:
        pred = " ".join(f"{v:7.4f}" for v in r["predicted_ratio"])
        print(
            f"{r['model']:<10} {pred:<{8 * n + 2}} {100 * r['predicted_spread']:5.1f}%  "
            f"{100 * r['measured_spread']:5.1f}%"
        )
    for what in ("predicted", "measured"):
        s = found[f"{what}_spread"]
        print(f"{what} ratios between runs: median {s['median']:.1%}, max {s['max']:.1%}")
    for name, e, shift, rest in zip(
        found["runs"],
        found["ratio_errors"],
        found["measured_shift"],
        found["measured_scatter_after_shift"],
        strict=True,
    ):
        print(
            f"{name}: predicted ratio against its run, median {e['median']:.1%}, max "
            f"{e['max']:.1%}; its measured ratios {shift:+.1%} from the runs' mean in common, "
            f"{rest:.1%} rms beside that"
        )
    names = ["the table"] if found["same_table"] else found["runs"]
    for fill, key in (
        ("", "ratio_errors_against_mean"),
        (" filled with its lines", "ratio_errors_against_mean_lines"),
    ):
        for name, m in zip(names, found[key] or []):
            print(
                f"{name}{fill}: predicted ratio against the runs' mean, median "
                f"{m['median']:.1%}, max {m['max']:.1%}"
            )
    if out is not None:
        command = "python bench/lut_spread.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, {"command": command, **found}, indent=1)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
