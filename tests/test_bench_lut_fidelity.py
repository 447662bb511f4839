"""bench/lut_fidelity.py on a table whose grid step is coarser than its channel alignment:
the uniform copies it times beside the samples are rounded to the grid, not below it."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import TWO_CONV_BN, load_bench, two_conv_bn_net


@pytest.fixture(scope="module")
def fidelity():
    yield load_bench("lut_fidelity")
    sys.modules.pop("bench_lut_fidelity", None)


def step32_table(path, backend: str):
    """An uncalibrated table of the two-conv net at 2x3x8x8 on a 32-channel grid, measured
    on ``backend`` (CPU, fp32) with a short timing loop: the grid is what is tested."""
    from lut_builder.backends import get_backend
    from lut_builder.build import build_table
    from lut_builder.specs import example_input

    model = two_conv_bn_net()
    x = example_input(model, (2, 3, 8, 8))
    measurer = get_backend(backend, runs=3, min_time_s=0.0, warmup=1)
    build_table(path, model, x, measurer, step=32, calibration="none")
    measurer.close()
    return path


def test_a_step_coarser_than_the_alignment_times_copies_on_the_grid(fidelity, tmp_path):
    # A 32-channel grid: coarser than ONNX Runtime's 8- or 16-channel CPU block, so the
    # half-width copy of the 32-channel layer (16 channels at the block) lies below the
    # grid unless rounded to its step.
    table = step32_table(tmp_path / "t.db", "onnxruntime")
    out = tmp_path / "f.json"
    argv = [
        "--model", TWO_CONV_BN, "--input-shape", "2,3,8,8", "--table", str(table),
        "--recalibrate", "--samples", "2", "--rounds", "5", "--served-rounds", "2",
        "--out", str(out),
    ]  # fmt: skip
    assert fidelity.main(argv) == 0
    result = json.loads(out.read_text())
    # Recalibrated as the build calibrates (served), and timed as the table was.
    assert result["table_calibration_timing"] == result["timing"] == "served"
    assert result["rounds"] == 2
    # The command records the arguments main() was given, not the test runner's.
    assert result["command"] == "python bench/lut_fidelity.py " + " ".join(argv)
    assert result["step"] == 32 and len(result["assignments"]) == 2
    assert {r["model"] for r in result["rows"]} >= {"uniform_0.75", "uniform_0.5"}
    # Its grids are whole (no probes): one fill, priced once.
    assert result["errors_table_speedup_lines"] is None


@pytest.mark.parametrize("extra", [["--precision", "fp16"], ["--device", "cuda"]])
def test_a_table_of_another_precision_or_device_is_refused(fidelity, tmp_path, capsys, extra):
    # The whole models must run where and as the table's layers were measured: a CPU
    # fp32 table is not a model of a GPU or an fp16 deployment (one line, nothing written,
    # the table not recalibrated).
    table = step32_table(tmp_path / "t.db", "torch")
    before = table.read_bytes()
    out = tmp_path / "f.json"
    argv = [
        "--model", TWO_CONV_BN, "--input-shape", "2,3,8,8", "--backend", "torch",
        "--table", str(table), "--recalibrate", "--samples", "2", "--rounds", "5",
        "--out", str(out), *extra,
    ]  # fmt: skip
    assert fidelity.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was measured at fp32 on cpu" in err, err
    assert not out.exists() and table.read_bytes() == before
