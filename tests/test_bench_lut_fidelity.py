"""bench/lut_fidelity.py on a table whose grid step is coarser than its channel alignment:
the uniform copies it times beside the samples are rounded to the grid, not below it."""

from __future__ import annotations

import json
import sys

import pytest
import torch.nn as nn

from tests.conftest import load_bench


def tiny_net(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )  # fmt: skip


@pytest.fixture(scope="module")
def fidelity():
    yield load_bench("lut_fidelity")
    sys.modules.pop("bench_lut_fidelity", None)


def test_a_step_coarser_than_the_alignment_times_copies_on_the_grid(fidelity, tmp_path):
    from lut_builder.backends import get_backend
    from lut_builder.build import build_table
    from lut_builder.specs import example_input

    model = tiny_net()
    x = example_input(model, (2, 3, 8, 8))
    table = tmp_path / "t.db"
    # A 32-channel grid: coarser than ONNX Runtime's 8- or 16-channel CPU block, so the
    # half-width copy of the 32-channel layer (16 channels at the block) lies below the
    # grid unless rounded to its step.
    build_table(table, model, x, get_backend("onnxruntime"), step=32, calibration="none")
    out = tmp_path / "f.json"
    argv = [
        "--model", f"{__file__}:tiny_net", "--input-shape", "2,3,8,8", "--table", str(table),
        "--recalibrate", "--samples", "2", "--rounds", "5", "--out", str(out),
    ]  # fmt: skip
    assert fidelity.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["step"] == 32 and len(result["assignments"]) == 2
    assert {r["model"] for r in result["rows"]} >= {"uniform_0.75", "uniform_0.5"}
