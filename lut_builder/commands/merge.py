"""`lut-builder merge`: join shard tables measured on separate machines into one."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "join shard tables of one build, measured on separate machines, into one table"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "merge",
        help=HELP,
        description=(
            "Join tables written by `lut-builder build --shard i/n --out FILE_i` on "
            "separate machines (no shared file) into one table. The inputs must have "
            "been measured on the same target (same fingerprint, alignment, step and "
            "reference workload) for the same plan; a point measured in several inputs "
            "is kept once when the measurements agree within their spread, and refused "
            "otherwise. Nothing is written unless the merge succeeds. A merged table "
            "that is complete but not calibrated is calibrated by running the same "
            "build once more on it without --shard (no point is measured again)."
        ),
    )
    p.add_argument("tables", nargs="+", metavar="TABLE", help="shard tables to join (two or more)")
    p.add_argument("--out", required=True, metavar="FILE", help="the merged table (a new file)")
    p.add_argument(
        "--average",
        action="store_true",
        help="the inputs are repeated whole builds of the same plan (same target): store "
        "each point measured in several of them as the mean of their measurements, "
        "agreeing or not, to average down the noise of single measurements",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from ..table import merge_tables

    result = merge_tables(args.tables, args.out, average=args.average)
    if result.note:
        print(f"lut-builder merge: note: {result.note}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    state = (
        "complete"
        if result.complete
        else f"incomplete ({result.missing} planned points missing: merge the other shards)"
    )
    if result.averaged:
        both = (
            f", {result.overlapping} measured in more than one (averaged; "
            f"{result.disagreeing} beyond their spread)"
        )
    elif result.overlapping:
        both = f", {result.overlapping} measured in more than one (agreeing)"
    else:
        both = ""
    print(
        f"{args.out}: {len(result.inputs)} tables merged, {result.points} points{both}, "
        f"table {state}"
    )
    return 0
