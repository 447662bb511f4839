"""`lut-builder build`: measure a model's latency table on a backend (resumable).

A thin shell over :func:`lut_builder.build_table`: it parses the arguments (model spec,
input shape, shard, backend and runner options), calls it, and prints the result.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..backends.base import list_backends
from ..cli_args import nonnegative_int, positive_int, thread_count
from ..end_to_end import DEFAULT_REGIME, REGIMES
from ..errors import UserError
from ..latency_model import CHECK_COPIES
from ..specs import WEIGHTS_HELP

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
    p.add_argument("--weights", metavar="PATH", default=None, help=WEIGHTS_HELP)
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
        "--precision",
        choices=("fp32", "fp16", "bf16", "int8"),
        default="fp32",
        help="default fp32; int8: Q/DQ layers (onnxruntime, tensorrt)",
    )
    p.add_argument(
        "--step",
        type=positive_int,
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
        type=thread_count,
        default=None,
        metavar="N",
        help="the CPU thread count the model will be deployed with (onnxruntime, torch on "
        "CPU): every point and the calibration are measured at it, and it is stored in the "
        "table's fingerprint, so the table describes that deployment only (default 1)",
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
        "model and copies at 3/4 and 1/2 width made by an installed "
        "lut_builder.calibration_variants hook, e.g. halp-trt's; default) or additive "
        "(layers + overhead, from the unpruned model only)",
    )
    p.add_argument(
        "--check",
        type=nonnegative_int,
        default=CHECK_COPIES,
        metavar="N",
        help="check the fitted latency model on N copies of the model, every prunable group "
        "at a random width (made by an installed lut_builder.check_variants hook, e.g. "
        "halp-trt's), measured with the calibration but not fitted on; 0: no check "
        f"(default {CHECK_COPIES})",
    )
    p.add_argument(
        "--calibration-timing",
        choices=REGIMES,
        default=DEFAULT_REGIME,
        help="how the calibration and its check time whole models: served (one inference "
        "after another, as a model is deployed; default) or round-robin (one inference of "
        "each model in turn, as tables were calibrated before)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the table file (.db)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``i/n`` (0 <= i < n).

    Raises:
        UserError: malformed.
    """
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise UserError(f"--shard must look like i/n (for example 0/2), not {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text}: need 0 <= i < n")
    return i, n


def cpu_threads(args: argparse.Namespace) -> int | None:
    """The thread count ``--threads`` asks for: 1 by default on a CPU backend, None on
    others.

    Raises:
        UserError: ``--threads`` given for a backend that does not run on the CPU.
    """
    on_cpu = args.backend == "onnxruntime" or (
        args.backend == "torch" and (args.device or "cpu") == "cpu"
    )
    if not on_cpu:
        if args.threads is not None:
            raise UserError(
                f"--threads is the CPU thread count of onnxruntime or torch on the CPU; "
                f"{args.backend} on {args.device or 'its default device'} has none"
            )
        return None
    return args.threads or 1


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """Constructor options for the chosen backend from the command line."""
    opts: dict[str, Any] = {"precision": args.precision}
    if args.device is not None:
        opts["device"] = args.device
    threads = cpu_threads(args)
    if threads is not None:
        opts["threads"] = threads
    return opts


def runner_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options for the whole-model runner that calibrates the overhead term: the same
    thread count as the points."""
    threads = cpu_threads(args)
    if args.backend == "onnxruntime":
        return {"threads": threads, "precision": args.precision}
    opts: dict[str, Any] = {"precision": args.precision}
    if args.device is not None:
        opts["device"] = args.device
    if threads is not None:
        opts["threads"] = threads
    return opts


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from ..build import build_table
    from ..cli_args import input_files
    from ..fileio import check_output
    from ..latency_model import describe_check
    from ..progress import measuring_bar
    from ..specs import example_input, load_model, parse_shape

    # Before the model is loaded: a bad --out costs nothing.
    check_output(args.out, kind="file", flag="--out", inputs=input_files(args))
    shard = parse_shard(args.shard)
    threads = cpu_threads(args)
    shape = parse_shape(args.input_shape)
    model = load_model(args.model, weights=args.weights)
    x = example_input(model, shape)
    options = {
        "step": args.step,
        "strategy": args.strategy,
        "shard": shard,
        "info": {"model": args.model, "input_shape": list(shape)},
        "calibration": "none" if args.no_overhead else args.calibration,
        "backend_options": backend_options(args),
        "runner_options": runner_options(args),
        "check": args.check,
        "regime": args.calibration_timing,
    }
    with measuring_bar(f"{args.model} on {args.backend}", show=not args.json) as bar:
        result = build_table(args.out, model, x, args.backend, **options, **bar)
    if result.calibration_note:
        print(f"lut-builder build: note: {result.calibration_note}", file=sys.stderr)
    if result.check is not None and not result.check["within"]:
        print(f"lut-builder build: warning: {describe_check(result.check)}", file=sys.stderr)
    elif result.check is None and args.check and result.check_note:
        print(f"lut-builder build: note: {result.check_note}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    state = "complete" if result.complete else "incomplete (other shards still to run)"
    if threads is not None:
        state += f", {threads} CPU thread{'s' if threads > 1 else ''}"
    if result.parallel:
        seen = ", then ".join(f"{c.speedup:.2f}x" for c in result.parallel)
        state += f" ({seen} the speed of one)"
    over = ""
    if result.overhead_ms is not None:
        over = f", latency model {result.scale:.3f} x layers {result.overhead_ms:+.3f} ms"
    print(
        f"{args.out}: {result.measured} points measured in {result.seconds:.1f} s "
        f"({result.points_per_s:.2f} points/s), {result.planned} planned, table {state}{over}"
    )
    if result.check is not None and result.check["within"]:
        print(f"{args.out}: {describe_check(result.check)}")
    return 0
