"""`halp-trt export`: a model to a checked ONNX file (graphsurgeon cleanup, onnx.checker,
ONNX Runtime vs PyTorch parity through Polygraphy)."""

from __future__ import annotations

import argparse
import json
import sys

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
            "An FP16 ONNX is how TensorRT 11 (always strongly typed) builds an FP16 engine."
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
    p.add_argument("--seed", type=int, default=0, help="seed of the example and parity inputs")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    from lut_builder.fileio import check_output

    from ..export import BatchRange, export_onnx
    from ..specs import load_model, parse_shape

    check_output(args.out)
    shape = parse_shape(args.input_shape)
    dyn = BatchRange.parse(args.dynamic_batch) if args.dynamic_batch else None
    model = load_model(args.model, weights=args.weights)
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
