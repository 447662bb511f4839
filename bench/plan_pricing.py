"""How well each table priced the plans of bench/pareto.py results.

bench/pareto.py records, per pruned model, its widths, its latency measured interleaved
with the dense model, and the measured table's prediction. This prices the same widths
again on other tables (another build of the measured table, the MACs table) and prints,
per method and target, measured / predicted over the seeds: 1.00 is a table that prices
the plan truly, above 1 an optimistic one.

Two questions it answers, with no new training:

- Does the table the plan was solved on misprice it more than an independent build of
  the same table does? Then the solver chose points measured low by chance (the
  optimizer's curse), and a second look at those points would correct it.
- Does measuring price the plans better than counting MACs? The MACs table's prediction
  of a plan is its MAC fraction (no calibration).

``--pair A,B`` also prices what two methods' plans differ by, seed by seed: B's latency
minus A's (fractions of the dense model's), measured and as each table predicts it. Where
both plans are steered to one measured latency (the ``-calib`` feedback corrects a
table's scale), what is left between two tables is how they price the plans against
each other, and this reads it on the plans themselves rather than on random widths.

Each ``--table NAME=PATH`` is opened read-only; ``--lines NAME=PATH`` opens one filled
with its lines whatever its probes chose (:func:`lut_builder.table.grid.fill`: as tables
built before probes were filled), to price the same measurements both ways; ``--macs
NAME`` adds the MACs table of
bench/pareto.py (analytic, rebuilt here in a temporary directory on the result's grid
step and alignment). Every model is rebuilt from the result's widths on the channel
graph of the result's model; a run whose widths the graph cannot take is an error.

Several results of one model (runs on other seeds, other methods) are priced together,
each run recorded with its result's file name, and summarised over all of them; results
of other models or input shapes, or (with ``--macs``) other grid steps or alignments, are
refused.

    .venv/bin/python bench/plan_pricing.py bench/results/pareto_mobilenetv2.json \\
        --table measured=T.db --table rebuilt=T2.db --macs macs \\
        --out bench/results/plan_pricing_mobilenetv2.json
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class BenchError(Exception):
    """Bad input: one line, exit code 2."""


@functools.cache
def load_pareto() -> Any:
    """bench/pareto.py as a module (its parser and MACs table)."""
    spec = importlib.util.spec_from_file_location("bench_pareto", ROOT / "bench/pareto.py")
    pareto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pareto)
    return pareto


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = load_pareto().OneLineParser(prog="plan_pricing.py", description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="+", help="bench/pareto.py results (JSON) of one model")
    p.add_argument(
        "--table", action="append", default=[], metavar="NAME=PATH", help="a table to price on"
    )
    p.add_argument(
        "--lines",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a table to price on, filled with its lines whatever its probes chose",
    )
    p.add_argument("--macs", metavar="NAME", help="also price on the MACs table, named NAME")
    p.add_argument(
        "--pair",
        metavar="A,B",
        help="also price method B's plans minus method A's, seed by seed (runs' names)",
    )
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    p.add_argument("--note", default="", help="what the tables are, kept in the JSON")
    return p.parse_args(argv)


def write_figures(out: Path, script: str, argv: list[str] | None, figures: dict) -> None:
    """Write a bench script's figures to ``out`` (atomically) with the command that gave
    them (``python bench/SCRIPT ARGS``, no path of the machine it ran on)."""
    from lut_builder.fileio import atomic_write_json

    command = f"python bench/{script} " + shlex.join(sys.argv[1:] if argv is None else argv)
    name = script.removesuffix(".py")
    out.parent.mkdir(parents=True, exist_ok=True)  # checked with parents=True
    atomic_write_json(out, {"benchmark": name, "command": command, **figures})
    print(f"wrote {out}")


def load_result(path: str) -> dict[str, Any]:
    """A bench/pareto.py result (its runs, model and input shape there), or BenchError."""
    try:
        result = json.loads(Path(path).read_text())
        result["runs"], result["model"], result["input_shape"]  # noqa: B018
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"{path} is not a bench/pareto.py result ({exc})") from None
    return result


def load_results(paths: list[str]) -> dict[str, dict[str, Any]]:
    """Each path's bench/pareto.py result under its file name, in order; BenchError for a
    file name given twice (the names are what the output records)."""
    results: dict[str, dict[str, Any]] = {}
    for path in paths:
        name = Path(path).name
        if name in results:
            raise BenchError(f"each result once (two results are named {name})")
        results[name] = load_result(path)
    return results


def merged_runs(results: dict[str, dict], methods: tuple[str, str]) -> list[dict]:
    """The runs of ``methods`` in ``results`` (file name -> result) as one list; a
    method's run of one seed and target in two of the files is BenchError."""
    where: dict[tuple[str, str, int], str] = {}
    runs = []
    for name, result in results.items():
        for r in result["runs"]:
            if r.get("method") not in methods:
                continue
            key = (r["method"], r.get("target"), r.get("seed"))
            if key in where:
                raise BenchError(
                    f"{key[0]} at {key[1]}, seed {key[2]}, is in both {where[key]} and "
                    f"{name}: give each run once"
                )
            where[key] = name
            runs.append(r)
    return runs


