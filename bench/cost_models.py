"""Latency cost models of the solver compared: ``one-sided`` (HALP) against ``joint``.

For a model, a latency table measured on ONNX Runtime (CPU) and several budgets, each
cost model chooses a plan two ways:

- ``single``: one solve at the budget, from the full model;
- ``progressive``: HALP's schedule, ``steps`` solves at budgets shrinking geometrically
  from the full latency to the target, each from the previous plan's alive channels
  (as the pruning loop calls the solver).

Every plan is built as a really pruned model (``ChannelGraph.remove``) and all of them,
with the unpruned model, are timed end to end round-robin in one run
(``lut_builder.measure_end_to_end``: in the table's unit when it defines one by a
reference workload, else plain interleaved timings). Reported per plan:
the table's prediction (exact layer sum + calibrated overhead) and the cost model's own
estimate against the budget, the measured latency against the budget and against the
prediction, the measured fraction of the unpruned model's latency against the requested
fraction, and the retained importance (``l2`` filter norms of the untrained model, the
same scores for both models, as a fraction of the whole model's).

Run under the benchmark lock::

    flock /tmp/halp-trt-bench.lock .venv/bin/python bench/cost_models.py \\
        --model halp_trt.models:resnet56 --input-shape 1,3,32,32

Writes ``bench/results/cost_model_<model>_onnxruntime.json`` (``--out``: elsewhere).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def schedule(full_ms: float, target_ms: float, steps: int) -> list[float]:
    """HALP's exponential schedule L_t = L0^(1 - t/T) * L^(t/T), t = 1..T."""
    return [full_ms ** (1 - t / steps) * target_ms ** (t / steps) for t in range(1, steps + 1)]


