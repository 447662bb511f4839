"""Run reports: ``report.json`` (the data), rendered as ``report.md`` and PNG plots.

The data comes first: :func:`render` reads only the report dict (and, for the latency
staircase, the latency table it names), so ``halp-trt report DIR`` can redraw a run's
report at any time.
"""

from .render import PLOTS, ReportError, render, write_json

__all__ = ["PLOTS", "ReportError", "render", "write_json"]