def method_pair(text: str, flag: str) -> tuple[str, str]:
    """``A,B`` as two different methods' names, or BenchError naming ``flag``."""
    pair = tuple(m.strip() for m in text.split(","))
    if len(pair) != 2 or not all(pair) or pair[0] == pair[1]:
        raise BenchError(f"{flag} {text!r}: give two different methods, A,B")
    return pair


def run_floor(run: dict[str, Any], settings: dict[str, Any] | None) -> float | None:
    """The per-group floor a bench/pareto.py run pruned at: the one it recorded, else its
    result's ``--min-keep``; None where neither says (a baseline, or a run older than
    the record of its floor)."""
    floor = run.get("min_keep")
    if floor is None:
        floor = (settings or {}).get("min_keep")
    return None if floor is None else float(floor)


def floored_method(run: dict[str, Any], settings: dict[str, Any] | None) -> str:
    """A bench/pareto.py run's method, named with halp-trt's per-group floor where it
    pruned at another than 0.3 (``halp-auto-calib@floor0.1``): the floor the run recorded,
    else its result's ``--min-keep``. 0.3 was the pruner's default under every criterion
    until the default followed the criterion (0.1 where ``auto`` runs ``taylor-fisher``),
    so a method's bare name keeps meaning the one floor across the record; other methods
    have no floor and keep their names."""
    method = str(run["method"])
    if not method.startswith("halp-"):
        return method
    return floor_named(method, run_floor(run, settings))


def floor_named(method: str, floor: float | None) -> str:
    """``method`` named with a per-group floor, as :func:`floored_method` names a run's:
    bare at 0.3 (or no floor recorded), else ``method@floor0.1``."""
    from halp_trt.prune.pruner import DEFAULT_MIN_KEEP

    if floor is None or abs(floor - DEFAULT_MIN_KEEP) < 1e-9:
        return method
    return f"{method}@floor{floor:g}"


def keep_counts(graph: Any, convs: list[str], widths: list[int]) -> dict[int, int]:
    """Channels each prunable group keeps in a model whose Conv2d layers (module order)
    have ``widths`` output channels: read off one producer conv of each group."""
    if len(widths) != len(convs):
        raise BenchError(f"{len(widths)} widths recorded for a model of {len(convs)} convs")
    keep = {}
    for g in graph.prunable:
        ref = next((p for p in g.producers if p.layer in convs), None)
        if ref is None:
            continue
        removed, rest = divmod(
            graph.layers[ref.layer].c_out - widths[convs.index(ref.layer)],
            ref.multiplicity(g.size),
        )
        if rest or not 0 <= removed < g.size:
            raise BenchError(f"widths do not fit group {g.id} ({g.size} channels)")
        keep[g.id] = g.size - removed
    return keep


def same_setting(results: list[tuple[str, dict]], keys: tuple[str, ...], what: str) -> None:
    """BenchError unless every result of ``results`` (file name, result) has the first
    one's value at each of ``keys``; ``what`` ends the message (what may go together)."""
    first_name, first = results[0]
    for name, result in results:
        for key in keys:
            if result.get(key) != first.get(key):
                raise BenchError(
                    f"{name} has {key} {result.get(key)!r}, {first_name} {first.get(key)!r}: {what}"
                )


