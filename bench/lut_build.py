"""What the sparse grid costs in accuracy: sparse-filled surfaces against full 2-D grids.

For the largest signatures of a model, measure every point of the full 2-D grid at the
step, then rebuild each surface from only the points the ``sparse`` strategy would have
measured (a coarse 2-D grid plus full-resolution lines through the full widths) and
compare it with the measured points it did not use (its probes left out too). Three
fills are compared: bilinear over the coarse grid corrected by the lines, plain bilinear
over the coarse grid, and the table's (whichever of the two its probes chose, as
:func:`lut_builder.table.grid.fill` does). Each is summarised per point (relative error)
and as a layer sum sees it (``weighted``: summed absolute error over summed latency). A
sample of points is measured twice to show the measurement noise floor.

Run under the benchmark lock:

    flock /tmp/halp-trt-bench.lock .venv/bin/python bench/lut_build.py

Prints a table and writes bench/results/lut_build_<model>_<backend>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="halp_trt.models:resnet18_imagenet")
    p.add_argument("--input-shape", default="1,3,224,224")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--step", type=int, default=None, help="grid step (default: alignment)")
    p.add_argument("--coarse", type=int, default=6)
    p.add_argument("--max-points", type=int, default=300, help="largest full grid to measure")
    p.add_argument("--signatures", type=int, default=3, help="how many signatures")
    p.add_argument("--repeat", type=int, default=30, help="points measured twice")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    from lut_builder.backends import get_backend
    from lut_builder.build import fixed_widths, plan_grids
    from lut_builder.signatures import model_layers
    from lut_builder.specs import example_input, load_model, parse_shape
    from lut_builder.table import Grid, fill_surface
    from lut_builder.table.grid import fill

    model = load_model(args.model)
    x = example_input(model, parse_shape(args.input_shape))
    backend = get_backend(args.backend)
    step = args.step or backend.alignment
    layers = model_layers(model, x)
    reads, writes = fixed_widths(model, x)
    kw = {"step": step, "fixed_in": reads, "fixed_out": writes, "coarse": args.coarse}
    full = plan_grids(layers, strategy="full", **kw)
    sparse = plan_grids(layers, strategy="sparse", **kw)
    total_full = sum(len(g.points()) for g in full.values())
    total_sparse = sum(len(g.points()) for g in sparse.values())
    # The biggest 2-D grids that fit the budget, where sparse differs from full.
    cands = [
        s
        for s, g in full.items()
        if not g.diagonal and len(g.points()) <= args.max_points and not sparse[s].is_full
    ]
    cands.sort(key=lambda s: -len(full[s].points()))
    chosen = cands[: args.signatures]

    if backend.reference_kind is not None:
        backend.measure_reference()
        backend.reference_ms = backend.reference_floor_ms
    rng = np.random.default_rng(0)
    results = []
    t_start = time.perf_counter()
    for sig in chosen:
        g_full, g_sparse = full[sig], sparse[sig]
        measured: dict[tuple[int, int], float] = {}
        t0 = time.perf_counter()
        for ci, co in g_full.points():
            measured[ci, co] = backend.measure(sig, ci, co).median_ms
        seconds = time.perf_counter() - t0
        used = set(g_sparse.points())
        held_out = [pt for pt in g_full.points() if pt not in used]
        lines = dataclasses.replace(g_sparse, probes=())
        line_fill, _ = fill_surface(lines, {pt: measured[pt] for pt in lines.points()})
        plain = Grid(
            g_sparse.c_in, g_sparse.c_out, coarse_in=g_sparse.coarse_in,
            coarse_out=g_sparse.coarse_out,
        )  # fmt: skip
        bil_fill, _ = fill_surface(plain, {pt: measured[pt] for pt in plain.points()})
        table_fill = fill(g_sparse, {pt: measured[pt] for pt in used})
        e_line = _errors(g_sparse, line_fill, measured, held_out)
        e_bil = _errors(g_sparse, bil_fill, measured, held_out)
        e_table = _errors(g_sparse, table_fill.values, measured, held_out)
        # Noise floor: the same points measured again.
        sample = [g_full.points()[i] for i in rng.choice(len(measured), args.repeat)]
        noise = [abs(backend.measure(sig, a, b).median_ms / measured[a, b] - 1) for a, b in sample]
        results.append(
            {
                "signature": sig.short(),
                "full_points": len(g_full.points()),
                "sparse_points": len(used),
                "held_out": len(held_out),
                "measure_seconds": round(seconds, 1),
                "line_corrected": _summary(e_line),
                "plain_bilinear": _summary(e_bil),
                "table_fill": _summary(e_table),
                "probes_chose": table_fill.model,
                "probe_error_ms": table_fill.probe_error,
                "remeasure_noise": _summary(noise),
            }
        )
        print(f"{sig.short()}: {len(g_full.points())} points in {seconds:.0f} s", flush=True)

    out = {
        "model": args.model,
        "input_shape": list(x.shape),
        "backend": args.backend,
        "fingerprint_options": backend.fingerprint().get("options"),
        "step": step,
        "coarse": args.coarse,
        "model_points_full": total_full,
        "model_points_sparse": total_sparse,
        "signatures": results,
        "seconds": round(time.perf_counter() - t_start, 1),
        "command": shlex.join(
            ["python", "bench/lut_build.py", *(sys.argv[1:] if argv is None else argv)]
        ),
    }
    _print(out)
    tag = re.sub(r"[^A-Za-z0-9]+", "_", args.model.split(":")[-1]).strip("_")
    path = (
        Path(args.out) if args.out else ROOT / f"bench/results/lut_build_{tag}_{args.backend}.json"
    )
    from lut_builder.fileio import atomic_write_json

    atomic_write_json(path, out, indent=2)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


def _errors(grid, values, measured, points) -> list[tuple[float, float]]:
    """(filled, measured) at the given points of a grid's fine axes."""
    idx_in = {c: i for i, c in enumerate(grid.c_in)}
    idx_out = {c: j for j, c in enumerate(grid.c_out)}
    return [(float(values[idx_in[a], idx_out[b]]), measured[a, b]) for a, b in points]


