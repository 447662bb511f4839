"""`halp-trt report`: redraw a run's report.md and plots from its report.json."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "report",
        help="redraw a run's report (report.md, plots) from DIR/report.json",
        description="Render DIR/report.json of a `halp-trt run` as DIR/report.md and DIR/plots.",
    )
    p.add_argument("dir", metavar="DIR", help="the run directory")
    p.add_argument("--json", action="store_true", help="print the report data as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from lut_builder.fileio import check_output

    from ..errors import UserError
    from ..report import ReportError, render

    check_output(args.dir, kind="dir", flag="DIR")
    path = Path(args.dir) / "report.json"
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: is {args.dir} a halp-trt run directory?") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a halp-trt run report") from None
    except OSError as exc:
        raise UserError(f"{path} cannot be read: {exc.strerror}") from None
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(report, dict) or "baseline" not in report:
        raise UserError(f"{path} is not a halp-trt run report")
    try:
        plots = render(report, args.dir)
    except ReportError as exc:
        raise UserError(f"{path} cannot be rendered: {exc}") from None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"wrote {Path(args.dir) / 'report.md'} and {len(plots)} plots")
    return 0
