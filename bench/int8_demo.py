"""The demo at INT8: `halp-trt run --precision int8` on the demo's model, data and target
(bench/demo.py), then FP32 dense, INT8 dense and INT8 pruned side by side, as JSON.

    flock /tmp/halp-trt-bench.lock python bench/int8_demo.py [--out runs/int8_demo] \\
        [--json bench/results/int8_demo.json]

Targets (issue 14): measured INT8 pruned vs INT8 original speed-up >= 1.8x; INT8 pruned
accuracy within 1 point of the FP32 dense model's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo import DEMO  # noqa: E402  (the demo's configuration, one source)

TARGET_SPEEDUP = 1.8
TARGET_ACCURACY_POINTS = 1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/int8_demo", help="run directory (replaced)")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists() and not args.resume:
        shutil.rmtree(out)
    flags = [*DEMO, "--precision", "int8", "--out", str(out), "--no-progress"]
    flags += ["--resume"] if args.resume else []
    cmd = [sys.executable, "-m", "halp_trt", "run", *flags]
    print("$ halp-trt run " + " ".join(flags), flush=True)
    t0 = time.perf_counter()
    if subprocess.call(cmd) != 0:
        return 1
    seconds = time.perf_counter() - t0
    r = json.loads((out / "report.json").read_text())
    rows = {row["model"]: row for row in r["precisions"]}
    fp32_acc, int8_acc = rows["fp32 dense"]["accuracy"], rows["int8 pruned"]["accuracy"]
    result = {
        "command": "halp-trt run " + " ".join([*DEMO, "--precision", "int8"]),
        "machine": {
            "cpu": r["fingerprint"].get("device"),
            "cores": os.cpu_count(),
            "note": "shared 2-core machine; ratios from interleaved runs",
            "python": platform.python_version(),
        },
        "seconds": round(seconds, 1),
        "stages_s": r["stages"],
        "fingerprint": r["fingerprint"],
        "alignment_note": "the INT8 table's alignment was read from the measured staircase",
        "target": r["target"],
        "precisions": r["precisions"],
        "int8_speedup": r["speedup"],
        "int8_speedup_spread": r["speedup_spread"],
        "predicted_speedup": r["predicted_speedup"],
        "accuracy_points_vs_fp32_dense": 100 * (int8_acc - fp32_acc),
        "targets": {
            "int8_speedup_min": TARGET_SPEEDUP,
            "accuracy_points_max_drop": TARGET_ACCURACY_POINTS,
            "speedup_met": r["speedup"] >= TARGET_SPEEDUP,
            "accuracy_met": 100 * (fp32_acc - int8_acc) <= TARGET_ACCURACY_POINTS,
        },
        "budget_met": r["target_met"],
    }
    for name in ("fp32 dense", "int8 dense", "int8 pruned"):
        row = rows[name]
        print(
            f"{name:<12} {row['latency_ms']:.4f} ms  {row['speedup_vs_fp32']:.2f}x vs FP32  "
            f"accuracy {row['accuracy']:.4f}  {row['size_bytes'] / 1e6:.2f} MB"
        )
    print(
        f"INT8 pruned vs INT8 dense: {r['speedup']:.2f}x measured (target >= "
        f"{TARGET_SPEEDUP}x), {r['predicted_speedup']:.2f}x predicted; accuracy "
        f"{result['accuracy_points_vs_fp32_dense']:+.2f} points vs FP32 dense (target >= "
        f"-{TARGET_ACCURACY_POINTS})"
    )
    if args.json:
        from lut_builder.fileio import atomic_write_json

        atomic_write_json(args.json, result, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
