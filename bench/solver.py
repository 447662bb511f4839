"""Solver benchmark: time and optimality of the multiple-choice knapsack.

1. Random instances (three shapes, 10-150 groups, up to 256 options): solve time, and
   the value against HiGHS (scipy.optimize.milp) at the full budget and at the
   guarantee's reference budget (0.5 % less).
2. The channel groups of ResNet-50/101/152 (the repository's ImageNet ResNets at
   224x224, batch 1, traced by ChannelGraph): the knapsack that ``solve_budget`` builds
   (bundle 8, gamma-distributed scores, costs from a latency table filled by the
   ``analytic`` backend), timed alone and end to end with both cost models.

Run (timings must not overlap other timing runs on this machine)::

    flock /tmp/halp-trt-bench.lock .venv/bin/python bench/solver.py [--quick]

Writes ``bench/results/solver.json`` (``solver_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from halp_trt.solver import solve_mckp  # noqa: E402

SHAPES = ("random", "stair", "cumsum")
RESNETS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3)}


def instance(rng: np.random.Generator, shape: str, n_groups: int, n_options: int):
    """One instance; every group has exactly ``n_options`` options.

    random: non-monotone values and costs, some negative costs.
    stair:  concave increasing values (sorted importances), staircase costs.
    cumsum: increasing values and costs with random increments (the hardest here: the
            Lagrangian reduction removes almost nothing).
    """
    values, costs = [], []
    for _ in range(n_groups):
        k = n_options
        if shape == "random":
            v = rng.random(k) * rng.uniform(0.1, 10)
            c = rng.normal(size=k) * rng.uniform(0.1, 5)
        elif shape == "stair":
            v = np.cumsum(np.sort(rng.random(k))[::-1])
            c = rng.uniform(0.01, 1.0) * np.ceil(np.arange(1, k + 1) / int(rng.integers(1, 17)))
        else:
            v = np.cumsum(rng.random(k))
            c = np.cumsum(rng.random(k))
        values.append(v)
        costs.append(c)
    lo = math.fsum(float(c.min()) for c in costs)
    hi = math.fsum(float(c.max()) for c in costs)
    return values, costs, lo + rng.uniform(0.3, 0.7) * (hi - lo)


def milp(values, costs, budget: float, time_limit: float):
    """HiGHS on the 0/1 model: (primal value, dual bound, seconds), or None if infeasible."""
    from scipy.optimize import Bounds, LinearConstraint
    from scipy.optimize import milp as highs
    from scipy.sparse import csr_matrix

    sizes = [len(v) for v in values]
    n = sum(sizes)
    v = np.concatenate(values)
    c = np.concatenate(costs)
    rows = np.repeat(np.arange(len(values)), sizes)
    one_each = csr_matrix((np.ones(n), (rows, np.arange(n))), shape=(len(values), n))
    t0 = time.perf_counter()
    res = highs(
        -v,
        constraints=[
            LinearConstraint(one_each, 1, 1),
            LinearConstraint(c[None, :], -np.inf, budget),
        ],
        integrality=np.ones(n),
        bounds=Bounds(0, 1),
        options={"mip_rel_gap": 1e-7, "time_limit": time_limit},
    )
    dt = time.perf_counter() - t0
    if res.x is None:
        return None
    return -float(res.fun), -float(res.mip_dual_bound), dt


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def optimality(values, costs, budget, sol, time_limit) -> dict:
    c_min = math.fsum(float(c.min()) for c in costs)
    reference = budget - 0.005 * max(abs(budget), budget - c_min)
    full = milp(values, costs, budget, time_limit)
    ref = milp(values, costs, reference, time_limit)
    out = {"milp_s": full[2] if full else None}
    if full:
        out["value_over_optimum"] = sol.value / full[1] if full[1] else None
        out["milp_gap"] = (full[1] - full[0]) / abs(full[1]) if full[1] else None
    if ref:
        # Proven when the value reaches HiGHS's upper bound at the reference budget.
        out["bound_holds"] = bool(sol.value >= ref[1] - 1e-9 * max(1.0, abs(ref[1])))
    return out


def bench_random(quick: bool) -> list[dict]:
    sizes = [(10, 32), (40, 64), (40, 256), (150, 256)]
    per_size = 2 if quick else 4
    milp_options = 4000 if quick else 11000
    rows = []
    rng = np.random.default_rng(2024)
    for shape in SHAPES:
        for n_groups, n_options in sizes:
            for _ in range(per_size):
                values, costs, budget = instance(rng, shape, n_groups, n_options)
                seconds, sol = timed(lambda v=values, c=costs, b=budget: solve_mckp(v, c, b), 3)
                row = {
                    "shape": shape,
                    "groups": n_groups,
                    "options": n_options,
                    "solve_s": seconds,
                }
                if n_groups * n_options <= milp_options:
                    row.update(optimality(values, costs, budget, sol, 120))
                rows.append(row)
                print(_fmt(row), flush=True)
    return rows


def _resnet_graph(name: str):
    import torch

    from halp_trt.graph import ChannelGraph
    from halp_trt.models.resnet import Bottleneck, ResNet

    torch.manual_seed(0)
    model = ResNet(Bottleneck, RESNETS[name])
    x = torch.randn(1, 3, 224, 224)
    return model, x, ChannelGraph(model, x)


def bench_resnets(quick: bool) -> list[dict]:
    from halp_trt.solver import solve_budget
    from halp_trt.solver.knapsack import _alive, _choices, _group_costs, _Network
    from lut_builder import LatencyTable, predict_latency
    from lut_builder.backends.analytic import AnalyticBackend
    from lut_builder.build import build_table

    rows = []
    names = ["resnet50"] if quick else list(RESNETS)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            model, x, graph = _resnet_graph(name)
            path = Path(tmp) / f"{name}.db"
            build_table(path, model, x, AnalyticBackend(alignment=8))
            table = LatencyTable.open(path)
            rng = np.random.default_rng(7)
            scores = {g.id: rng.gamma(2.0, size=g.size) for g in graph.prunable}
            full = predict_latency(
                table, [(i.signature, i.c_in, i.c_out) for i in graph.layers.values()]
            )
            live = _alive(graph, None)
            choices = _choices(graph, table, scores, live, graph.prunable, 8, None, False)
            net = _Network(graph, table)
            ref = {gid: len(k) for gid, k in live.items()}
            for model_name in ("one-sided", "joint"):
                costs, constant = _group_costs(net, choices, ref, model_name)
                values = [ch.values for ch in choices]
                budget = 0.5 * full - constant
                seconds, sol = timed(lambda v=values, c=costs, b=budget: solve_mckp(v, c, b), 5)
                row = {
                    "model": name,
                    "what": f"solve_mckp ({model_name} costs at full width)",
                    "groups": len(choices),
                    "options_max": max(len(v) for v in values),
                    "options_total": sum(len(v) for v in values),
                    "solve_s": seconds,
                }
                if name == "resnet50" or not quick:
                    row.update(optimality(values, costs, budget, sol, 300))
                rows.append(row)
                print(_fmt(row), flush=True)
            for model_name in ("one-sided", "joint"):

                def run(m=model_name, g=graph, t=table, s=scores, b=0.5 * full):
                    return solve_budget(g, t, s, b, cost_model=m)

                seconds, plan = timed(run, 1 if quick else 3)
                row = {
                    "model": name,
                    "what": f"solve_budget {model_name} at 0.5x",
                    "groups": len(choices),
                    "solve_s": seconds,
                    "solves": plan.solves,
                    "predicted_over_budget": plan.predicted_ms / (0.5 * full),
                    "retained": plan.retained,
                }
                rows.append(row)
                print(_fmt(row), flush=True)
            table.close()
    return rows


def _fmt(row: dict) -> str:
    parts = []
    for k, v in row.items():
        if isinstance(v, float):
            parts.append(f"{k}={v:.4g}")
        else:
            parts.append(f"{k}={v}")
    return "  ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and smaller cases")
    args = parser.parse_args()
    import scipy

    started = time.time()
    result = {
        "benchmark": "solver",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            # Other work on a shared machine inflates the times: recorded, not hidden.
            "load_average_at_start": list(os.getloadavg()),
        },
        "random": bench_random(args.quick),
        "resnets": bench_resnets(args.quick),
    }
    rand = result["random"]
    result["summary"] = {
        "random_instances": len(rand),
        "milp_checked": sum("bound_holds" in r for r in rand),
        "bound_violations": sum(r.get("bound_holds") is False for r in rand),
        "worst_value_over_optimum": min(
            (r["value_over_optimum"] for r in rand if r.get("value_over_optimum")), default=None
        ),
        "max_solve_s_by_size": {
            f"{g}x{k}": max(r["solve_s"] for r in rand if (r["groups"], r["options"]) == (g, k))
            for g, k in sorted({(r["groups"], r["options"]) for r in rand})
        },
        "resnet_mckp_s": {
            f"{r['model']} {r['what'].split('(')[1].split()[0]}": r["solve_s"]
            for r in result["resnets"]
            if r["what"].startswith("solve_mckp")
        },
    }
    result["seconds"] = time.time() - started
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    out = ROOT / "bench" / "results" / ("solver_quick.json" if args.quick else "solver.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    from lut_builder.fileio import atomic_write_json

    atomic_write_json(out, result, indent=1)
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
