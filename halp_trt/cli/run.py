"""`halp-trt run`: model + data + latency budget -> table, pruned model, ONNX, engine,
measured speed-up and a report, in one command."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lut_builder.cli_args import thread_count

from .prune import add_training_args


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "run",
        help="the whole path: latency table, pruning, export, engine, verify, report",
        description=(
            "Build (or reuse) the latency table on the backend, evaluate the original, prune "
            "with fine-tuning to the target, export ONNX, build TensorRT engines where "
            "TensorRT is present, time original vs pruned on the backend in one interleaved "
            "run, and write OUT/report.json, OUT/report.md and OUT/plots. Each stage's "
            "outputs stay in OUT; a failed run continues with --resume."
        ),
    )
    add_training_args(p)
    p.add_argument("--input-shape", required=True, metavar="N,C,H,W", help="deployment input")
    p.add_argument("--target", required=True, metavar="T", help="0.5x (of the original) or 3ms")
    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "tensorrt", "torch", "onnxruntime"),
        help="auto: TensorRT, else PyTorch on CUDA, else ONNX Runtime on the CPU",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "fp16", "bf16", "int8"),
        help="of the table, exports and engines; int8: Q/DQ models calibrated on --data, "
        "on onnxruntime or tensorrt, reported beside FP32",
    )
    p.add_argument("--lut", metavar="FILE", help="reuse this table if its fingerprint matches")
    p.add_argument("--step", type=int, metavar="N", help="channel step of the table's grid")
    p.add_argument(
        "--threads",
        type=thread_count,
        default=1,
        metavar="N",
        help="CPU threads of the deployment (onnxruntime, torch on CPU): table, calibration "
        "and verify run at N; a --lut of another count is refused (default 1)",
    )
    p.add_argument(
        "--prune-window",
        type=float,
        default=0.5,
        metavar="F",
        help="fraction of the training the steps are spread over (default 0.5; "
        "the rest fine-tunes the final widths)",
    )
    p.add_argument("--verify-rounds", type=int, default=30, help="timed rounds of verify (30)")
    p.add_argument(
        "--no-feedback",
        action="store_true",
        help="do not measure the plans while pruning (CPU backends at fp32, and the torch "
        "backend on a GPU, measure each step's plan against the original and correct the "
        "budgets by it)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT")
    return p


def config(args: argparse.Namespace) -> Any:
    """The :class:`~halp_trt.config.RunConfig` the arguments describe.

    Raises:
        ConfigError: a value outside what its field allows.
    """
    from ..config import PruneConfig, RunConfig, TrainConfig

    return RunConfig(
        model=args.model,
        weights=args.weights,
        data=args.data,
        input_shape=args.input_shape,
        out=args.out,
        prune=PruneConfig(
            target=args.target,
            importance=args.importance,
            schedule="oneshot" if args.calibration_batches else "exp",
            steps=args.steps,
            prune_window=args.prune_window,
            min_interval=args.min_interval,
            min_keep=args.min_keep,
            calibration_batches=args.calibration_batches,
            short_run=args.short_run,
        ),
        train=TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            seed=args.seed,
            bn_batches=args.bn_batches,
        ),
        backend=args.backend,
        precision=args.precision,
        lut=args.lut,
        step=args.step,
        threads=args.threads,
        pretrain_epochs=args.pretrain_epochs,
        verify_rounds=args.verify_rounds,
        feedback=not args.no_feedback,
        resume=args.resume,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from ..pipeline import run as run_pipeline

    cfg = config(args)
    report = run_pipeline(cfg)
    b, p = report["baseline"], report["pruned"]
    print(
        "PASSED target: " if report["target_met"] else "MISSED target: ",
        f"{report['backend']} measured {b['latency_ms']:.4f} -> {p['latency_ms']:.4f} ms "
        f"(speed-up {report['speedup']:.2f}x, predicted {report['predicted_speedup']:.2f}x, "
        f"target {report['target']['ms']:.4f} ms); accuracy {b['accuracy']:.4f} -> "
        f"{p['accuracy']:.4f}",
        sep="",
    )
    for row in report.get("precisions") or []:
        ms = row["latency_ms"]
        print(
            f"  {row['model']:<12} {'-' if ms is None else f'{ms:.4f} ms':>12}  accuracy "
            f"{row['accuracy']:.4f}  {row['size_bytes'] / 1e6:.2f} MB"
        )
    out = Path(cfg.out)  # as given, without a trailing separator doubled
    print(f"report: {out / 'report.md'} (data in {out / 'report.json'})")
    return 0
