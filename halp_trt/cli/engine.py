"""`halp-trt engine`: a TensorRT engine (10.x or 11.x) and its sidecar from an ONNX file."""

from __future__ import annotations

import argparse
import json
import sys

from lut_builder.cli_args import positive_float


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "engine",
        help="build a TensorRT engine and its .json sidecar from an ONNX file",
        description=(
            "Build a serialized TensorRT engine (TensorRT 10.x or 11.x; strongly typed, so "
            "the precision is the ONNX file's: export with --fp16 for an FP16 engine) and "
            "write MODEL.engine.json beside it: input/output names and shapes, precision, "
            "TensorRT version, GPU and compute capability, source ONNX hash, build time. "
            "Writes are atomic. Needs TensorRT and an NVIDIA GPU (see docker/)."
        ),
    )
    p.add_argument("--onnx", required=True, help="the ONNX model")
    p.add_argument("--out", required=True, help="the .engine file to write")
    p.add_argument("--timing-cache", metavar="FILE", help="timing cache to reuse and update")
    p.add_argument(
        "--batch",
        metavar="MIN:OPT:MAX",
        help="optimisation profile of a dynamic batch (default: the range the export stored)",
    )
    p.add_argument(
        "--workspace", type=positive_float, metavar="GiB", help="builder workspace limit"
    )
    p.add_argument(
        "--opt-level",
        type=int,
        choices=range(6),
        metavar="N",
        help="builder optimisation level 0-5",
    )
    p.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    p.add_argument("--json", action="store_true", help="print the sidecar as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    from lut_builder.cli_args import input_files
    from lut_builder.fileio import check_output

    from ..export import BatchRange, build_engine, sidecar_path

    # All before TensorRT is imported: a bad path is one line even where it is missing.
    inputs = input_files(args)
    if args.timing_cache is not None:
        check_output(args.timing_cache, flag="--timing-cache", inputs=inputs)
    inputs["--timing-cache"] = args.timing_cache  # read and rewritten, never the engine
    check_output(args.out, inputs=inputs)
    check_output(sidecar_path(args.out), flag="--out (its .json sidecar)", inputs=inputs)
    batch = BatchRange.parse(args.batch) if args.batch else None
    sidecar = build_engine(
        args.onnx,
        args.out,
        batch=batch,
        workspace_gib=args.workspace,
        opt_level=args.opt_level,
        timing_cache=args.timing_cache,
        verbose=args.verbose,
    )
    if args.json:
        json.dump(sidecar.to_dict(), sys.stdout, indent=2)
        print()
        return 0
    print(
        f"built {args.out} from {args.onnx}: {sidecar.precision}, TensorRT {sidecar.tensorrt}, "
        f"{sidecar.gpu['name']} (sm {sidecar.gpu['compute_capability']}), "
        f"{sidecar.build['build_s']:.1f} s"
    )
    for t in sidecar.inputs:
        prof = t.get("profile")
        rng = f", profile {prof['min']} .. {prof['max']} (opt {prof['opt']})" if prof else ""
        print(f"  input  {t['name']}: {t['dtype']} {tuple(t['shape'])}{rng}")
    for t in sidecar.outputs:
        print(f"  output {t['name']}: {t['dtype']} {tuple(t['shape'])}")
    print(f"sidecar: {sidecar_path(args.out)}")
    return 0
