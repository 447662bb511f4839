"""`halp-trt export`: a model to a checked ONNX file (graphsurgeon cleanup, onnx.checker,
ONNX Runtime vs PyTorch parity through Polygraphy); with ``--int8 --data SPEC`` an INT8
Q/DQ file calibrated on the user's data, with its accuracy and agreement."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lut_builder.cli_args import seed_int

from ..specs import WEIGHTS_HELP


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX and check it against PyTorch",
        description=(
            "Export a model to ONNX with torch.onnx.export, fold constants and clean the "
            "graph with onnx-graphsurgeon, validate it with onnx.checker, then run it on "
            "ONNX Runtime and compare with PyTorch (Polygraphy Comparator; max relative "
            "error under 1e-4 in fp32, 1e-2 in fp16 against the fp32 module). The file is "
            "written only when every check passed; a parity failure exits with code 1. "
            "An FP16 ONNX is how TensorRT 11 (always strongly typed) builds an FP16 engine. "
            "--int8 --data SPEC then quantizes it to INT8 Q/DQ with ONNX Runtime's quantizer "
            "(per-channel Int8 weights, activations calibrated on the data's training split) "
            "and reports accuracy and top-1 agreement with FP32 on its validation split."
        ),
    )
    p.add_argument(
        "--model", required=True, help="model spec (halp_trt.models:resnet56) or a pruned .pt"
    )
    p.add_argument("--input-shape", required=True, help="example input shape N,C,H,W")
    p.add_argument("--weights", metavar="PATH", default=None, help=WEIGHTS_HELP)
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument(
        "--dynamic-batch",
        metavar="MIN:OPT:MAX",
        help="make the batch axis dynamic over this range (stored for `halp-trt engine`)",
    )
    p.add_argument("--fp16", action="store_true", help="export weights and activations in fp16")
    p.add_argument(
        "--int8",
        action="store_true",
        help="quantize to INT8 Q/DQ, calibrated on --data (explicit quantization: what "
        "TensorRT 11 takes for INT8)",
    )
    p.add_argument(
        "--data", metavar="SPEC", help="with --int8: calibration and accuracy data (digits, "
        "npz:PATH, imagefolder:PATH)",
    )  # fmt: skip
    p.add_argument(
        "--int8-for",
        choices=("tensorrt", "onnxruntime"),
        default="tensorrt",
        help="with --int8: tensorrt (default: symmetric Int8 activations, which TensorRT 10/11 "
        "take and ONNX Runtime runs) or onnxruntime (UInt8 activations: every conv an INT8 "
        "kernel on ONNX Runtime's CPU provider; TensorRT refuses it)",
    )
    p.add_argument(
        "--calibration-batches",
        type=int,
        default=16,
        metavar="N",
        help="with --int8: batches of the input's batch size to calibrate on (16)",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=None,
        help="ONNX opset to write (TorchScript 7-20, dynamo 18-23); default 17, or 18 where "
        "the TorchScript exporter fails and dynamo takes over. One asked for is never "
        "substituted: the export fails instead",
    )
    p.add_argument(
        "--exporter",
        choices=("auto", "torchscript", "dynamo"),
        default="auto",
        help="torch.onnx exporter; auto tries TorchScript (fast) then dynamo",
    )
    p.add_argument("--no-parity", action="store_true", help="skip the ONNX Runtime parity check")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the example and parity inputs")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def check_int8_args(args: argparse.Namespace) -> None:
    """The INT8 flags fit together (before anything is loaded or written).

    Raises:
        UserError: ``--int8`` without ``--data``, ``--data`` without ``--int8``, ``--int8``
            with ``--fp16``, a calibration batch count below 1.
    """
    from lut_builder.errors import UserError

    if args.int8 and not args.data:
        raise UserError("--int8 needs --data SPEC: the images its activations are calibrated on")
    if args.data and not args.int8:
        raise UserError("--data is for --int8 calibration; add --int8 or drop --data")
    if args.int8 and args.fp16:
        raise UserError("--int8 and --fp16 are two precisions: choose one")
    if args.int8 and args.calibration_batches < 1:
        raise UserError(f"--calibration-batches must be >= 1, not {args.calibration_batches}")


def run(args: argparse.Namespace) -> int:
    from lut_builder.cli_args import input_files
    from lut_builder.fileio import check_output

    from ..export import BatchRange, export_onnx
    from ..specs import load_model, parse_shape

    check_int8_args(args)
    check_output(args.out, inputs=input_files(args))
    shape = parse_shape(args.input_shape)
    dyn = BatchRange.parse(args.dynamic_batch) if args.dynamic_batch else None
    model = load_model(args.model, weights=args.weights)
    if args.int8:
        return _run_int8(args, model, shape, dyn)
    report = export_onnx(
        model,
        shape,
        args.out,
        dynamic_batch=dyn,
        fp16=args.fp16,
        opset=args.opset,
        exporter=args.exporter,
        parity=not args.no_parity,
        seed=args.seed,
    )
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        print()
        return 0
    batch = f"dynamic batch {report.dynamic_batch}" if report.dynamic_batch else "static batch"
    print(
        f"exported {args.model} -> {report.path} ({report.exporter} exporter, opset "
        f"{report.opset}, {report.nodes} nodes, {report.precision}, {batch}, "
        f"{report.export_s:.1f} s)"
    )
    for note in report.notes:
        print(f"note: {note}")
    for t in report.inputs + report.outputs:
        print(f"  {t['name']}: {t['dtype']} {tuple(t['shape'])}")
    if report.parity is None:
        print("parity: skipped (--no-parity)")
        return 0
    for o in report.parity.outputs:
        print(
            f"  {o.name}: max |onnx - torch| {o.max_abs:.2e}, output scale {o.scale:.2e}, "
            f"relative {o.max_rel:.2e} (element-wise {o.max_rel_elementwise:.2e})"
        )
    print(report.parity.summary())
    return 0


def _run_int8(args: argparse.Namespace, model: Any, shape: tuple[int, ...], dyn: Any) -> int:
    from ..export import export_int8
    from ..train import load_data

    if len(shape) != 4:
        from lut_builder.errors import UserError

        raise UserError(f"--int8 calibrates image models: --input-shape must be N,C,H,W, not {args.input_shape}")  # fmt: skip
    data = load_data(args.data, channels=shape[1], size=(shape[2], shape[3]))
    report = export_int8(
        model,
        shape,
        args.out,
        data,
        flavor=args.int8_for,
        batches=args.calibration_batches,
        opset=args.opset,
        exporter=args.exporter,
        dynamic_batch=dyn,
        seed=args.seed,
    )
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        print()
        return 0
    acc, cal = report.accuracy, report.calibration
    print(
        f"exported {args.model} -> {report.path} (INT8 Q/DQ for {report.flavor}, opset "
        f"{report.opset}, {report.size_bytes['int8'] / 1e6:.2f} MB, FP32 "
        f"{report.size_bytes['fp32'] / 1e6:.2f} MB); calibrated on {cal['samples']} images "
        f"of {cal['data']}"
    )
    print(
        f"accuracy on {acc['samples']} validation images: FP32 {acc['fp32']:.4f}, INT8 "
        f"{acc['int8']:.4f} ({acc['int8'] - acc['fp32']:+.4f}); top-1 agreement "
        f"{acc['agreement']:.4f}"
    )
    print(
        f"ONNX Runtime (CPU) runs {report.int8_convs} convolutions as INT8 kernels, "
        f"{report.float_convs} in float"
    )
    trt = report.tensorrt_problems
    print(
        "TensorRT rules (checked statically): "
        + ("met (opset >= 13, ONNX ops only, symmetric Int8 Q/DQ)" if not trt else "; ".join(trt))
    )
    return 0
