"""What ONNX Runtime's spinning pool threads do to interleaved timing at several threads.

    python bench/spinning.py [--threads 2] [--rounds 15] [--repeat 2]
                             [--json bench/results/spinning.json]

The demo's model (``resnet20_w2``, batch 16, 16x16, untrained) and a copy at half the
width of every prunable group (multiples of 16) (ONNX Runtime CPU, ``--threads`` intra-op threads) are timed
against each other the way verify, the pruner's feedback and the table builder time
(chunks alternating between two sessions, :func:`lut_builder.timing.time_chunked`), with
``session.intra_op.allow_spinning`` on (ONNX Runtime's default) and off (what lut-builder
and halp-trt set at several threads), and the dense model alone. It prints the dense
model's time interleaved and alone, the pruned/dense ratio (median over rounds) and its
interquartile range, for each setting in turn, ``--repeat`` times.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np

MODEL = "halp_trt.models:resnet20_w2"
SHAPE = (16, 3, 16, 16)


class Session:
    """One ONNX Runtime session of a model, a runner for ``time_chunked``."""

    def __init__(self, blob: bytes, threads: int, spin: bool, x: np.ndarray) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()  # session_options' settings, spinning chosen here
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.session = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
        self.feed = {self.session.get_inputs()[0].name: x}

    def __call__(self) -> None:
        self.session.run(None, self.feed)

    def sync(self) -> None:
        pass


def models() -> tuple[bytes, bytes, np.ndarray]:
    """The dense model and its half-width copy as ONNX, and the input."""
    import torch

    from halp_trt.graph import uniform_width
    from halp_trt.specs import load_model

    torch.manual_seed(0)
    dense = load_model(MODEL).eval()
    x = torch.randn(*SHAPE)
    pruned = uniform_width(dense, x, 0.5, 16).eval()

    def onnx(m) -> bytes:
        buf = io.BytesIO()
        torch.onnx.export(m, (x,), buf, input_names=["x"], dynamo=False)
        return buf.getvalue()

    return onnx(dense), onnx(pruned), x.numpy()


def main(argv: list[str] | None = None) -> int:
    from lut_builder.timing import time_chunked

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args(argv)
    if args.threads < 2 or args.rounds < 4 or args.repeat < 1:
        print("spinning.py: error: need --threads >= 2, --rounds >= 4, --repeat >= 1",
              file=sys.stderr)  # fmt: skip
        return 2
    dense, pruned, x = models()
    rows = []
    print(f"{'spinning':>8}  {'dense interleaved':>17}  {'dense alone':>11}  ratio  (IQR)")
    for _ in range(args.repeat):
        for spin in (True, False):
            pair = [Session(b, args.threads, spin, x) for b in (dense, pruned)]
            (d, q), _ = time_chunked(pair, warmup=2, rounds=args.rounds, min_block_ms=20)
            (alone,), _ = time_chunked(pair[:1], warmup=2, rounds=args.rounds, min_block_ms=20)
            ratios = [b / a for a, b in zip(d, q)]
            row = {
                "spinning": spin,
                "dense_interleaved_ms": statistics.median(d),
                "dense_alone_ms": statistics.median(alone),
                "pruned_interleaved_ms": statistics.median(q),
                "ratio": statistics.median(ratios),
                "ratio_iqr": [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))],
            }
            rows.append(row)
            print(
                f"{'on' if spin else 'off':>8}  {row['dense_interleaved_ms']:14.2f} ms  "
                f"{row['dense_alone_ms']:8.2f} ms  {row['ratio']:.3f}  "
                f"({row['ratio_iqr'][0]:.3f}-{row['ratio_iqr'][1]:.3f})",
                flush=True,
            )
    if args.json:
        out = {
            "command": "python bench/spinning.py "
            + shlex.join(sys.argv[1:] if argv is None else argv),
            "machine": {"cpu": platform.machine(), "cores": os.cpu_count()},
            "model": MODEL,
            "input_shape": list(SHAPE),
            "threads": args.threads,
            "rounds": args.rounds,
            "rows": rows,
        }
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
