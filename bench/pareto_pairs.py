"""Two bench/pareto.py methods paired on every dense model both were run on, across runs.

bench/pareto_pool.py pools runs of one model and setting at equal measured latency. A
default criterion serves every model and setting, so the question "is A ahead of B" is
asked across all the runs on record: this reads bench/pareto.py results (by default every
``bench/results/pareto_*.json`` that is one, not the pooled or swapped files derived
from them), keys each model by its setting (model, data, latency input shape, dense
epochs, fine-tuning epochs, halp-trt's per-group floor where a run set one, target) and
seed and the dense model's recorded accuracy (so that two methods pair only on one dense
model: training is deterministic on one machine), averages a method's repeated runs of
one key, and gives A minus B per setting and over every pair: mean, standard error, 95%
t interval over the pairs, pairs ahead.

Each accuracy is the model's own, at its own measured latency, not interpolated to
equal latency as bench/pareto_pool.py does: halp-trt's plans land within a few percent
of their target and the knob methods are matched to the reference's, so the pairs
compare models of about one latency; the mean ratios of the two are printed beside.

    .venv/bin/python bench/pareto_pairs.py halp-taylor-weights halp-taylor-abs \\
        --out bench/results/pareto_pairs_taylor_weights_abs.json

``--targets 0.6x,0.7x`` keeps those targets only (the "all pairs" row is then over them).
``--count-as halp-auto-calib:taylor-weights-mean=halp-taylor-weights-mean-calib`` counts
the runs of a method that recorded that criterion (``auto`` records the one it ran) as
runs of another method, so that a default's runs join the runs of what it ran. A
halp-trt run pruned at another per-group floor than 0.3 (``--min-keep``, or the pruner's
default where it follows the criterion) is named with it, ``halp-auto-calib@floor0.1``,
and pairs under that name only: never averaged into the same method's runs at 0.3.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from plan_pricing import BenchError, floored_method, load_pareto, write_figures  # noqa: E402

#: What two runs must share for their models to pair (with the target and seed).
SETTING = ("model", "data", "input_shape", "pretrain_epochs", "epochs", "min_keep")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = load_pareto().OneLineParser(prog="pareto_pairs.py", description=__doc__.split("\n")[0])
    p.add_argument("a", help="a bench/pareto.py method (e.g. halp-taylor-weights)")
    p.add_argument("b", help="the method it is set against (e.g. halp-taylor-abs)")
    p.add_argument(
        "--results",
        nargs="+",
        default=None,
        help="bench/pareto.py results (JSON); default every bench/results/pareto_*.json",
    )
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    p.add_argument("--targets", type=_targets, default=None, help="only these, e.g. 0.6x,0.7x")
    p.add_argument(
        "--count-as", action="append", type=_count_as, default=[], metavar="M:CRITERION=N",
        help="count method M's runs that recorded CRITERION as runs of method N (repeatable)",
    )  # fmt: skip
    return p.parse_args(argv)


def _targets(text: str) -> set[str]:
    pareto = load_pareto()  # bench/pareto.py's --targets, one parser
    try:
        return set(pareto.target_fractions(text))
    except pareto.BenchError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _count_as(text: str) -> tuple[tuple[str, str], str]:
    source, _, new = text.partition("=")
    method, _, criterion = source.partition(":")
    if not (method and criterion and new):
        raise argparse.ArgumentTypeError(f"--count-as takes METHOD:CRITERION=METHOD, got {text!r}")
    return (method, criterion), new


def default_results() -> list[Path]:
    """Every bench/pareto.py result under bench/results (not the pooled, paired or
    swapped files derived from them)."""
    return sorted(
        p
        for p in (ROOT / "bench/results").glob("pareto_*.json")
        if not p.name.startswith(("pareto_pool", "pareto_pairs"))
        and not p.name.endswith("_swapped.json")
    )


def _setting(result: dict[str, Any]) -> tuple:
    settings = result.get("settings") or {}
    shape = result.get("input_shape")
    return (
        settings.get("model", result.get("model")),
        settings.get("data", result.get("data")),
        ",".join(str(d) for d in shape) if isinstance(shape, list) else str(shape),
        settings.get("pretrain_epochs"),
        settings.get("epochs"),
        settings.get("min_keep"),  # halp-trt's floor: None is the pruner's default
    )


def collect(
    paths: list[Path],
    targets: set[str] | None = None,
    count_as: dict[tuple[str, str], str] | None = None,
) -> dict[tuple, dict[str, list[tuple[float, float]]]]:
    """Per (setting, target, seed, dense accuracy): each method's (accuracy, measured
    ratio) over the runs, of ``targets`` only if given; a run of method ``M`` that
    recorded criterion ``C`` counts as method ``count_as[(M, C)]`` where that is given.
    Files that are not bench/pareto.py results are skipped."""
    found: dict[tuple, dict[str, list[tuple[float, float]]]] = {}
    for path in paths:
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise BenchError(f"cannot read {path}: {exc}") from None
        if not isinstance(result, dict) or result.get("benchmark", "pareto") != "pareto":
            continue
        runs, dense = result.get("runs"), result.get("dense")
        if not isinstance(runs, list) or not isinstance(dense, dict):
            continue
        setting = _setting(result)
        for run in runs:
            if run.get("status") != "ok" or "val_acc" not in run:
                continue
            if targets is not None and run["target"] not in targets:
                continue
            acc = (dense.get(str(run["seed"])) or {}).get("val_acc")
            if acc is None:
                continue  # no dense accuracy recorded: cannot tell its dense model
            key = (*setting, run["target"], int(run["seed"]), round(float(acc), 6))
            ratio = run.get("measured_ratio")
            method = (count_as or {}).get((run["method"], run.get("importance")), run["method"])
            # halp-trt at another floor than 0.3 (the pruner's default where it follows the
            # criterion, or --min-keep) is a method of its own: halp-auto-calib@floor0.1
            method = floored_method({**run, "method": method}, result.get("settings"))
            found.setdefault(key, {}).setdefault(method, []).append(
                (float(run["val_acc"]), float("nan") if ratio is None else float(ratio))
            )
    return found


def _summary(
    diffs: list[float], ratios: list[tuple[float, float]], interval: Any
) -> dict[str, Any]:
    n = len(diffs)
    sd = statistics.stdev(diffs) if n > 1 else None
    return {
        "pairs": n,
        "a_minus_b_mean": statistics.fmean(diffs),
        "standard_error": None if sd is None else sd / n**0.5,
        **interval(diffs),
        "ahead": sum(d > 0 for d in diffs),
        "a_ratio_mean": statistics.fmean(r[0] for r in ratios),
        "b_ratio_mean": statistics.fmean(r[1] for r in ratios),
    }


def pairs(found: dict[tuple, dict[str, list]], a: str, b: str) -> dict[str, Any]:
    """A minus B per setting and target, and over every pair."""
    by_setting: dict[tuple, tuple[list[float], list]] = {}
    for key, methods in sorted(found.items(), key=lambda kv: str(kv[0])):
        if a not in methods or b not in methods:
            continue
        acc = {m: statistics.fmean(x[0] for x in methods[m]) for m in (a, b)}
        ratio = {m: statistics.fmean(x[1] for x in methods[m]) for m in (a, b)}
        diffs, ratios = by_setting.setdefault(key[: len(SETTING) + 1], ([], []))
        diffs.append(acc[a] - acc[b])
        ratios.append((ratio[a], ratio[b]))
    if not by_setting:
        raise BenchError(f"no dense model has both {a} and {b} in the results read")
    interval = load_pareto().paired_interval  # bench/pareto.py's, loaded once
    settings = [
        {"setting": dict(zip((*SETTING, "target"), key)), **_summary(d, r, interval)}
        for key, (d, r) in by_setting.items()
    ]
    every = [x for d, _ in by_setting.values() for x in d]
    every_ratios = [x for _, r in by_setting.values() for x in r]
    return {"a": a, "b": b, "settings": settings, "all": _summary(every, every_ratios, interval)}


def main(argv: list[str] | None = None) -> int:
    from lut_builder.errors import UserError as LutUserError
    from lut_builder.fileio import check_output

    args = parse_args(argv)
    try:
        out = check_output(args.out, flag="--out", parents=True) if args.out else None
        paths = [Path(p) for p in args.results] if args.results else default_results()
        found = pairs(collect(paths, args.targets, dict(args.count_as)), args.a, args.b)
    except (BenchError, LutUserError) as exc:
        print(f"pareto_pairs.py: error: {exc}", file=sys.stderr)
        return 2

    def row(label: str, s: dict[str, Any]) -> str:
        ci = s["ci"]
        span = f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "-"
        return (
            f"{label:<58} {s['pairs']:>5}  {100 * s['a_minus_b_mean']:+6.2f}  {span:<14} "
            f"{s['ahead']:>3}/{s['pairs']:<3} {s['a_ratio_mean']:.3f} / {s['b_ratio_mean']:.3f}"
        )

    print(f"{args.a} minus {args.b}, points, each at its own measured latency")
    print(f"{'setting':<58} {'pairs':>5}  {'mean':>6}  {'95% interval':<14} ahead   ratios")
    for s in found["settings"]:
        k = s["setting"]
        model = str(k["model"]).split(":")[-1]
        data = Path(str(k["data"]).split(":")[-1]).name
        floor = "" if k["min_keep"] is None else f" floor {k['min_keep']:g}"
        label = (
            f"{model} {data} {k['input_shape']} e{k['pretrain_epochs']}+{k['epochs']}{floor} "
            f"{k['target']}"
        )
        print(row(label, s))
    print(row("all pairs", found["all"]))
    if out is not None:
        write_figures(out, "pareto_pairs.py", argv, found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
