"""`lut-builder build`: measure a model's latency table on a backend (resumable)."""

from __future__ import annotations

import argparse
from typing import Any

from ..backends.base import list_backends

HELP = "measure a model's per-layer latency table on a backend"


def _default_backend() -> str:
    return "onnxruntime"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "build",
        help=HELP,
        description=(
            "Measure T(signature, c_in, c_out) for every conv/linear layer signature of a "
            "model at the channel counts pruning can reach, into one SQLite file. Every "
            "point is committed as it is measured: run the same command again to resume "
            "a killed build; run several with --shard i/n (one per --device) to fill one "
            "file together. The table is marked complete when every planned point exists, "
            "then the network overhead term is calibrated on the unpruned model."
        ),
    )
    p.add_argument("--model", required=True, metavar="SPEC", help="model spec (see halp-trt)")
    p.add_argument(
        "--input-shape", required=True, metavar="N,C,H,W", help="input shape, e.g. 1,3,224,224"
    )
    p.add_argument(
        "--backend",
        default=_default_backend(),
        metavar="NAME",
        help=f"one of {', '.join(list_backends())} (default: onnxruntime)",
    )
    p.add_argument(
        "--precision", choices=("fp32", "fp16", "bf16"), default="fp32", help="default fp32"
    )
    p.add_argument(
        "--step",
        type=int,
        default=None,
        metavar="N",
        help="channel step of the grid (default: the backend's alignment)",
    )
    p.add_argument(
        "--strategy",
        choices=("sparse", "full"),
        default="sparse",
        help="sparse: coarse 2-D grid plus full-resolution lines through the full widths "
        "(default); full: every point of the 2-D grid",
    )
    p.add_argument(
        "--shard", default="0/1", metavar="i/n", help="measure every n-th point from i (0/1)"
    )
    p.add_argument(
        "--device",
        default=None,
        metavar="D",
        help="device for the backend: cpu, cuda, cuda:1 ... (default: the backend's own)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads of onnxruntime/torch on CPU (default 1: steadiest timings)",
    )
    p.add_argument(
        "--no-overhead",
        action="store_true",
        help="do not calibrate the network latency model on whole-network measurements",
    )
    p.add_argument(
        "--calibration",
        choices=("affine", "additive"),
        default="affine",
        help="network latency model: affine (scale * layers + overhead, fitted on the "
        "model and copies at 3/4 and 1/2 width; default) or additive (layers + overhead, "
        "from the unpruned model only)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the table file (.db)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


#: Widths of the narrowed copies the affine network latency model is fitted on.
CALIBRATION_FRACTIONS = (0.75, 0.5)


def calibration_variants(model: Any, x: Any, alignment: int) -> list[Any]:
    """Copies of ``model`` with every prunable channel group at 3/4 and 1/2 width.

    Empty when the model has no prunable group or its channel groups cannot be traced
    (the calibration is then additive). Channel groups are found by halp-trt's channel
    graph (same distribution).
    """
    import copy

    from halp_trt.errors import PruningError
    from halp_trt.graph import ChannelGraph, uniform_width

    try:
        if not ChannelGraph(copy.deepcopy(model), x).prunable:
            return []
        return [uniform_width(model, x, f, alignment) for f in CALIBRATION_FRACTIONS]
    except PruningError:
        return []


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """Constructor options for the chosen backend from the command line."""
    opts: dict[str, Any] = {"precision": args.precision}
    if args.device is not None:
        opts["device"] = args.device
    if args.threads is not None and args.backend in ("onnxruntime", "torch"):
        opts["threads"] = args.threads
    return opts


def runner_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options for the whole-model runner that calibrates the overhead term."""
    if args.backend == "onnxruntime":
        return {"threads": args.threads or 1}
    opts: dict[str, Any] = {"precision": args.precision}
    if args.device is not None:
        opts["device"] = args.device
    if args.backend == "torch" and args.threads is not None:
        opts["threads"] = args.threads
    return opts


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..backends import get_backend
    from ..build import build_table, parse_shard
    from ..errors import UserError
    from ..latency_model import calibrate_overhead
    from ..specs import example_input, load_model, parse_shape

    # Everything a user can get wrong is checked before the table file is touched.
    shard = parse_shard(args.shard)
    shape = parse_shape(args.input_shape)
    if args.step is not None and args.step < 1:
        raise UserError(f"--step must be a positive integer, not {args.step}")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UserError(f"the directory of --out {str(out)!r} does not exist")
    if out.is_dir():
        raise UserError(f"--out {str(out)!r} is a directory")
    backend = get_backend(args.backend, **backend_options(args))
    model = load_model(args.model)
    x = example_input(model, shape)

    def calibrate(table: Any) -> float | None:
        if args.no_overhead or not backend.is_measurement:
            return None
        from ..backends import make_runner

        variants = []
        if args.calibration == "affine":
            variants = calibration_variants(model, x, table.alignment)
        return calibrate_overhead(
            table,
            lambda m: make_runner(args.backend, m, x, **runner_options(args)),
            model,
            x,
            variants=variants,
        )

    info = {"model": args.model, "input_shape": list(shape)}
    if args.json:
        result = build_table(
            out, model, x, backend, step=args.step, strategy=args.strategy, shard=shard,
            info=info, calibrate=calibrate,
        )  # fmt: skip
    else:
        result = _build_with_progress(
            out, model, x, backend, args, shard=shard, info=info, calibrate=calibrate
        )
    backend.close()
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    state = "complete" if result.complete else "incomplete (other shards still to run)"
    over = ""
    if result.overhead_ms is not None:
        over = f", latency model {result.scale:.3f} x layers {result.overhead_ms:+.3f} ms"
    print(
        f"{out}: {result.measured} points measured in {result.seconds:.1f} s "
        f"({result.points_per_s:.2f} points/s), {result.planned} planned, table {state}{over}"
    )
    return 0


def _build_with_progress(out, model, x, backend, args, **kwargs):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ..build import build_table

    with Progress(
        TextColumn("[bold]measuring[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        task = bar.add_task(f"{args.model} on {args.backend}", total=None)
        return build_table(
            out,
            model,
            x,
            backend,
            step=args.step,
            strategy=args.strategy,
            on_start=lambda n: bar.update(task, total=n),
            progress=lambda done, total: bar.update(task, completed=done),
            **kwargs,
        )
