"""Where a measured table and a MAC count send the knapsack, priced on the measured table.

For one model and one measured latency table (any backend: a GPU table measured
elsewhere is read here as a file), and each target, the same importance (L2 filter norms
of the untrained model, seeded) and solver choose two plans:

- ``measured``: solved on the table for ``target`` of the unpruned model's latency;
- ``macs``: solved on a table of the same grid whose costs are MACs (bench/pareto.py's
  ``macs_table``) for ``target`` of the unpruned model's MACs, as a MACs-driven pipeline
  asked for that target would;
- ``macs_matched``: the MACs-table plan whose predicted latency on the measured table is
  the largest not above the ``measured`` plan's (its MACs target found by bisection):
  the two at equal latency, where their retained importance can be compared.

Each plan's latency is the measured table's prediction (its network latency model), as a
fraction of the unpruned model's; beside it its MACs fraction (exact; ``macs_table``: the
MACs table's, channel counts rounded up to the alignment) and retained importance
(fraction of the scores of the groups the solver decides). Nothing is timed: how far the
table's predictions can be trusted is what ``bench/lut_fidelity.py`` measures on the
same table, and the figures are the table's, not the device's.

    python bench/plan_tables.py --model torchvision:resnet18 --input-shape 32,3,224,224 \\
        --table bench/results/gpu/torchvision_resnet18_b32.db --targets 0.9x,0.8x \\
        --out bench/results/plan_tables_resnet18_h200.json

Bad input (a table that does not cover the model, a target at or above 1x, or below
what the table allows at the floor) is one line, exit code 2, nothing written.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


class InputError(Exception):
    """Bad input: reported in one line with exit code 2."""


def parse_targets(text: str) -> list[float]:
    out = []
    for part in text.split(","):
        try:
            f = float(part.strip().removesuffix("x"))
        except ValueError:
            raise InputError(f"--targets: {part!r} is not a fraction like 0.8x") from None
        if not 0 < f < 1:
            raise InputError(f"--targets: {part.strip()} is not between 0x and 1x")
        out.append(f)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--input-shape", required=True)
    ap.add_argument("--table", required=True, type=Path, help="the measured latency table")
    ap.add_argument("--targets", default="0.9x,0.8x", help="fractions of the latency")
    ap.add_argument("--min-keep", type=float, default=0.3, help="per-group floor (pruner's)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the untrained weights")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    try:
        result = run(args, list(sys.argv[1:] if argv is None else argv))
    except InputError as exc:
        print(f"plan_tables.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"{'target':>6}  {'plan':<13} {'latency':>8} {'MACs':>6} {'importance':>10}")
    for row in result["rows"]:
        for name in ("measured", "macs", "macs_matched"):
            p = row[name]
            print(
                f"{row['target']:>5.2f}x  {name:<13} {p['latency']:>8.3f} {p['macs']:>6.3f} "
                f"{p['importance']:>10.3f}"
            )
    if args.out is not None:
        from lut_builder.fileio import atomic_write_json

        atomic_write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    import torch

    from halp_trt.graph import ChannelGraph
    from halp_trt.importance import get_importance
    from halp_trt.prune.pruner import network_latency
    from halp_trt.solver import solve_budget
    from lut_builder import LatencyTable
    from lut_builder.errors import UserError
    from lut_builder.specs import example_input, load_model, parse_shape

    targets = parse_targets(args.targets)
    if args.out is not None and not args.out.parent.is_dir():
        raise InputError(f"--out: {args.out.parent} is not a directory")
    if not args.table.is_file():
        raise InputError(f"--table: {args.table} is not a file")
    try:
        shape = parse_shape(args.input_shape)
        torch.manual_seed(args.seed)
        model = load_model(args.model).eval()
        x = example_input(model, shape)
        table = LatencyTable.open(args.table)
    except (UserError, ValueError) as exc:
        raise InputError(str(exc).splitlines()[0]) from None
    from pareto import macs_table

    graph = ChannelGraph(copy.deepcopy(model), x)
    scores = get_importance("l2")(graph).scores()
    total = sum(float(scores[g.id].sum()) for g in graph.prunable)
    full_widths = {n: (i.c_in, i.c_out) for n, i in graph.layers.items()}

    def macs_of(widths: dict) -> int:
        return sum(
            graph.layers[n].signature.macs(c_in, c_out)
            for n, (c_in, c_out) in widths.items()
            if c_in > 0 and c_out > 0
        )

    try:
        full_ms = network_latency(table, graph.layers, full_widths)
    except UserError as exc:
        raise InputError(f"{args.table} does not cover {args.model}: {exc}") from None
    full_macs = macs_of(full_widths)

    with tempfile.TemporaryDirectory(prefix="plan-tables-") as tmp:
        macs = macs_table(Path(tmp) / "macs.db", model, x, table.step, table.alignment)
        macs_full = network_latency(macs, graph.layers, full_widths)

        def solve(tab: Any, budget: float) -> Any:
            try:
                return solve_budget(graph, tab, scores, budget, min_keep=args.min_keep)
            except UserError as exc:
                raise InputError(str(exc).splitlines()[0]) from None

        def describe(plan: Any, **extra: Any) -> dict:
            # Groups the plan does not list keep every channel.
            kept = sum(
                float(scores[g.id][list(plan.keep[g.id])].sum())
                if g.id in plan.keep
                else float(scores[g.id].sum())
                for g in graph.prunable
            )
            return {
                "latency": network_latency(table, graph.layers, plan.widths) / full_ms,
                "macs": macs_of(plan.widths) / full_macs,
                # The MACs table's own figure (its channel counts rounded up to the
                # alignment, as bench/pareto.py's MACs table counts them).
                "macs_table": network_latency(macs, graph.layers, plan.widths) / macs_full,
                "importance": kept / total,
                "widths": {str(g): len(k) for g, k in plan.keep.items()},
                **extra,
            }

        rows = []
        for f in targets:
            m = describe(solve(table, f * full_ms))
            a = describe(solve(macs, f * macs_full), macs_target=f)
            # Bisection on the MACs target: the largest whose plan is predicted no slower
            # than the measured plan (the floor's plan is the smallest any target gives).
            lo, hi, best = 0.0, 1.0, None
            for _ in range(24):
                mid = (lo + hi) / 2
                try:
                    p = solve_budget(graph, macs, scores, mid * macs_full, min_keep=args.min_keep)
                except UserError:  # below the floor
                    lo = mid
                    continue
                d = describe(p, macs_target=mid)
                if d["latency"] <= m["latency"] + 1e-12:
                    best, lo = d, mid
                else:
                    hi = mid
            if best is None:
                raise InputError(f"no MACs-table plan is as fast as the measured one at {f}x")
            rows.append({"target": f, "measured": m, "macs": a, "macs_matched": best})
        macs.close()
    fp = table.fingerprint
    return {
        "model": args.model,
        "input_shape": list(shape),
        "table": str(args.table),
        "table_device": fp.get("device"),
        "table_backend": fp.get("backend"),
        "table_precision": fp.get("precision"),
        "step": table.step,
        "alignment": table.alignment,
        "min_keep": args.min_keep,
        "importance": "l2, untrained weights",
        "seed": args.seed,
        "rows": rows,
        "command": "python bench/plan_tables.py " + shlex.join(argv),
    }


if __name__ == "__main__":
    raise SystemExit(main())