def price(results: dict[str, dict], tables: dict[str, Any]) -> dict[str, Any]:
    """measured / predicted per run and table, and their summary per method and target,
    over the runs of ``results`` (file name -> result, all of one model and input shape)."""
    import torch
    import torch.nn as nn

    from halp_trt.graph import ChannelGraph
    from halp_trt.prune import network_latency
    from halp_trt.specs import example_input, load_model

    result = next(iter(results.values()))
    torch.manual_seed(0)
    model = load_model(result["model"]).eval()
    x = example_input(model, tuple(result["input_shape"]))
    graph = ChannelGraph(model, x)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    full = graph.widths({})
    dense = {k: network_latency(t, graph.layers, full) for k, t in tables.items()}
    runs = []
    for name, r in ((n, r) for n, res in results.items() for r in res["runs"]):
        if r.get("status") != "ok" or "measured_ratio" not in r:
            continue
        widths = graph.widths(keep_counts(graph, convs, r["widths"]))
        predicted = {
            k: network_latency(t, graph.layers, widths) / dense[k] for k, t in tables.items()
        }
        runs.append(
            {
                "result": name,
                "method": r["method"],
                "target": r["target"],
                "seed": r["seed"],
                "measured_ratio": r["measured_ratio"],
                "predicted_ratio": predicted,
                "measured_over_predicted": {
                    k: r["measured_ratio"] / v for k, v in predicted.items()
                },
            }
        )
    summary: dict[str, dict[str, Any]] = {}
    for key in sorted({(r["target"], r["method"]) for r in runs}):
        rs = [r for r in runs if (r["target"], r["method"]) == key]
        summary.setdefault(key[0], {})[key[1]] = {
            name: {
                "mean": statistics.fmean(v := [r["measured_over_predicted"][name] for r in rs]),
                "min": min(v),
                "max": max(v),
                "n": len(v),
            }
            for name in tables
        }
    return {"runs": runs, "summary": summary}


def pairs(runs: list[dict[str, Any]], methods: tuple[str, str], names: list[str]) -> dict:
    """Per target, over the seeds with a priced run of both ``methods`` (A, B): B's
    latency minus A's as a fraction of the dense model's, measured and predicted by each
    table, and each table's error on it (predicted minus measured: its mean with a 95% t
    interval, its median size, on how many seeds it had the sign right), from ``runs``
    with at most one of a method at a seed and target (:func:`merged_runs` checks the
    results). BenchError where no seed has both."""
    from halp_trt.prune.schedule import target_fraction

    a, b = methods
    by = {(r["target"], r["seed"], r["method"]): r for r in runs if r["method"] in methods}
    interval = load_pareto().paired_interval
    out: dict[str, Any] = {}
    for target in sorted({k[0] for k in by}, key=lambda t: -(target_fraction(t) or 0.0)):
        seeds = sorted(s for t, s, m in by if t == target and m == a and (t, s, b) in by)
        if not seeds:
            continue
        two = [(by[(target, s, a)], by[(target, s, b)]) for s in seeds]
        measured = [rb["measured_ratio"] - ra["measured_ratio"] for ra, rb in two]
        tables = {}
        for name in names:
            predicted = [
                rb["predicted_ratio"][name] - ra["predicted_ratio"][name] for ra, rb in two
            ]
            error = [p - m for p, m in zip(predicted, measured)]
            tables[name] = {
                "predicted_mean": statistics.fmean(predicted),
                "error_mean": statistics.fmean(error),
                "error_ci": interval(error)["ci"],
                "error_abs_median": statistics.median(abs(e) for e in error),
                "sign_right": sum(p * m > 0 for p, m in zip(predicted, measured)),
            }
        out[target] = {
            "methods": [a, b],
            "seeds": seeds,
            "measured_mean": statistics.fmean(measured),
            "tables": tables,
        }
    if not out:
        raise BenchError(f"no seed has a priced run of both {a} and {b} at one target")
    return out