def measure(table, runners, rounds: int):
    from lut_builder import measure_end_to_end

    return measure_end_to_end(table, runners, warmup=5, runs=rounds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="halp_trt.models:resnet56")
    p.add_argument("--input-shape", default="1,3,32,32")
    p.add_argument("--table", default=None, help="reuse this ONNX Runtime table")
    p.add_argument("--budgets", default="0.4,0.5,0.6,0.7,0.8", help="fractions of full")
    p.add_argument("--steps", type=int, default=10, help="progressive schedule steps")
    p.add_argument("--rounds", type=int, default=100, help="interleaved timing rounds")
    p.add_argument("--scores", default="l2", help="importance criterion (no gradients)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", default=None,
        help="result JSON (default bench/results/cost_model_<model>_onnxruntime.json)",
    )  # fmt: skip
    args = p.parse_args(argv)

    from halp_trt.graph import ChannelGraph
    from halp_trt.importance import get_importance
    from halp_trt.solver import (
        COST_MODELS,
        DEFAULT_COST_MODEL,
        InfeasibleBudgetError,
        solve_budget,
    )
    from lut_builder import LatencyTable, calibrate_overhead, predict_latency
    from lut_builder.backends import get_backend, make_runner
    from lut_builder.build import build_table
    from lut_builder.specs import example_input, load_model, parse_shape

    torch.manual_seed(args.seed)
    shape = parse_shape(args.input_shape)
    model = load_model(args.model).eval()
    x = example_input(model, shape)
    tag = re.sub(r"[^A-Za-z0-9]+", "_", args.model.split(":")[-1]).strip("_")
    out_json = (
        Path(args.out)
        if args.out
        else ROOT / "bench/results" / f"cost_model_{tag}_onnxruntime.json"
    )

    tmp = tempfile.TemporaryDirectory()
    build = None
    if args.table is None:
        table_path = Path(tmp.name) / "table.sqlite"
        t0 = time.perf_counter()
        res = build_table(table_path, model, x, get_backend("onnxruntime"), calibration="none")
        with LatencyTable.open(table_path, writable=True) as table:
            calibrate_overhead(table, "onnxruntime", model, x)
        build = {"points": res.measured, "seconds": round(time.perf_counter() - t0, 1)}
        print(f"table: {res.measured} points, {build['seconds']} s")
    else:
        table_path = Path(args.table)
    table = LatencyTable.open(table_path)

    graph = ChannelGraph(copy.deepcopy(model), x)
    scores = get_importance(args.scores)(graph).scores()
    full_ms = predict_latency(
        table, [(i.signature, i.c_in, i.c_out) for i in graph.layers.values()]
    )
    fractions = [float(f) for f in args.budgets.split(",")]

    plans, infeasible = [], []
    for fraction in fractions:
        budget = fraction * full_ms
        try:  # a budget below every group's minimum is reported, not benchmarked
            solve_budget(graph, table, scores, budget)
        except InfeasibleBudgetError as exc:
            infeasible.append({"fraction": fraction, "error": str(exc)})
            print(f"skipped {fraction:.2f}: {exc}")
            continue
        for cost_model in COST_MODELS:
            t0 = time.perf_counter()
            single = solve_budget(graph, table, scores, budget, cost_model=cost_model)
            single_s = time.perf_counter() - t0
            plans.append(("single", fraction, cost_model, single, single_s))
            t0 = time.perf_counter()
            alive = None
            for step_ms in schedule(full_ms, budget, args.steps):
                plan = solve_budget(
                    graph, table, scores, step_ms, cost_model=cost_model, alive=alive
                )
                alive = plan.keep
            plans.append(("progressive", fraction, cost_model, plan, time.perf_counter() - t0))
            print(f"solved {fraction:.2f} {cost_model}", flush=True)

    # Build every plan as a pruned model; time them all, interleaved with the original.
    # Identical plans are built and timed once, so that they get one number.
    models, index = [model], {}
    for _, _, _, plan, _ in plans:
        key = tuple(sorted((g, tuple(k)) for g, k in plan.keep.items()))
        if key not in index:
            m = copy.deepcopy(model)
            ChannelGraph(m, x).remove(plan.keep)
            index[key] = len(models)
            models.append(m.eval())
    runners = [make_runner("onnxruntime", m, x) for m in models]
    t0 = time.perf_counter()
    measured = measure(table, runners, args.rounds)
    measure_s = time.perf_counter() - t0
    for r in runners:
        r.close()
    timings = [measured[0]] + [
        measured[index[tuple(sorted((g, tuple(k)) for g, k in plan.keep.items()))]]
        for _, _, _, plan, _ in plans
    ]

    full_measured = timings[0].median_ms
    overhead = table.overhead_ms or 0.0
    # Diagnostic of the latency table, not of the cost models: the same layer sums scaled
    # by the full model's measured / summed ratio instead of an additive overhead.
    scale = full_measured / (full_ms - overhead)
    total_score = sum(float(np.sum(s)) for s in scores.values())
    rows = []
    for (mode, fraction, cost_model, plan, seconds), t in zip(plans, timings[1:]):
        budget = fraction * full_ms
        kept_score = sum(float(np.sum(scores[g][list(k)])) for g, k in plan.keep.items())
        rows.append(
            {
                "mode": mode,
                "fraction": fraction,
                "cost_model": cost_model,
                "budget_ms": budget,
                "predicted_ms": plan.predicted_ms,
                "model_ms": plan.model_ms,
                "measured_ms": t.median_ms,
                "measured_spread": t.spread,
                "predicted_over_budget": plan.predicted_ms / budget,
                "model_over_budget": plan.model_ms / budget,
                "measured_over_budget": t.median_ms / budget,
                "measured_over_predicted": t.median_ms / plan.predicted_ms,
                # What the user asked for, end to end: the measured latency as a fraction
                # of the unpruned model's (same run), over the requested fraction.
                "measured_fraction_over_requested": t.median_ms / full_measured / fraction,
                "measured_over_scaled_prediction": t.median_ms
                / ((plan.predicted_ms - overhead) * scale),
                "retained": kept_score / total_score,
                "solves": plan.solves,
                "solve_s": seconds,
                "widths": plan.keep_counts,
            }
        )

    summary = {}
    for mode in ("single", "progressive"):
        for cost_model in COST_MODELS:
            rs = [r for r in rows if r["mode"] == mode and r["cost_model"] == cost_model]
            summary[f"{mode} {cost_model}"] = {
                "predicted_over_budget_mean": statistics.mean(
                    r["predicted_over_budget"] for r in rs
                ),
                "predicted_over_budget_min": min(r["predicted_over_budget"] for r in rs),
                "predicted_over_budget_max": max(r["predicted_over_budget"] for r in rs),
                "measured_over_budget_mean": statistics.mean(r["measured_over_budget"] for r in rs),
                "measured_over_budget_max": max(r["measured_over_budget"] for r in rs),
                "measured_over_predicted_median": statistics.median(
                    r["measured_over_predicted"] for r in rs
                ),
                "measured_fraction_over_requested_mean": statistics.mean(
                    r["measured_fraction_over_requested"] for r in rs
                ),
                "measured_fraction_over_requested_max": max(
                    r["measured_fraction_over_requested"] for r in rs
                ),
                "measured_over_scaled_prediction_median": statistics.median(
                    r["measured_over_scaled_prediction"] for r in rs
                ),
                "retained_mean": statistics.mean(r["retained"] for r in rs),
                "solve_s_mean": statistics.mean(r["solve_s"] for r in rs),
            }

    result = {
        "benchmark": "cost_models",
        "model": args.model,
        "input_shape": list(shape),
        "backend": "onnxruntime",
        "table_fingerprint": table.fingerprint,
        "table_overhead_ms": table.overhead_ms,
        "table_build": build,
        "full_predicted_ms": full_ms,
        "full_measured_ms": full_measured,
        "load_average": list(os.getloadavg()),
        "scores": args.scores,
        "steps": args.steps,
        "rounds": args.rounds,
        "measure_seconds": round(measure_s, 1),
        "distinct_plans_timed": len(models) - 1,
        "default_cost_model": DEFAULT_COST_MODEL,
        "summary": summary,
        "infeasible": infeasible,
        "rows": rows,
        "host": {"python": platform.python_version(), "torch": torch.__version__},
        "command": shlex.join(
            ["python", "bench/cost_models.py", *(sys.argv[1:] if argv is None else argv)]
        ),
    }
    table.close()
    tmp.cleanup()

    print(f"full: predicted {full_ms:.3f} ms, measured {timings[0].median_ms:.3f} ms")
    header = f"{'mode':<12}{'model':<11}{'budget':>7}{'pred/B':>8}{'model/B':>8}"
    header += f"{'meas/B':>8}{'meas/pred':>10}{'frac/req':>9}{'retained':>9}{'solves':>7}"
    print(header)
    for r in rows:
        print(
            f"{r['mode']:<12}{r['cost_model']:<11}{r['fraction']:>7.2f}"
            f"{r['predicted_over_budget']:>8.3f}{r['model_over_budget']:>8.3f}"
            f"{r['measured_over_budget']:>8.3f}{r['measured_over_predicted']:>10.3f}"
            f"{r['measured_fraction_over_requested']:>9.3f}"
            f"{r['retained']:>9.3f}{r['solves']:>7}"
        )
    print(json.dumps(summary, indent=1))
    out_json.parent.mkdir(parents=True, exist_ok=True)
    from lut_builder.fileio import atomic_write_json

    atomic_write_json(out_json, result, indent=1)
    print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
