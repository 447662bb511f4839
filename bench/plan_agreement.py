"""Where two tables send the knapsack: the plans of two methods of pareto results, group by group.

bench/pareto.py's ``halp-taylor-abs`` and ``halp-taylor-abs-macs`` run the same importance,
solver, schedule and feedback on two tables: the measured one and one whose costs are
MACs. Where their accuracies coincide, this tells why from the plans themselves, with no
new training:

- how many of the plans' channels differ between the two methods at one seed and target,
  against how many differ between two seeds of the same method (what the training's
  noise alone moves), and the mean of both over the seeds with the mean accuracy gap;
- how many groups each plan leaves at the pruner's floor (``min_keep`` of the group,
  rounded up to whole bundles), where no table has a choice;
- how alike the two tables rank the groups: each group's cost per channel (one bundle
  removed, every other group as it is: at the dense widths, and at each of the first
  method's plans), its rank correlation between the tables, and the spread of the
  measured cost per MAC (a table proportional to MACs would have none); at the dense
  widths also each group's, relative to the median, to name the groups at its ends;
- for each group the two plans differ in on three seeds or more, by how many channels the
  second method keeps more of it on the mean, and the rank correlation over the seeds
  between that difference and the accuracy difference (second minus first, in points):
  if a gap in accuracy came from what the plans trade in a group, the seeds that trade
  more of it would score further apart.

Several results of one model, data and input shape (seeds run in parts) are read as one;
a method's run of one seed and target in two of them is refused. Each group's cost is the
network latency model of the pruner (``network_latency``) on the table; the MACs table is
bench/pareto.py's (analytic, rebuilt here in a temporary directory on the results' grid
step and alignment).

    .venv/bin/python bench/plan_agreement.py bench/results/pareto_mobilenetv2_avx2.json \\
        [more results of that model and data] --table T.db \\
        --methods halp-taylor-abs,halp-taylor-abs-macs \\
        --out bench/results/plan_agreement_mobilenetv2_avx2.json
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from plan_pricing import (  # noqa: E402
    BenchError,
    keep_counts,
    load_pareto,
    load_results,
    macs_table,
    merged_runs,
    method_pair,
    run_floor,
    same_setting,
    write_figures,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = load_pareto().OneLineParser(prog="plan_agreement.py", description=__doc__.split("\n")[0])
    p.add_argument(
        "results",
        nargs="+",
        help="bench/pareto.py results (JSON) of one model, data and input shape",
    )
    p.add_argument("--table", required=True, help="the measured table the results were run on")
    p.add_argument(
        "--methods",
        default="halp-taylor-abs,halp-taylor-abs-macs",
        help="two methods of the result: A,B (A's plans are where the costs are read)",
    )
    p.add_argument(
        "--min-keep",
        type=float,
        default=None,
        help="the floor (the one its two methods' runs recorded, else the result's, else "
        "0.3, the pruner's under a named criterion)",
    )
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    return p.parse_args(argv)


def ranks(values: list[float]) -> list[float]:
    """Ranks from 1, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson of the ranks); None under three points or
    when either side is constant."""
    if len(a) != len(b) or len(a) < 3:
        return None
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    return cov / (va * vb) ** 0.5 if va and vb else None


def channel_cost(graph: Any, table: Any, keep: dict[int, int], bundles: dict[int, int]):
    """Each group's latency per channel at ``keep``: down to the next whole number of
    bundles below it, the rest as is (groups at one bundle are left out)."""
    from halp_trt.prune import network_latency

    here = network_latency(table, graph.layers, graph.widths(keep))
    costs = {}
    for gid, b in bundles.items():
        fewer = (keep[gid] - 1) // b * b
        if fewer < b:
            continue
        less = network_latency(table, graph.layers, graph.widths({**keep, gid: fewer}))
        costs[gid] = (here - less) / (keep[gid] - fewer)
    return costs


def compare_costs(
    measured: dict[int, float], macs: dict[int, float], free: set[int], by_group: bool = False
):
    """Rank correlation of two tables' per-channel costs, over all groups and over the
    ``free`` ones, and the spread of measured / MACs (relative to its median); with
    ``by_group`` each group's measured / MACs relative to that median too."""
    gids = sorted(set(measured) & set(macs))
    free_ids = [g for g in gids if g in free]
    per_mac = [measured[g] / macs[g] for g in gids if macs[g] > 0]
    mid = statistics.median(per_mac) if per_mac else 0.0
    rel = sorted(v / mid for v in per_mac) if mid > 0 else []
    extra = {}
    if by_group:
        extra["ms_per_mac_rel_by_group"] = {
            str(g): measured[g] / macs[g] / mid for g in gids if macs[g] > 0 and mid > 0
        }
    return {
        "groups": len(gids),
        "spearman": spearman([measured[g] for g in gids], [macs[g] for g in gids]),
        "free_groups": len(free_ids),
        "spearman_free": spearman([measured[g] for g in free_ids], [macs[g] for g in free_ids]),
        "ms_per_mac_rel": (
            {
                "min": rel[0],
                "q25": rel[len(rel) // 4],
                "q75": rel[(3 * len(rel)) // 4],
                "max": rel[-1],
            }
            if rel
            else None
        ),
        **extra,
    }


def differ(a: dict[int, int], b: dict[int, int]) -> dict[str, Any]:
    """Channels and groups in which two plans differ; channels as a fraction of the
    mean of the two plans' kept channels."""
    moved = sum(abs(a[g] - b[g]) for g in a)
    kept = (sum(a.values()) + sum(b.values())) / 2
    return {
        "channels": moved,
        "fraction": moved / kept if kept else 0.0,
        "groups": sum(1 for g in a if a[g] != b[g]),
    }


def mean_or_none(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def trade_by_group(rows: list[dict], a_name: str, b_name: str) -> dict[str, dict[str, Any]]:
    """Per group the plans differ in on at least three seeds: on how many
    (``seeds_differ``), the mean of B's minus A's kept channels over every seed
    (``b_minus_a_channels``) and Spearman's correlation over the seeds between that
    difference and B's minus A's accuracy in points (``spearman_with_points``; None where
    either is constant)."""
    out: dict[str, dict[str, Any]] = {}
    points = [100 * (r["val_acc"][b_name] - r["val_acc"][a_name]) for r in rows]
    for g in sorted({g for r in rows for g in r["keep"][a_name]}, key=int):
        diffs = [r["keep"][b_name][g] - r["keep"][a_name][g] for r in rows]
        if sum(1 for d in diffs if d) < 3:
            continue
        out[str(g)] = {
            "seeds_differ": sum(1 for d in diffs if d),
            "b_minus_a_channels": statistics.fmean(diffs),
            "spearman_with_points": spearman(diffs, points),
        }
    return out


def agreement(result: dict, table: Any, macs: Any, methods: tuple[str, str], min_keep: float):
    """The figures of the module's docstring, per target and seed (``result``: its
    model and input shape, and the runs of every result read)."""
    import torch
    import torch.nn as nn

    from halp_trt.graph import ChannelGraph
    from halp_trt.solver.knapsack import least_option
    from halp_trt.specs import example_input, load_model

    torch.manual_seed(0)
    model = load_model(result["model"]).eval()
    x = example_input(model, tuple(result["input_shape"]))
    graph = ChannelGraph(model, x)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    groups = {g.id: g for g in graph.prunable}
    options = {gid: least_option(table, g, g.size, min_keep=min_keep) for gid, g in groups.items()}
    bundles = {gid: b for gid, (b, _) in options.items()}
    floors = {gid: least for gid, (_, least) in options.items()}
    dense = {gid: g.size for gid, g in groups.items()}

    plans: dict[tuple[str, str, int], dict[str, Any]] = {}
    for r in result["runs"]:
        if r.get("status") == "ok" and r.get("method") in methods and "widths" in r:
            keep = keep_counts(graph, convs, r["widths"])
            plans[(r["method"], r["target"], r["seed"])] = {"keep": keep, "run": r}
    a_name, b_name = methods
    for name in methods:
        if not any(k[0] == name for k in plans):
            raise BenchError(f"the result has no finished run of method {name!r}")

    at_dense = compare_costs(
        channel_cost(graph, table, dense, bundles),
        channel_cost(graph, macs, dense, bundles),
        set(groups),
        by_group=True,
    )
    targets = sorted({k[1] for k in plans}, key=lambda t: -float(t.rstrip("x")))
    out: dict[str, Any] = {}
    for target in targets:
        seeds = sorted(s for (m, t, s) in plans if m == a_name and t == target)
        rows = []
        for seed in seeds:
            a = plans[(a_name, target, seed)]
            b = plans.get((b_name, target, seed))
            if b is None:
                continue
            ka, kb = a["keep"], b["keep"]
            at_floor_a = {g for g in groups if ka[g] <= floors[g]}
            at_floor_b = {g for g in groups if kb[g] <= floors[g]}
            free = set(groups) - at_floor_a - at_floor_b
            costs = compare_costs(
                channel_cost(graph, table, ka, bundles),
                channel_cost(graph, macs, ka, bundles),
                free,
            )
            rows.append(
                {
                    "seed": seed,
                    "differ": differ(ka, kb),
                    "floor": {
                        "a": len(at_floor_a),
                        "b": len(at_floor_b),
                        "both": len(at_floor_a & at_floor_b),
                    },
                    "costs_at_a": costs,
                    "val_acc": {a_name: a["run"]["val_acc"], b_name: b["run"]["val_acc"]},
                    "measured_ratio": {
                        a_name: a["run"].get("measured_ratio"),
                        b_name: b["run"].get("measured_ratio"),
                    },
                    "keep": {a_name: ka, b_name: kb},
                }
            )
        between = [
            differ(plans[(a_name, target, s)]["keep"], plans[(a_name, target, t)]["keep"])
            for s, t in itertools.combinations(seeds, 2)
        ]
        out[target] = {
            "seeds": rows,
            "between_seeds_a": between,
            "mean": {
                "differ_fraction": mean_or_none([r["differ"]["fraction"] for r in rows]),
                "between_seeds_a_fraction": mean_or_none([p["fraction"] for p in between]),
                "a_minus_b_points": mean_or_none(
                    [100 * (r["val_acc"][a_name] - r["val_acc"][b_name]) for r in rows]
                ),
            },
            "trade_by_group": trade_by_group(rows, a_name, b_name),
        }
    return {
        "groups": len(groups),
        "channels": sum(dense.values()),
        "floors": floors,
        "costs_at_dense": at_dense,
        "targets": out,
    }


def main(argv: list[str] | None = None) -> int:
    from halp_trt.errors import UserError
    from halp_trt.prune.pruner import DEFAULT_MIN_KEEP
    from lut_builder import LatencyTable
    from lut_builder.errors import UserError as LutUserError
    from lut_builder.fileio import check_output

    args = parse_args(argv)
    opened: list[Any] = []
    try:
        out = check_output(args.out, flag="--out", parents=True) if args.out else None
        results = load_results(args.results)
        same_setting(
            list(results.items()), ("model", "data", "input_shape"), "give results of one model"
        )
        methods = method_pair(args.methods, "--methods")
        result = {**next(iter(results.values())), "runs": merged_runs(results, methods)}
        min_keep = args.min_keep
        if min_keep is None:
            # the floor the two methods' runs recorded, else the result's (the pruner's
            # default follows the criterion: halp_trt.prune.pruner.default_min_keep),
            # else 0.3
            recorded = {
                run_floor(r, res.get("settings"))
                for res in results.values()
                for r in res["runs"]
                if r.get("method") in methods
            } - {None}
            if len(recorded) > 1:
                raise BenchError(
                    f"the runs of {' and '.join(methods)} were pruned at floors "
                    f"{', '.join(f'{f:g}' for f in sorted(recorded))}: give one (--min-keep)"
                )
            min_keep = recorded.pop() if recorded else DEFAULT_MIN_KEEP
        opened.append(table := LatencyTable.open(args.table))
        with tempfile.TemporaryDirectory() as tmp:
            opened.append(macs := macs_table(results, Path(tmp) / "macs.db"))
            found = agreement(result, table, macs, methods, float(min_keep))
    except (BenchError, UserError, LutUserError) as exc:
        print(f"plan_agreement.py: error: {exc}", file=sys.stderr)
        return 2
    finally:
        for t in opened:
            t.close()

    a_name, b_name = methods
    d = found["costs_at_dense"]
    spread = d["ms_per_mac_rel"]
    print(f"{found['groups']} prunable groups, {found['channels']} channels; min_keep {min_keep:g}")
    print(
        f"per-channel cost, measured vs MACs table, at the dense widths: Spearman "
        f"{d['spearman']:.2f} over {d['groups']} groups; measured per MAC, relative to its "
        f"median: {spread['min']:.2f}-{spread['max']:.2f} (quartiles {spread['q25']:.2f}-"
        f"{spread['q75']:.2f})"
    )
    print(f"A = {a_name}, B = {b_name}")
    print(
        f"{'target':6s} {'seed':>4s} {'A-B ch':>7s} {'%':>6s} {'groups':>6s} "
        f"{'floor A/B/both':>14s} {'rho':>5s} {'rho free':>8s} {'acc A':>7s} {'acc B':>7s}"
    )
    for target, t in found["targets"].items():
        for r in t["seeds"]:
            c = r["costs_at_a"]
            rho = "-" if c["spearman"] is None else f"{c['spearman']:.2f}"
            rho_free = "-" if c["spearman_free"] is None else f"{c['spearman_free']:.2f}"
            f = r["floor"]
            floor = f"{f['a']}/{f['b']}/{f['both']}"
            print(
                f"{target:6s} {r['seed']:4d} {r['differ']['channels']:7d} "
                f"{100 * r['differ']['fraction']:5.1f}% {r['differ']['groups']:6d} "
                f"{floor:>14s} {rho:>5s} {rho_free:>8s} {r['val_acc'][a_name]:7.4f} "
                f"{r['val_acc'][b_name]:7.4f}"
            )
        if t["between_seeds_a"]:
            fr = [100 * p["fraction"] for p in t["between_seeds_a"]]
            print(
                f"{target:6s} A between its seeds: {min(fr):.1f}-{max(fr):.1f}% of the "
                f"channels ({len(fr)} pairs)"
            )
        m = t["mean"]
        if m["differ_fraction"] is not None:
            between = m["between_seeds_a_fraction"]
            print(
                f"{target:6s} mean over {len(t['seeds'])} seeds: A-B "
                f"{100 * m['differ_fraction']:.1f}% of the channels"
                + ("" if between is None else f" (A between its seeds {100 * between:.1f}%)")
                + f", accuracy A-B {m['a_minus_b_points']:+.2f} points"
            )
        for g, tr in t["trade_by_group"].items():
            rho = tr["spearman_with_points"]
            print(
                f"{target:6s} group {g:>3s}: B keeps {tr['b_minus_a_channels']:+6.1f} channels "
                f"on the mean ({tr['seeds_differ']} seeds differ), rank correlation with "
                f"B-A points {'-' if rho is None else f'{rho:+.2f}'}"
            )
    if out is not None:
        figures = {
            "results": list(results),
            "table": Path(args.table).name,
            "methods": list(methods),
            "min_keep": min_keep,
        }
        write_figures(out, "plan_agreement.py", argv, {**figures, **found})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