def main(argv: list[str] | None = None) -> int:
    from halp_trt.errors import UserError
    from lut_builder import LatencyTable
    from lut_builder.errors import UserError as LutUserError
    from lut_builder.fileio import check_output

    args = parse_args(argv)
    tables: dict[str, Any] = {}
    try:
        out = check_output(args.out, flag="--out", parents=True) if args.out else None
        results = load_results(args.results)
        same_setting(
            list(results.items()), ("model", "input_shape"), "price one model's results together"
        )
        if not args.table and not args.lines and not args.macs:
            raise BenchError("give at least one --table NAME=PATH or --macs NAME")
        pair = method_pair(args.pair, "--pair") if args.pair is not None else None
        if pair is not None:
            merged_runs(results, pair)  # a method's run of one seed and target once
        for flag, specs in (("--table", args.table), ("--lines", args.lines)):
            for spec in specs:
                name, sep, path = spec.partition("=")
                if not sep or not name or not path or name in tables:
                    raise BenchError(f"{flag} {spec!r} must be NAME=PATH, each NAME once")
                tables[name] = LatencyTable.open(path)
                if flag == "--lines":
                    tables[name].use_lines()
        with tempfile.TemporaryDirectory() as tmp:
            if args.macs:
                if args.macs in tables:
                    raise BenchError(f"--macs {args.macs}: that name is already a --table")
                tables[args.macs] = macs_table(results, Path(tmp) / "macs.db")
            priced = price(results, tables)
            if pair is not None:
                priced["pairs"] = pairs(priced["runs"], pair, list(tables))
    except (BenchError, UserError, LutUserError) as exc:
        print(f"plan_pricing.py: error: {exc}", file=sys.stderr)
        return 2
    finally:
        for t in tables.values():
            t.close()
    names = list(tables)
    print(
        "measured / predicted per plan: mean (min-max) over seeds; "
        + ("result " if len(results) == 1 else "results ")
        + ", ".join(args.results)
    )
    print(f"{'target':7s} {'method':22s} " + " ".join(f"{n:>20s}" for n in names))
    for target, by_method in priced["summary"].items():
        for method, cells in by_method.items():
            shown = [f"{c['mean']:.3f} ({c['min']:.2f}-{c['max']:.2f})" for c in cells.values()]
            print(f"{target:7s} {method:22s} " + " ".join(f"{s:>20s}" for s in shown))
    for target, cell in priced.get("pairs", {}).items():
        a, b = cell["methods"]
        print(
            f"{target}: {b} minus {a}, latency over the dense model's, mean over "
            f"{len(cell['seeds'])} seeds: measured {cell['measured_mean']:+.4f}"
        )
        for name, t in cell["tables"].items():
            ci = "" if t["error_ci"] is None else " [{:+.4f}, {:+.4f}]".format(*t["error_ci"])
            print(
                f"  {name:>12s}: predicted {t['predicted_mean']:+.4f}, error "
                f"{t['error_mean']:+.4f}{ci}, median |error| {t['error_abs_median']:.4f}, "
                f"sign right on {t['sign_right']} of {len(cell['seeds'])}"
            )
    if out is not None:
        tables_named = {
            **{n: Path(p).name for n, p in (s.partition("=")[::2] for s in args.table)},
            **{
                n: f"{Path(p).name} (filled with its lines)"
                for n, p in (s.partition("=")[::2] for s in args.lines)
            },
            **({args.macs: "MACs (analytic)"} if args.macs else {}),
        }
        figures = {"results": list(results), "note": args.note, "tables": tables_named}
        write_figures(out, "plan_pricing.py", argv, {**figures, **priced})
    return 0


def macs_table(results: dict[str, dict], path: Path) -> Any:
    """bench/pareto.py's MACs table for the results' model, grid step and alignment (one
    for all of them, else BenchError)."""
    import torch

    from halp_trt.specs import example_input, load_model

    pareto = load_pareto()
    grids = {
        name: ((r.get("table") or {}).get("step"), (r.get("table") or {}).get("alignment"))
        for name, r in results.items()
    }
    first, (step, align) = next(iter(grids.items()))
    for name, (s, a) in grids.items():
        if not s or not a:
            raise BenchError(f"{name} records no table step and alignment for --macs")
        if (s, a) != (step, align):
            raise BenchError(
                f"{name} was solved on grid step {s} and alignment {a}, {first} on {step} and "
                f"{align}: one MACs table cannot price both"
            )
    result = results[first]
    torch.manual_seed(0)
    model = load_model(result["model"]).eval()
    return pareto.macs_table(
        path, model, example_input(model, tuple(result["input_shape"])), step, align
    )


if __name__ == "__main__":
    raise SystemExit(main())
