"""Several bench/pareto.py runs of one model pooled seed by seed, and how far apart one
method's own neighbouring plans land.

Each run pairs its methods inside each seed (the same dense model, the same machine
minutes): the reference method minus each other method at the reference's measured
latency, interpolated along the other method's points of that seed (bench/pareto.py's
``summarise``). Runs on other seeds add pairs; this pools those per-seed differences
and gives their mean and 95% t interval over all seeds. Runs of one seed with other
methods join into that seed when they pruned the same dense model (its recorded
accuracy equal: training is deterministic on one machine), each method's latency read
against the dense model in its own run; one method of one seed and target in two runs
is refused (it would be counted twice), as are runs of other models, data or input
shapes. A halp-trt run pruned at another per-group floor than 0.3 (``--min-keep F``, or
the pruner's default where it follows the criterion) is named with it
(``halp-auto-calib@floor0.1``, :func:`plan_pricing.floored_method`): a method of its
own, pooled beside the same method's runs at 0.3 and set against the baselines of
either (``--reference halp-auto-calib@floor0.1``). Without ``--reference`` the pool sets
the others against the method the results were run against (their ``--reference``),
named with its floor.

The yardstick beside it: Torch-Pruning and uniform width run twice per seed and target,
at the reference's latency and one alignment step wider (``tp-taylor`` and
``tp-taylor+``). The two plans of one method are a few percent of the dense latency
apart; how much their accuracies differ (wider minus matched, in points) is what one
method's plans differ by that is no method's merit, the size a difference between
methods must beat. (FastNAS's second plan, ``modelopt-fastnas+``, is not one of them: it
lies across the reference's latency at another FLOPs bound.)

    .venv/bin/python bench/pareto_pool.py bench/results/pareto_resnet18_hard_v4_avx2.json \\
        bench/results/pareto_resnet18_hard_v4_avx2_seeds.json \\
        --out bench/results/pareto_pool_resnet18_hard_v4_avx2.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from plan_pricing import (  # noqa: E402
    BenchError,
    floored_method,
    load_pareto,
    load_result,
    same_setting,
    write_figures,
)

#: What runs must share to be pooled.
SAME = ("model", "data", "input_shape")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = load_pareto().OneLineParser(prog="pareto_pool.py", description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="+", help="bench/pareto.py results (JSON) of one model")
    p.add_argument(
        "--reference",
        default=None,
        help="the method the others are set against (default: the one the results were run "
        "against, named with its floor where it is not 0.3: halp-auto-calib@floor0.1)",
    )
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    return p.parse_args(argv)


def _ok(run: dict) -> bool:
    return run.get("status") == "ok" and "measured_ratio" in run and "val_acc" in run


def floored(result: dict) -> list[dict]:
    """The result's runs, its halp-trt methods named with their per-group floor where it
    is not 0.3 (:func:`plan_pricing.floored_method`)."""
    settings = result.get("settings")
    return [{**r, "method": floored_method(r, settings)} for r in result["runs"]]


def recorded_reference(results: list[tuple[str, dict]]) -> str:
    """The reference the results were run against (their ``--reference``), named as the
    pool names its runs (with the floor they recorded,
    :func:`plan_pricing.floored_method`). Raises BenchError where no result records one
    with a run, or they record more than one."""
    names: dict[str, list[str]] = {}
    for name, result in results:
        settings = result.get("settings") or {}
        runs = [r for r in result["runs"] if r["method"] == settings.get("reference") and _ok(r)]
        for method in {floored_method(r, settings) for r in runs}:
            names.setdefault(method, []).append(name)
    if len(names) != 1:
        which = "; ".join(f"{m} in {', '.join(n)}" for m, n in sorted(names.items()))
        raise BenchError(
            f"the results were run against different references ({which}): pass --reference"
            if names
            else "the results record no reference with a run of its own: pass --reference"
        )
    return next(iter(names))


def pool(results: list[tuple[str, dict]], reference: str) -> dict[str, Any]:
    """Pooled reference-minus-method differences per target, and the neighbouring plans'
    spread per method. Raises BenchError for runs that cannot be pooled."""
    from halp_trt.prune.schedule import target_fraction

    pareto = load_pareto()
    first_name, first = results[0]
    every: list[dict] = []
    owner: dict[tuple, str] = {}
    joined: dict[int, list[str]] = {}
    dense_acc: dict[int, Any] = {}
    for name, result in results:
        same_setting(
            [(first_name, first), (name, result)],
            SAME,
            "only runs of one model, data and input shape pool",
        )
        timing = pareto.result_timing(result.get("settings"))
        first_timing = pareto.result_timing(first.get("settings"))
        if timing != first_timing:
            raise BenchError(
                f"{name} was timed {timing}, {first_name} {first_timing}: only runs "
                "timed one way pool"
            )
        runs = floored(result)
        dense = result.get("dense") or {}
        for seed in sorted({int(r["seed"]) for r in runs}):
            acc = (dense.get(str(seed)) or {}).get("val_acc")
            if seed in joined:
                # A seed in two runs joins only on one dense model (training is
                # deterministic on one machine: the same seed gives the same accuracy).
                if acc is None or dense_acc[seed] is None or acc != dense_acc[seed]:
                    raise BenchError(
                        f"seed {seed} is in {joined[seed][0]} and {name}, whose dense models "
                        f"are not known to be one (val acc {dense_acc[seed]} and {acc}): "
                        "runs of one seed join only on the same dense model"
                    )
                joined[seed].append(name)
            else:
                joined[seed], dense_acc[seed] = [name], acc
        for r in runs:
            key = (int(r["seed"]), r["target"], r["method"])
            if _ok(r):  # a failed or excluded run is not counted, so not twice either
                if key in owner:
                    raise BenchError(
                        f"seed {key[0]} is in {owner[key]} and {name} with {key[2]} at "
                        f"{key[1]} in both: it would be counted twice"
                    )
                owner[key] = name
            every.append({**r, "seed": key[0]})
    for seed, names in sorted(joined.items()):
        if not any(r["method"] == reference for r in every if r["seed"] == seed):
            methods = sorted({r["method"] for r in every if r["seed"] == seed})
            raise BenchError(
                f"{' + '.join(names)} has no {reference!r} run of seed {seed} "
                f"(methods: {', '.join(methods)})"
            )
    runs_of = {seed: "+".join(names) for seed, names in joined.items()}
    methods = sorted({r["method"] for r in every})
    targets = sorted({r["target"] for r in every}, key=lambda t: -target_fraction(t))
    found = pareto.summarise(every, methods, targets, reference=reference)
    pairs: dict[str, dict[str, list[dict]]] = {}
    for target, by_method in found["equal_latency"].items():
        for method, eq in by_method.items():
            rows = pairs.setdefault(target, {}).setdefault(method, [])
            for seed, diff, inside in zip(eq["seeds"], eq["per_seed"], eq["bracketed"]):
                rows.append({"run": runs_of[seed], "seed": seed, "diff": diff, "bracketed": inside})
    neighbours: dict[str, list[dict]] = {}
    ok = {(r["seed"], r["target"], r["method"]): r for r in every if _ok(r)}
    for (seed, target, method), wide in sorted(ok.items()):
        # The knob methods' second plans, one step wider; FastNAS's lies across the
        # reference's latency at another FLOPs bound, maybe far, maybe narrower.
        knob = method.endswith("+") and method[:-1] in pareto.KNOB_METHODS
        base = ok.get((seed, target, method[:-1])) if knob else None
        if base is None:
            continue
        neighbours.setdefault(method[:-1], []).append(
            {
                "run": runs_of[seed],
                "seed": seed,
                "target": target,
                "acc_points": 100 * (wide["val_acc"] - base["val_acc"]),
                "ratio_gap": wide["measured_ratio"] - base["measured_ratio"],
            }
        )
    out: dict[str, Any] = {"reference": reference, "runs": [n for n, _ in results]}
    out["equal_latency"] = {
        target: {
            method: {
                "seeds": len(rows),
                "halp_minus_method_mean": statistics.fmean(r["diff"] for r in rows),
                "ahead": sum(r["diff"] > 0 for r in rows),
                "bracketed": sum(bool(r["bracketed"]) for r in rows),
                **pareto.paired_interval([r["diff"] for r in rows]),
                "per_seed": rows,
            }
            for method, rows in by_method.items()
        }
        for target, by_method in pairs.items()
    }
    out["neighbouring_plans"] = {
        method: _spread(rows) for method, rows in sorted(neighbours.items())
    }
    every = [r for rows in neighbours.values() for r in rows]
    if every:
        out["neighbouring_plans"]["all"] = _spread(every)
    return out


def _spread(rows: list[dict]) -> dict[str, Any]:
    acc = [r["acc_points"] for r in rows]
    return {
        "pairs": len(acc),
        "mean_points": statistics.fmean(acc),
        "sd_points": statistics.stdev(acc) if len(acc) > 1 else None,
        "mean_abs_points": statistics.fmean(abs(a) for a in acc),
        "min_points": min(acc),
        "max_points": max(acc),
        "wider_lower": sum(a < 0 for a in acc),
        "ratio_gap_mean": statistics.fmean(r["ratio_gap"] for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    from lut_builder.errors import UserError as LutUserError
    from lut_builder.fileio import check_output

    args = parse_args(argv)
    try:
        out = check_output(args.out, flag="--out", parents=True) if args.out else None
        results = [(Path(p).name, load_result(p)) for p in args.results]
        reference = args.reference or recorded_reference(results)
        found = pool(results, reference)
    except (BenchError, LutUserError) as exc:
        print(f"pareto_pool.py: error: {exc}", file=sys.stderr)
        return 2

    print(f"{reference} minus each method at its measured latency, points, 95% t interval")
    print(
        f"{'target':>6}  {'method':<22} {'seeds':>5}  {'mean':>6}  {'interval':<16} ahead  "
        "bracketed (the rest read off the method's points beyond their ends)"
    )
    for target, by_method in found["equal_latency"].items():
        for method, eq in by_method.items():
            ci = eq["ci"]
            span = f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "-"
            print(
                f"{target:>6}  {method:<22} {eq['seeds']:>5}  "
                f"{100 * eq['halp_minus_method_mean']:+6.2f}  {span:<16} "
                f"{eq['ahead']}/{eq['seeds']}  {eq['bracketed']}/{eq['seeds']}"
            )
    if found["neighbouring_plans"]:
        print("one method's plan one step wider minus its matched plan, points:")
        for method, s in found["neighbouring_plans"].items():
            sd = "-" if s["sd_points"] is None else f"{s['sd_points']:.2f}"
            print(
                f"  {method:<12} {s['pairs']:>3} pairs  mean {s['mean_points']:+.2f}  sd {sd}  "
                f"mean |.| {s['mean_abs_points']:.2f}  range {s['min_points']:+.1f} to "
                f"{s['max_points']:+.1f}  wider scored lower in {s['wider_lower']}  "
                f"(latency {s['ratio_gap_mean']:+.3f} of the dense apart)"
            )
    if out is not None:
        write_figures(out, "pareto_pool.py", argv, found)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
