"""`halp-trt verify`: original vs pruned on one backend, interleaved, with the speed-up's
spread and, given a plan, predicted vs measured latency."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lut_builder.cli_args import nonnegative_int, positive_float, positive_int, thread_count
from lut_builder.errors import ShapeError, UserError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "verify",
        help="measure the pruned model's speed-up over the original on one backend",
        description=(
            "Time the original and the pruned model on the same backend in one run: warm-up "
            "rounds, then many rounds in which short chunks of inferences alternate between "
            "the two models (at one CPU thread: one block of back-to-back inferences per "
            "model and round, timed by the thread's CPU time, as the pruner measures). "
            "Reports each model's median latency and throughput, the speed-up (median per-round ratio) with its spread (interquartile range over "
            "the median) and a bootstrap 95%% CI, and with --plan the predicted vs measured "
            "latency and whether the budget was met (exit code 1 if not). Models are specs "
            "or saved .pt files (torch, onnxruntime, tensorrt), .onnx files (onnxruntime, "
            "tensorrt) or .engine files with their sidecar (tensorrt)."
        ),
    )
    p.add_argument("--original", required=True, help="the unpruned model")
    p.add_argument("--pruned", required=True, help="the pruned model")
    p.add_argument("--backend", required=True, choices=("tensorrt", "torch", "onnxruntime"))
    p.add_argument("--batch", type=positive_int, help="batch size (default: the input shape's)")
    p.add_argument(
        "--input-shape", help="input shape N,C,H,W (needed for model specs; files say theirs)"
    )
    p.add_argument("--rounds", type=positive_int, default=30, help="timed rounds (default 30)")
    p.add_argument(
        "--warmup", type=nonnegative_int, default=5, help="untimed rounds first (default 5)"
    )
    p.add_argument(
        "--block-ms",
        type=positive_float,
        default=100.0,
        help="least time each model runs per round",
    )
    p.add_argument(
        "--chunk-ms",
        type=positive_float,
        default=3.0,
        help="least duration of one timed chunk; chunks alternate between the models "
        "(wall-clock timing; at one CPU thread each round is one block of --block-ms)",
    )
    p.add_argument("--plan", help="plan.json of the pruned model: predicted vs measured")
    p.add_argument(
        "--lut",
        metavar="FILE",
        help="with --plan: the plan's latency table; when it was measured against a "
        "reference workload, also time both models in its unit (prediction error without "
        "the machine's current speed)",
    )
    p.add_argument(
        "--threads",
        type=thread_count,
        default=None,
        help="CPU threads (onnxruntime, torch on CPU); default: the thread count the "
        "latency table was measured at (--lut, else the plan's table), else 1. Another "
        "count is timed as asked, with a note",
    )
    p.add_argument("--device", default=None, help="torch: cpu or cuda[:N]; tensorrt: GPU index")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "fp16", "bf16"),
        help="torch precision; tensorrt: the precision model specs are exported in",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch: NHWC memory format (default: on CUDA, as the torch backend measures "
        "its tables; off on CPU)",
    )
    p.add_argument(
        "--force", action="store_true", help="run engines built for another GPU/TensorRT anyway"
    )
    p.add_argument(
        "--record",
        action="store_true",
        help="write the measured (and planned) latency into the engines' .json sidecars",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--out", help="also write the JSON report to this file (atomically)")
    return p


def _onnx_shape(path: Path) -> tuple[int, ...]:
    from ..export.engine import graph_inputs, read_onnx

    inputs = graph_inputs(read_onnx(path))
    if len(inputs) != 1:
        raise UserError(f"{path} has {len(inputs)} inputs; verify feeds one")
    return tuple(inputs[0]["shape"])


def resolve_model(text: str, backend: str, force: bool) -> tuple[Any, tuple[int, ...] | None]:
    """What the runner takes for ``text`` on ``backend``, and the shape the file declares
    (``-1`` for a dynamic batch; None for a module)."""
    from ..specs import load_model

    path = Path(text)
    if path.suffix == ".engine":
        if backend != "tensorrt":
            raise UserError(f"{text} is a TensorRT engine: use --backend tensorrt")
        from ..export.sidecar import load_engine

        _, sidecar = load_engine(path, force=force)
        if len(sidecar.inputs) != 1:
            raise UserError(f"{text} has {len(sidecar.inputs)} inputs; verify feeds one")
        return str(path), tuple(sidecar.inputs[0]["shape"])
    if path.suffix == ".onnx":
        if backend == "torch":
            raise UserError(f"{text} is an ONNX file: use --backend onnxruntime or tensorrt")
        return str(path), _onnx_shape(path)
    return load_model(text), None


def input_shape(
    declared: list[tuple[int, ...] | None], given: str | None, batch: int | None
) -> tuple[int, ...]:
    """One input shape for both models, from --input-shape, --batch and the files.

    Raises:
        ShapeError: no shape known, or shapes that disagree.
    """
    from ..specs import parse_shape

    if batch is not None and batch < 1:
        raise ShapeError(f"--batch must be positive, not {batch}")
    shape = parse_shape(given) if given else None
    for d in declared:
        if d is None:
            continue
        if shape is None:
            shape = tuple(max(1, v) for v in d)
        rest_ok = len(d) == len(shape) and all(a == b for a, b in zip(d[1:], shape[1:]) if a >= 1)
        if not rest_ok or (d[0] >= 1 and d[0] != (batch or shape[0])):
            raise ShapeError(
                f"input shape {(batch or shape[0], *shape[1:])} does not match a model that "
                f"takes {d}"
            )
    if shape is None:
        raise ShapeError("give --input-shape N,C,H,W for model specs")
    if batch is not None:
        shape = (batch, *shape[1:])
    return shape


def open_table(path: str, backend: str, plan: Any) -> Any:
    """The latency table given with ``--lut``, checked against the backend.

    Raises:
        UserError: no ``--plan``, a missing or invalid table, or one measured on
            another backend.
    """
    from lut_builder import LatencyTable

    if plan is None:
        raise UserError("--lut needs --plan: it compares the plan's prediction in the table's unit")
    table = LatencyTable.open(path, force=True)
    measured_on = table.fingerprint.get("backend")
    if measured_on != backend:
        table.close()
        raise UserError(f"--lut {path} was measured on {measured_on}, not {backend}")
    return table


def check_backend_options(args: argparse.Namespace) -> None:
    """Refuse an option the chosen backend would ignore: a report timed otherwise than
    asked (ONNX Runtime runs the ONNX file's own precision and layout on the CPU) must not
    pass for the measurement that was asked for.

    Raises:
        UserError: the first such option, named.
    """
    ignored: list[tuple[str, str]] = []
    ort = "ONNX Runtime runs the ONNX file's own precision on the CPU"
    if args.backend == "onnxruntime" and args.device not in (None, "cpu"):
        ignored.append((f"--device {args.device}", ort))
    if args.backend == "onnxruntime" and args.precision != "fp32":
        ignored.append((f"--precision {args.precision}", ort))
    if args.backend != "torch" and args.channels_last:  # --no-channels-last: as they run
        ignored.append(("--channels-last", "the memory format is a torch option"))
    if ignored:
        option, why = ignored[0]
        raise UserError(f"{option} does not apply to --backend {args.backend}: {why}")


def run(args: argparse.Namespace) -> int:
    from ..prune.apply import load_plan
    from ..verify import verify_models

    if args.out is not None:
        from lut_builder.cli_args import input_files
        from lut_builder.fileio import check_output

        from ..export import sidecar_path

        inputs = input_files(args)
        if args.record:  # the engines' sidecars are written too: not the report's file
            for flag in ("original", "pruned"):
                if Path(getattr(args, flag)).suffix == ".engine":
                    inputs[f"--{flag}'s sidecar, --record"] = sidecar_path(getattr(args, flag))
        check_output(args.out, inputs=inputs)
    if args.record and not any(Path(m).suffix == ".engine" for m in (args.original, args.pruned)):
        raise UserError("--record writes into engine sidecars: give .engine files")
    check_backend_options(args)
    original, d0 = resolve_model(args.original, args.backend, args.force)
    pruned, d1 = resolve_model(args.pruned, args.backend, args.force)
    shape = input_shape([d0, d1], args.input_shape, args.batch)
    plan = load_plan(args.plan) if args.plan else None
    table = open_table(args.lut, args.backend, plan) if args.lut else None
    options: dict[str, Any] = {}
    if args.backend == "onnxruntime":
        options["threads"] = args.threads
    elif args.backend == "torch":
        options.update(
            threads=args.threads,
            device=args.device or "cpu",
            precision=args.precision,
            channels_last=args.channels_last,
        )
    else:
        options["precision"] = args.precision  # how model specs are exported (files: theirs)
        if args.device is not None:
            options["device"] = args.device
    least_s = 2 * (args.warmup + args.rounds) * args.block_ms / 1000
    if least_s >= LONG_S:  # every round runs each model for at least --block-ms
        print(
            f"verify: {args.warmup} + {args.rounds} rounds of both models, at least "
            f"{args.block_ms:g} ms each: {_duration(least_s)} or more",
            file=sys.stderr,
            flush=True,
        )
    report = verify_models(
        original,
        pruned,
        backend=args.backend,
        input_shape=shape,
        warmup=args.warmup,
        rounds=args.rounds,
        min_block_ms=args.block_ms,
        chunk_ms=args.chunk_ms,
        plan=plan,
        sources=(args.original, args.pruned),
        table=table,
        **options,
    )
    if args.record:
        record_latency(args, report)
    data = report.to_dict()
    if args.out:
        from lut_builder.fileio import atomic_write_json

        atomic_write_json(args.out, data, indent=2)
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        print()
        for note in report.notes:
            print(f"halp-trt verify: note: {note}", file=sys.stderr)
    else:
        _print(report)
    if report.plan is not None and not report.plan["within_budget"]:
        return 1
    return 0


#: A timing expected to take this long or more says so before it starts.
LONG_S = 60.0


def _duration(seconds: float) -> str:
    """``seconds`` in the largest unit that keeps it above one (``"4.2 hours"``)."""
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def record_latency(args: argparse.Namespace, report: Any) -> None:
    """Store each engine's measured latency (and the plan's prediction for the pruned
    one) in its sidecar."""
    from ..export.sidecar import EngineSidecar, sidecar_path

    engines = [
        (path, timing)
        for path, timing in ((args.original, report.original), (args.pruned, report.pruned))
        if Path(path).suffix == ".engine"
    ]
    for path, timing in engines:
        sc = EngineSidecar.read(sidecar_path(path))
        sc.latency = {
            **sc.latency,
            "measured_ms": timing.median_ms,
            "measured_batch": report.batch,
        }
        if report.plan and timing is report.pruned:
            sc.latency["predicted_ms"] = report.plan["predicted_ms"]
        sc.write(sidecar_path(path))


def _print(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    n = report.threads
    threads = "" if n is None else f", {n} CPU thread{'s' if n > 1 else ''}"
    table = Table(
        title=f"verify on {report.backend}{threads}, input {tuple(report.input_shape)}, "
        f"{report.rounds} rounds in {report.timing} after {report.warmup} warm-up"
    )
    for col in ("model", "source", "median ms", "p10-p90 ms", "samples/s"):
        table.add_column(col, justify="left" if col in ("model", "source") else "right")
    for t in (report.original, report.pruned):
        table.add_row(
            t.label,
            t.source,
            f"{t.median_ms:.3f}",
            f"{t.p10_ms:.3f}-{t.p90_ms:.3f}",
            f"{t.throughput:.1f}",
        )
    console.print(table)
    s = report.speedup
    console.print(
        f"speed-up {s.median:.3f}x (per-round ratio IQR {s.q25:.3f}-{s.q75:.3f}, spread "
        f"{s.spread:.1%}; 95% CI {s.ci95[0]:.3f}-{s.ci95[1]:.3f}; ratio of medians "
        f"{s.ratio_of_medians:.3f})"
    )
    if report.plan:
        p = report.plan
        verdict = "[green]met[/green]" if p["within_budget"] else "[red]MISSED[/red]"
        if p["budget_check"] == "relative":
            budget = (
                f"budget {p['budget_ratio']:.3f}x of the original, measured "
                f"{p['measured_ratio']:.3f}x"
            )
        else:
            budget = f"budget {p['budget_ms']:.3f} ms"
        budget += f" (+{p.get('tolerance', 0.0):.0%} tolerance)"
        console.print(
            f"plan: predicted {p['predicted_ms']:.3f} ms, measured {p['measured_ms']:.3f} ms "
            f"(error {p['error']:+.1%}); {budget} {verdict}"
        )
        if "predicted_speedup" in p:
            console.print(
                f"plan: predicted speed-up {p['predicted_speedup']:.3f}x, measured "
                f"{p['measured_speedup']:.3f}x"
            )
        if "table_unit" in p:
            u = p["table_unit"]
            base = f", original {u['base_error']:+.1%}" if "base_error" in u else ""
            console.print(
                f"in the table's unit (timed against its reference workload): pruned "
                f"{u['pruned_ms']:.3f} ms, original {u['original_ms']:.3f} ms; prediction "
                f"error pruned {u['error']:+.1%}{base}"
            )
    for note in report.notes:
        console.print(f"note: {note}", soft_wrap=True, markup=False)
