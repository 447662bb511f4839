"""`lut-builder plot`: latency against channel counts, one PNG per signature."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "plot latency vs channels per signature (PNG, the staircase)"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "plot",
        help=HELP,
        description="Write one PNG per layer signature: measured latency against output "
        "channels, one curve per input width (at most 6, spread over the axis), with the "
        "p10-p90 band and the table's lookup at every channel count (the staircase).",
    )
    p.add_argument("table", metavar="FILE", help="a table written by `lut-builder build`")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the PNG files")
    return p


def run(args: argparse.Namespace) -> int:
    from ..fileio import check_output
    from ..table import LatencyTable

    out = check_output(args.out, kind="dir", flag="--out", parents=True)
    # Opening checks every value of the table, so a damaged one is refused before a
    # file is written.
    with LatencyTable.open(args.table, force=True) as table:
        out.mkdir(parents=True, exist_ok=True)
        written = [plot_signature(table, sig, out, i) for i, sig in enumerate(table.signatures())]
    for path in written:
        print(path)
    return 0


def plot_signature(table: Any, sig: Any, out_dir: Any, index: int) -> Any:
    """Write ``NN_<label>.png`` for one signature and return its path (written atomically)."""
    import re

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..fileio import atomic_output

    grid = table.grid(sig)
    pts = {(p.c_in, p.c_out): p.timing for p in table.points(sig)}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if grid.diagonal:
        curves = [None]
    else:
        rows = sorted({a for a, b in pts if (a, b) not in grid.probes}) or list(grid.c_in)
        pick = np.unique(np.linspace(0, len(rows) - 1, min(6, len(rows))).round().astype(int))
        curves = [rows[i] for i in pick]
    for c_in in curves:
        meas = sorted(
            (b, t) for (a, b), t in pts.items() if (a == b if c_in is None else a == c_in)
        )
        label = "c_in = c_out" if c_in is None else f"c_in={c_in}"
        if meas:
            xs = np.array([b for b, _ in meas])
            med = np.array([t.median_ms for _, t in meas])
            line = ax.plot(xs, med, "o", ms=4, label=f"{label} measured")[0]
            color = line.get_color()
            lo, hi = [t.p10_ms for _, t in meas], [t.p90_ms for _, t in meas]
            ax.fill_between(xs, lo, hi, color=color, alpha=0.2)
        else:
            color = None
        xs, ys = _staircase(table, sig, c_in, grid.c_out[-1])
        if xs:
            ax.step(xs, ys, where="post", lw=1, color=color, alpha=0.8)
    ax.set_xlabel("channels" if grid.diagonal else "output channels (c_out)")
    ax.set_ylabel("latency (ms)")
    fp = table.fingerprint
    ax.set_title(f"{sig.short()} · {fp.get('backend')} {fp.get('precision')}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    name = f"{index:02d}_{re.sub(r'[^A-Za-z0-9]+', '_', sig.short()).strip('_')}.png"
    path = out_dir / name
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path


def _staircase(table: Any, sig: Any, c_in: int | None, top: int) -> tuple[list, list]:
    """The table's lookup at every channel count 1..top that it can answer."""
    from ..errors import UserError

    xs, ys = [], []
    for c in range(1, top + 1):
        try:
            ys.append(table.lookup(sig, c if c_in is None else c_in, c))
            xs.append(c)
        except UserError:
            continue  # below the measured range, or not measured yet
    return xs, ys
