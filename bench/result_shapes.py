"""What the pruned models of bench/pareto.py runs kept, by kind of channel group.

bench/plan_shapes.py shows the knapsack's one-shot plans of freshly trained models;
this reads the models the pareto runs really fine-tuned and graded (each row's
``widths``: the out-channels of every Conv2d, in module order) and splits the model's
prunable groups by who writes them: coupled (several dense convs: a residual stream,
written by a stage's first projection or the stem and every block's projection) or
single (one: a block's inner width, an expanded layer with its depthwise conv, a
stage's stream without residual adds). Per method over the seeds of the given runs it prints
the mean kept fraction of each kind beside the mean accuracy: whether the methods that
score higher keep the streams or the inner widths.

    python bench/result_shapes.py bench/results/pareto_mobilenetv2_hard_v4_zen3_pre10_03x_e6_blocks_fastnas.json \\
        --out bench/results/result_shapes_mobilenetv2_hard_v4_03x.json

A seed of one method in several runs counts once, the mean of its runs: a halp-trt
method run again beside other baselines on the same dense models plans and scores a
little differently each time (its latency feedback measures), and every run is as much
its result as the other. A halp-trt run pruned at another per-group floor than 0.3 is a
method of its own, named with it (``halp-auto-calib@floor0.5``,
:func:`plan_pricing.floored_method`), as in bench/pareto_pool.py and
bench/pareto_pairs.py.
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
    keep_counts,
    load_pareto,
    load_result,
    same_setting,
    write_figures,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = load_pareto().OneLineParser(prog="result_shapes.py", description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="+", help="bench/pareto.py results (JSON) of one model")
    p.add_argument("--target", default=None, help="only this target (e.g. 0.3x)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    return p.parse_args(argv)


def stream_groups(graph: Any, model: Any) -> dict[int, bool]:
    """Each prunable group of ``graph`` that a conv of ``model`` writes: whether it is a
    residual stream (:attr:`ChannelGraph.residual_streams`: written by several dense
    layers; a block's inner width has one, a depthwise conv beside it writing the same
    channels)."""
    import torch.nn as nn

    convs = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    streams = graph.residual_streams
    return {
        g.id: g.id in streams for g in graph.prunable if any(r.layer in convs for r in g.producers)
    }


def shapes(results: list[tuple[str, dict]], target: str | None = None) -> dict[str, Any]:
    """Per target and method: seeds, mean accuracy, mean kept fraction of coupled and
    single groups. Raises BenchError for runs of different models or input shapes, or
    rows whose widths do not fit the model."""
    import torch.nn as nn

    from halp_trt.graph import ChannelGraph
    from halp_trt.specs import example_input, load_model

    same_setting(results, ("model", "input_shape"), "only runs of one model and input shape")
    first = results[0][1]
    model = load_model(first["model"])
    graph = ChannelGraph(model, example_input(model, tuple(first["input_shape"])))
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    stream = stream_groups(graph, model)
    size = {g.id: g.size for g in graph.prunable}
    kinds = {
        kind: [gid for gid, is_stream in stream.items() if is_stream == coupled]
        for kind, coupled in (("coupled", True), ("single", False))
    }
    kinds = {kind: gids for kind, gids in kinds.items() if gids}
    rows: dict[tuple[str, str], dict[int, list[dict[str, float]]]] = {}
    for name, result in results:
        for r in result["runs"]:
            if r.get("status") != "ok" or "widths" not in r or "val_acc" not in r:
                continue
            if target is not None and r["target"] != target:
                continue
            try:
                keep = keep_counts(graph, convs, r["widths"])
            except BenchError as exc:
                raise BenchError(f"{name}: a {r['method']} row: {exc}") from None
            method = floored_method(r, result.get("settings"))
            rows.setdefault((r["target"], method), {}).setdefault(int(r["seed"]), []).append(
                {
                    "val_acc": r["val_acc"],
                    **{
                        kind: statistics.fmean(keep[g] / size[g] for g in gids)
                        for kind, gids in kinds.items()
                    },
                }
            )
    out: dict[str, Any] = {"runs": [n for n, _ in results], "by_target": {}}
    for (t, method), seeds in sorted(rows.items()):
        # Each seed once: the mean of its runs, then the mean over the seeds.
        vals = [
            {key: statistics.fmean(run[key] for run in runs) for key in runs[0]}
            for runs in seeds.values()
        ]
        entry: dict[str, Any] = {
            "seeds": sorted(seeds),
            "val_acc_mean": statistics.fmean(v["val_acc"] for v in vals),
            **{f"{kind}_kept_mean": statistics.fmean(v[kind] for v in vals) for kind in kinds},
        }
        if any(len(runs) > 1 for runs in seeds.values()):
            entry["runs_per_seed"] = {str(k): len(v) for k, v in sorted(seeds.items())}
        out["by_target"].setdefault(t, {})[method] = entry
    out["groups"] = {kind: len(kinds.get(kind, ())) for kind in ("coupled", "single")}
    return out


def main(argv: list[str] | None = None) -> int:
    from lut_builder.errors import UserError as LutUserError
    from lut_builder.fileio import check_output

    args = parse_args(argv)
    try:
        out = check_output(args.out, flag="--out", parents=True) if args.out else None
        results = [(Path(p).name, load_result(p)) for p in args.results]
        found = shapes(results, args.target)
    except (BenchError, LutUserError) as exc:
        print(f"result_shapes.py: error: {exc}", file=sys.stderr)
        return 2
    n = found["groups"]
    print(f"kept fraction of {n['coupled']} coupled groups (streams) and {n['single']} single")
    print(
        f"{'target':>6}  {'method':<30} {'seeds':>5} {'runs':>4}  {'acc':>6}  {'coupled':>7}  "
        f"{'single':>6}"
    )
    for t, by_method in found["by_target"].items():
        for method, s in by_method.items():
            runs = sum(s.get("runs_per_seed", {}).values()) or len(s["seeds"])
            print(
                f"{t:>6}  {method:<30} {len(s['seeds']):>5} {runs:>4}  {s['val_acc_mean']:.4f}  "
                f"{s.get('coupled_kept_mean', float('nan')):7.2f}  "
                f"{s.get('single_kept_mean', float('nan')):6.2f}"
            )
    if out is not None:
        write_figures(out, "result_shapes.py", argv, found)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
