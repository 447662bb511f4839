"""`halp-trt run` end to end on torchvision classifiers: a MobileNetV2 (inverted
residuals, depthwise), an EfficientNet (squeeze-excitation, SiLU) and a ResNeXt
(grouped convolutions), each with ``num_classes=10`` on digits at 16x16.

Slow (a table of each model is measured: minutes apiece on two cores); skipped when
torchvision is absent.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from ..conftest import subprocess_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(2400),
    pytest.mark.skipif(
        importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed"
    ),
]


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_b0", "resnext50_32x4d"])
def test_run_end_to_end(tmp_path, name):
    argv = [
        "run",
        "--model",
        f"torchvision:{name},num_classes=10",
        "--data",
        "digits",
        "--input-shape",
        "8,3,16,16",
        "--target",
        "0.5x",
        "--step",
        "64",
        "--epochs",
        "1",
        "--steps",
        "1",
        "--verify-rounds",
        "3",
        "--no-progress",
        "--out",
        "run",
    ]
    # The torchvision stub this torch build needs lives only in the subprocess.
    proc = subprocess.run(
        [sys.executable, "-m", "halp_trt", *argv],
        cwd=tmp_path, env=subprocess_env(tmp_path / "shim"),
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["pruned"]["params"] < report["baseline"]["params"]
    assert any(g["kept"] < g["size"] for g in report["groups"])
    # Measured on ONNX Runtime, original and pruned interleaved in one run.
    assert report["verify"]["backend"] == "onnxruntime"
    assert report["speedup"] > 1.2, report["speedup"]
    for rel in report["artifacts"].values():
        assert rel is None or (tmp_path / "run" / rel).exists()