def _summary(pairs: list[tuple[float, float]] | list[float]) -> dict[str, float]:
    """Relative errors' median, p90 and max; of (filled, measured) pairs also the
    ``weighted`` error, summed absolute error over summed latency."""
    if not pairs:
        return {"median": 0.0, "p90": 0.0, "max": 0.0}
    weighted = None
    if isinstance(pairs[0], tuple):
        weighted = sum(abs(f - m) for f, m in pairs) / sum(m for _, m in pairs)
        errs = [abs(f / m - 1) for f, m in pairs]
    else:
        errs = list(pairs)
    out = {
        "median": statistics.median(errs),
        "p90": float(np.percentile(errs, 90)),
        "max": max(errs),
    }
    if weighted is not None:
        out["weighted"] = weighted
    return out


def _print(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{r['model']} on {r['backend']}, step {r['step']}: sparse fill vs full grid")
    for c in ("signature", "points full/sparse", "line-corrected med/p90/max/weighted",
              "plain bilinear", "table's fill (probes chose)",
              "re-measure noise med/p90"):  # fmt: skip
        t.add_column(c, justify="right")

    def f(d: dict) -> str:
        keys = ("median", "p90", "max", "weighted")
        return "/".join(f"{100 * d[k]:.1f}%" for k in keys if k in d)

    for s in r["signatures"]:
        noise = s["remeasure_noise"]
        t.add_row(
            s["signature"],
            f"{s['full_points']}/{s['sparse_points']}",
            f(s["line_corrected"]),
            f(s["plain_bilinear"]),
            f"{f(s['table_fill'])} ({s['probes_chose']})" if "table_fill" in s else "-",
            f"{100 * noise['median']:.1f}%/{100 * noise['p90']:.1f}%",
        )
    con = Console()
    con.print(t)
    con.print(
        f"whole model: {r['model_points_full']} points full, {r['model_points_sparse']} sparse "
        f"({r['model_points_full'] / max(r['model_points_sparse'], 1):.1f}x fewer)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
