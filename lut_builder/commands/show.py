"""`lut-builder show`: what a latency table holds."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "show a latency table: fingerprint, signatures, points, dispersion"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "show",
        help=HELP,
        description="Print a latency table's fingerprint, build status, overhead term and, "
        "per layer signature, its grid, measured points, latency range and dispersion "
        "((p90 - p10) / median of the repeated runs of each point).",
    )
    p.add_argument("table", metavar="FILE", help="a table written by `lut-builder build`")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.add_argument(
        "--points", action="store_true", help="also list every measured point (with --json)"
    )
    return p


def run(args: argparse.Namespace) -> int:
    import json

    from ..table import LatencyTable

    # force: show is for inspecting any table, complete or not, from any target.
    with LatencyTable.open(args.table, force=True) as table:
        summary = table.summary()
        if args.points:
            for entry, sig in zip(summary["signatures"], table.signatures()):
                entry["points"] = [
                    {"c_in": p.c_in, "c_out": p.c_out, **p.timing.to_dict()}
                    for p in table.points(sig)
                ]
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    _render(summary)
    return 0


def _render(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..table.store import recorded_timing_loops

    con = Console()
    fp = s["fingerprint"]
    kind = "" if fp.get("is_measurement", True) else " [yellow](analytic model, not measured)[/]"
    con.print(f"[bold]{s['path']}[/]{kind}")
    threads = s.get("threads")
    threads_txt = "" if threads is None else f" · {threads} CPU thread{'s' if threads > 1 else ''}"
    checks = s["info"].get("parallel_checks") or []
    if checks:  # the speed-up over one thread each build saw (lut_builder.parallelism)
        seen = ", ".join(f"{c['speedup']:.2f}x" for c in checks)
        threads_txt += f" ({seen} the speed of one thread when built)"
    con.print(
        f"backend {fp.get('backend')} · {fp.get('precision')} · {fp.get('device')}{threads_txt} · "
        f"batch {fp.get('batch')} · versions {fp.get('versions')}"
    )
    loops = recorded_timing_loops(s["info"])
    if loops:  # how each process that measured points timed them (Backend.timing_loop)
        kinds = [loop for k, loop in enumerate(loops) if loop not in loops[:k]]
        said = "; ".join(", ".join(f"{k} {v}" for k, v in loop.items()) for loop in kinds)
        many = "" if len(kinds) == 1 else f" ([yellow]{len(kinds)} different loops[/])"
        con.print(f"each point timed with {said}{many}", highlight=False)
    status = "complete" if s["complete"] else f"[red]incomplete[/] ({s['missing']} missing)"
    over = s["overhead_ms"]
    scale = s.get("scale", 1.0)
    over_txt = (
        "not calibrated"
        if over is None
        else f"{over:+.4f} ms" + ("" if scale == 1.0 else f", scale {scale:.3f} on the layers")
    )
    details = s.get("overhead") or {}
    if over is not None and details.get("points"):
        from ..end_to_end import stored_regime

        over_txt += f" (whole models timed {stored_regime(details)})"
    con.print(
        f"alignment {s['alignment']} · step {s['step']} · {s['points']} points · {status} · "
        f"overhead {over_txt} · strategy {s['info'].get('strategy')} · model "
        f"{s['info'].get('model')} {s['info'].get('input_shape')}"
    )
    check = (s.get("overhead") or {}).get("check")
    if check:
        from ..latency_model import describe_check

        colour = "" if check["within"] else "[yellow]"
        con.print(f"{colour}{describe_check(check)}{'[/]' if colour else ''}", highlight=False)
    ref = s.get("reference")
    if ref:
        con.print(
            f"timings normalised by reference {ref['kind']} (unit {ref['unit_ms']:.4f} ms, "
            "its fastest run)"
        )
    t = Table(show_header=True, header_style="bold")
    cols = ("signature", "c_in", "c_out", "points", "min ms", "max ms", "spread med", "max", "fill")
    for col in cols:
        t.add_column(col, justify="left" if col == "signature" else "right")
    for e in s["signatures"]:
        g = e["grid"]

        def rng(v: list[int]) -> str:
            return str(v[0]) if len(v) == 1 else f"{v[0]}..{v[-1]}"

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.4f}"

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{100 * v:.1f}%"

        t.add_row(
            e["label"],
            rng(g["c_in"]),
            rng(g["c_out"]),
            f"{e['measured']}/{e['planned']}",
            ms(e["min_ms"]),
            ms(e["max_ms"]),
            pct(e["median_spread"]),
            pct(e["max_spread"]),
            e.get("fill", "-"),
        )
    con.print(t)
