"""Render a run's report dict as Markdown and plots (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lut_builder.errors import UserError
from lut_builder.fileio import atomic_write, atomic_write_json


class ReportError(UserError):
    """A report dict (``report.json``) that cannot be rendered: fields missing or of the
    wrong type."""


#: Plot files a full report has, under ``plots/`` of the run directory.
PLOTS = {
    "channels": "channels per group before and after pruning",
    "steps": "predicted latency and accuracy over the pruning steps",
    "predicted_vs_measured": "predicted vs measured latency",
    "staircase": "latency vs channels of the most expensive layer signatures",
}


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (its directory is created; NumPy values become numbers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data, indent=2, default=_json_default)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def render(report: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, str]:
    """Write ``report.md`` and the plots of ``report`` into ``out_dir``.

    Args:
        report: the run's report dict (as in ``report.json``).
        out_dir: the run directory; plots go to ``out_dir/plots``.

    Returns:
        Plot name to its path relative to ``out_dir``, for the plots that could be drawn
        (a plot whose data the report lacks is left out, and the Markdown says so).

    Raises:
        ReportError: the report lacks a field it needs, or holds one of the wrong type;
            nothing in ``out_dir`` is changed then (everything is drawn into a staging
            directory first and moved into place only once all of it was drawn).
        UserError: ``report.md`` or a plot's file is a directory, or ``plots`` is a
            file (checked before anything is drawn).
    """
    import shutil
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    _check_outputs(out)
    stage = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        (stage / "plots").mkdir()
        drawn: dict[str, str] = {}
        try:
            for name, fn in (
                ("channels", _plot_channels),
                ("steps", _plot_steps),
                ("predicted_vs_measured", _plot_pred_vs_meas),
                ("staircase", _plot_staircase),
            ):
                rel = f"plots/{name}.png"
                if fn(report, stage / rel, out):
                    drawn[name] = rel
            markdown = _markdown(report, drawn)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise ReportError(
                f"the report lacks a field or holds one of the wrong type "
                f"({type(exc).__name__}: {exc})"
            ) from None
        (out / "plots").mkdir(exist_ok=True)
        for rel in drawn.values():
            os.replace(stage / rel, out / rel)
        atomic_write(out / "report.md", markdown)
        return drawn
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
        shutil.rmtree(stage, ignore_errors=True)


def _check_outputs(out: Path) -> None:
    """The report's files can be put in place: none of them is a directory, and
    ``plots`` is one (or is missing)."""
    plots = out / "plots"
    if plots.exists() and not plots.is_dir():
        raise UserError(f"{plots} exists and is not a directory: the plots go there")
    for path in (out / "report.md", *(plots / f"{name}.png" for name in PLOTS)):
        if path.is_dir():
            raise UserError(f"{path} is a directory: the report writes a file there")


def _save(fig: Any, path: Path) -> None:
    # Into render's staging directory: the move into the run directory makes it final.
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)


def _plot_channels(report: dict, path: Path, _: Path) -> bool:
    groups = [g for g in report.get("groups", []) if g.get("prunable", True)]
    if not groups:
        return False
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(groups)), 3.6))
    ax.bar(x, [g["size"] for g in groups], color="#c9d6e8", label="before")
    ax.bar(x, [g["kept"] for g in groups], color="#2b6cb0", label="after")
    ax.set_xticks(x, [str(g["id"]) for g in groups], fontsize=7)
    ax.set_xlabel("channel group")
    ax.set_ylabel("channels")
    ax.set_title("Channels per prunable group")
    ax.legend()
    _save(fig, path)
    return True


def _plot_steps(report: dict, path: Path, _: Path) -> bool:
    steps = report.get("steps") or []
    if not steps:
        return False
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    s = [r["step"] for r in steps]
    ax.plot(s, [r["predicted_ms"] for r in steps], "o-", label="predicted latency")
    ax.plot(s, [r["budget_ms"] for r in steps], "--", color="grey", label="step budget")
    ax.set_xlabel("pruning step")
    ax.set_ylabel("latency (ms)")
    which = "val_acc" if any("val_acc" in r for r in steps) else "train_acc"
    accs = [(r["step"], r[which]) for r in steps if r.get(which) is not None]
    ax.xaxis.get_major_locator().set_params(integer=True)
    if accs:
        ax2 = ax.twinx()
        label = "validation accuracy" if which == "val_acc" else "training accuracy"
        ax2.plot(*zip(*accs), "s-", color="#c05621", label=label)
        ax2.set_ylabel("accuracy")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper center")
    ax.set_title("Pruning schedule")
    _save(fig, path)
    return True


def _plot_pred_vs_meas(report: dict, path: Path, _: Path) -> bool:
    pts = [
        (name, report.get(name, {}).get("predicted_ms"), report.get(name, {}).get("latency_ms"))
        for name in ("baseline", "pruned")
    ]
    pts = [p for p in pts if p[1] is not None and p[2] is not None]
    if not pts:
        return False
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    hi = max(max(p[1], p[2]) for p in pts) * 1.1
    ax.plot([0, hi], [0, hi], "--", color="grey", label="predicted = measured")
    for name, pred, meas in pts:
        ax.scatter([pred], [meas], s=60, label=name)
    target = report.get("target", {})
    from ..prune.schedule import target_fraction

    fraction = target_fraction(target.get("spec"))
    base_meas = report.get("baseline", {}).get("latency_ms")
    if fraction is not None and base_meas:
        # A relative target is judged on the measured ratio: its line is that fraction of
        # the measured original; the table's milliseconds for it are the vertical line.
        ax.axhline(fraction * base_meas, color="#c53030", lw=1,
                   label=f"target: {target['spec']} of measured original")  # fmt: skip
        if target.get("ms"):
            ax.axvline(target["ms"], color="#c53030", lw=1, ls=":", label="target in the table")
    elif target.get("ms"):
        ax.axhline(target["ms"], color="#c53030", lw=1, label="target")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("measured latency (ms)")
    ax.legend(fontsize=8)
    ax.set_title("Latency model vs measurement")
    _save(fig, path)
    return True


def _plot_staircase(report: dict, path: Path, out_dir: Path) -> bool:
    lut = (report.get("artifacts") or {}).get("lut")
    if not lut:
        return False
    lut_path = Path(lut) if Path(lut).is_absolute() else out_dir / lut
    if not lut_path.exists():
        return False
    import matplotlib.pyplot as plt

    from lut_builder import LatencyTable

    table = LatencyTable.open(lut_path, force=True)
    try:
        costs = []
        for sig in table.signatures():
            grid = table.grid(sig)
            c_in, c_out = max(grid.c_in), max(grid.c_out)
            costs.append((table.lookup(sig, c_in, c_out), sig, grid))
        costs.sort(key=lambda t: -t[0])
        if not costs:
            return False
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        for _, sig, grid in costs[:4]:
            c_in = max(grid.c_in)
            pts = sorted(
                (p for p in table.points(sig) if grid.diagonal or p.c_in == c_in),
                key=lambda p: p.c_out,
            )
            if len(pts) < 2:
                continue
            ax.step(
                [p.c_out for p in pts],
                [p.timing.median_ms for p in pts],
                where="post",
                marker=".",
                label=sig.short(),
            )
        ax.set_xlabel("output channels (input channels at full width; depthwise: both)")
        ax.set_ylabel("latency (ms)")
        ax.set_title("Measured latency staircase, most expensive signatures")
        ax.legend(fontsize=7)
        _save(fig, path)
    finally:
        table.close()
    return True


def _fmt(v: Any, spec: str = ".3f", unit: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, (int, float)):
        return f"{v:{spec}}{unit}"
    return str(v)


def _markdown(r: dict[str, Any], plots: dict[str, str]) -> str:
    b, p = r.get("baseline", {}), r.get("pruned", {})
    target = r.get("target", {})
    lines = [
        f"# halp-trt run: {r.get('model', '?')}",
        "",
        f"- backend: **{r.get('backend', '?')}** ({r.get('backend_reason', '')}), "
        f"precision {r.get('precision', '?')}, input {tuple(r.get('input_shape', []))}",
        f"- data: {r.get('data', '?')}",
        f"- target: {target.get('spec', '?')} = {_fmt(target.get('ms'), '.3f', ' ms')}",
        "",
        "| | latency (measured) | latency (predicted) | accuracy | MACs | parameters |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, d in (("original", b), ("pruned", p)):
        lines.append(
            f"| {name} | {_fmt(d.get('latency_ms'), '.4f', ' ms')} | "
            f"{_fmt(d.get('predicted_ms'), '.4f', ' ms')} | {_fmt(d.get('accuracy'), '.4f')} | "
            f"{_fmt((d.get('macs') or 0) / 1e6, '.1f', ' M')} | "
            f"{_fmt((d.get('params') or 0) / 1e6, '.3f', ' M')} |"
        )
    sp = r.get("speedup")
    lines += [
        "",
        f"Measured speed-up **{_fmt(sp, '.2f', 'x')}** "
        f"(spread {_fmt(r.get('speedup_spread'), '.1%')}, interleaved rounds on the same "
        f"backend); predicted {_fmt(r.get('predicted_speedup'), '.2f', 'x')}. "
        f"Target met: **{'yes' if r.get('target_met') else 'no'}**.",
        "",
    ]
    lines += _precision_lines(r.get("precisions"))
    lines += ["## Artifacts", ""]
    for k, v in (r.get("artifacts") or {}).items():
        lines.append(f"- {k}: `{v}`" if v else f"- {k}: none")
    lines += ["", "## Plots", ""]
    for name, caption in PLOTS.items():
        if name in plots:
            lines += [f"![{caption}]({plots[name]})", ""]
        else:
            lines += [f"- {caption}: not available for this run", ""]
    stages = r.get("stages") or {}
    if stages:
        lines += ["## Stages", "", "| stage | seconds |", "|---|---:|"]
        lines += [f"| {k} | {_fmt(v, '.1f')} |" for k, v in stages.items()]
        lines.append("")
    return "\n".join(lines)


def _precision_lines(rows: list[dict[str, Any]] | None) -> list[str]:
    """An INT8 run's FP32 dense / INT8 dense / INT8 pruned table (none for other runs)."""
    if not rows:
        return []
    lines = [
        "## Precision",
        "",
        "| model | latency (measured) | vs FP32 dense | accuracy | ONNX size |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {_fmt(row.get('latency_ms'), '.4f', ' ms')} | "
            f"{_fmt(row.get('speedup_vs_fp32'), '.2f', 'x')} | "
            f"{_fmt(row.get('accuracy'), '.4f')} | "
            f"{_fmt((row.get('size_bytes') or 0) / 1e6, '.2f', ' MB')} |"
        )
    lines += [
        "",
        "Latencies from two interleaved runs on the backend (FP32 dense vs INT8 dense, and "
        "INT8 dense vs INT8 pruned), joined through the INT8 dense model both timed; "
        "accuracies on the validation split, every model run by ONNX Runtime.",
        "",
    ]
    return lines
