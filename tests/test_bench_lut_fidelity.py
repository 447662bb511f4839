"""bench/lut_fidelity.py on a table whose grid step is coarser than its channel alignment:
the uniform copies it times beside the samples are rounded to the grid, not below it."""

from __future__ import annotations

import json
import shlex
import sys

import pytest

from tests.conftest import TWO_CONV_BN, load_bench, two_conv_bn_net


@pytest.fixture(scope="module")
def fidelity():
    yield load_bench("lut_fidelity")
    sys.modules.pop("bench_lut_fidelity", None)


@pytest.fixture(autouse=True)
def short_loops(fidelity, monkeypatch):
    """The calibration's and --remeasure's timing loops cut to a few runs: what these
    tests check is what the bench computes and writes, not how long it times."""
    monkeypatch.setattr(
        fidelity, "CALIBRATION_LOOP", {"warmup": 1, "runs": 2, "min_time_s": 0.0, "blocks": 2}
    )
    monkeypatch.setattr(fidelity, "REMEASURE_LOOP", {"warmup": 1, "runs": 3, "min_time_s": 0.0})


@pytest.fixture(scope="module")
def built_tables(tmp_path_factory):
    """Per backend, the step-32 table built once for the module (see :func:`step32_table`)."""
    from lut_builder.backends import get_backend
    from lut_builder.build import build_table
    from lut_builder.specs import example_input

    cache = tmp_path_factory.mktemp("step32")
    built = {}

    def build(backend: str):
        if backend not in built:
            model = two_conv_bn_net()
            x = example_input(model, (2, 3, 8, 8))
            measurer = get_backend(backend, runs=3, min_time_s=0.0, warmup=1)
            built[backend] = cache / f"{backend}.db"
            build_table(built[backend], model, x, measurer, step=32, calibration="none")
            measurer.close()
        return built[backend]

    return build


@pytest.fixture
def step32_table(built_tables):
    """``step32_table(path, backend)``: an uncalibrated table of the two-conv net at
    2x3x8x8 on a 32-channel grid, measured on ``backend`` (CPU, fp32) with a short timing
    loop (the grid is what is tested), written to ``path``: a copy of one built once."""

    def copy(path, backend: str):
        path.write_bytes(built_tables(backend).read_bytes())
        return path

    return copy


def fidelity_argv(table, out, *options: str) -> list[str]:
    """bench/lut_fidelity.py's arguments for the two-conv net at 2x3x8x8 on ``table``,
    writing ``out``, with ``options`` between."""
    return [
        "--model", TWO_CONV_BN, "--input-shape", "2,3,8,8", "--table", str(table),
        *options, "--out", str(out),
    ]  # fmt: skip


def test_a_step_coarser_than_the_alignment_times_copies_on_the_grid(
    fidelity, step32_table, tmp_path
):
    # A 32-channel grid: coarser than ONNX Runtime's 8- or 16-channel CPU block, so the
    # half-width copy of the 32-channel layer (16 channels at the block) lies below the
    # grid unless rounded to its step.
    table = step32_table(tmp_path / "t.db", "onnxruntime")
    out = tmp_path / "f.json"
    argv = fidelity_argv(
        table, out, "--recalibrate", "--samples", "2", "--rounds", "5", "--served-rounds", "2"
    )
    assert fidelity.main(argv) == 0
    result = json.loads(out.read_text())
    # Recalibrated as the build calibrates (served), and timed as the table was.
    assert result["table_calibration_timing"] == result["timing"] == "served"
    assert result["rounds"] == 2
    # The command records the arguments main() was given, not the test runner's.
    assert result["command"] == "python bench/lut_fidelity.py " + shlex.join(argv)
    assert result["step"] == 32 and len(result["assignments"]) == 2
    assert {r["model"] for r in result["rows"]} >= {"uniform_0.75", "uniform_0.5"}
    # Its grids are whole (no probes): one fill, priced once.
    assert result["errors_table_speedup_lines"] is None


@pytest.mark.parametrize("extra", [["--precision", "fp16"], ["--device", "cuda"]])
def test_a_table_of_another_precision_or_device_is_refused(
    fidelity, step32_table, tmp_path, capsys, extra
):
    # The whole models must run where and as the table's layers were measured: a CPU
    # fp32 table is not a model of a GPU or an fp16 deployment (one line, nothing written,
    # the table not recalibrated).
    table = step32_table(tmp_path / "t.db", "torch")
    before = table.read_bytes()
    out = tmp_path / "f.json"
    argv = fidelity_argv(
        table, out, "--backend", "torch", "--recalibrate", "--samples", "2", "--rounds", "5",
        *extra,
    )  # fmt: skip
    assert fidelity.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was measured at fp32 on cpu" in err, err
    assert not out.exists() and table.read_bytes() == before


def test_remeasure_sets_the_tables_layer_sums_beside_fresh_ones(fidelity, step32_table, tmp_path):
    # Every configuration the timed models use is measured again, in the table's unit:
    # the JSON says how far the table's sums stand from the fresh ones as speed-ups, and
    # what the table's calibration makes of the fresh sums.
    table = step32_table(tmp_path / "t.db", "onnxruntime")
    out = tmp_path / "f.json"
    argv = fidelity_argv(
        table, out, "--recalibrate", "--samples", "3", "--rounds", "5", "--served-rounds", "2",
        "--remeasure",
    )  # fmt: skip
    assert fidelity.main(argv) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    dense = rows[0]
    # Unpruned at 2x3x8x8: 2 x (32 + 64) x 64 pixels from the convs, 2 x 10 from the head.
    assert dense["output_elements"] == 2 * (32 + 64) * 64 + 2 * 10
    assert all(r["layers_fresh_ms"] > 0 for r in rows)
    assert dense["err_points_speedup"] == 0.0 and dense["err_fresh_speedup"] == 0.0
    for r in rows:  # the speed-up errors are ratios of ratios against the unpruned row
        pts = (r["layers_ms"] / dense["layers_ms"]) / (
            r["layers_fresh_ms"] / dense["layers_fresh_ms"]
        )
        assert abs(r["err_points_speedup"] - (pts - 1)) < 1e-12
    samples = [r for r in rows if r["sample"]]
    assert result["errors_points_speedup"]["max_abs"] == max(
        abs(r["err_points_speedup"]) for r in samples
    )
    assert result["errors_fresh_speedup"] is not None
    # Three layers per model (two convs and the head), at most one configuration each per
    # model: at most 3 x (1 + 2 uniform + 3 samples), at least the unpruned model's 3.
    assert 3 <= result["remeasured_points"] <= 18
    # Timed with the table's loop under the one this test sets (REMEASURE_LOOP).
    assert result["remeasure_loop"]["loop"] == {"warmup": 1, "runs": 3, "min_time_s": 0.0}
    assert result["remeasure_loop"]["from"].startswith("min_time_s, runs, warmup set here")
    assert result["remeasure_loop"]["from"].endswith("the rest from the table")
    assert result["residual_vs_elements"] is None or -1 <= result["residual_vs_elements"] <= 1
    # Every configuration with its table and fresh value; the model's sums are theirs.
    configs = result["remeasured"]
    assert len(configs) == result["remeasured_points"]
    fresh = {(c["signature"], c["c_in"], c["c_out"]): c["fresh_ms"] for c in configs}
    table_ms = {(c["signature"], c["c_in"], c["c_out"]): c["table_ms"] for c in configs}
    # The unpruned model: its three layers at full width (3 -> 32, 32 -> 64, 64 -> 10).
    full = [k for k in fresh if (k[1], k[2]) in ((3, 32), (32, 64), (64, 10))]
    assert len(full) == 3
    assert sum(fresh[k] for k in full) == pytest.approx(dense["layers_fresh_ms"])
    assert sum(table_ms[k] for k in full) == pytest.approx(dense["layers_ms"])
    # The full widths are grid points the table measured (a 32-channel grid).
    assert all(c["measured_in_table"] for c in configs if (c["c_in"], c["c_out"]) == (32, 64))
    sigs = result["remeasured_by_signature"]
    assert sum(s["configurations"] for s in sigs) == len(configs)
    assert sum(s["share_of_unpruned"] for s in sigs) == pytest.approx(1.0)
    assert [s["share_of_unpruned"] for s in sigs] == sorted(
        (s["share_of_unpruned"] for s in sigs), reverse=True
    )
    for s in sigs:
        f = s["fresh_over_table"]
        assert f["p10"] <= f["median"] <= f["p90"]


def test_without_remeasure_nothing_is_measured_again(fidelity, step32_table, tmp_path):
    table = step32_table(tmp_path / "t.db", "onnxruntime")
    out = tmp_path / "f.json"
    argv = fidelity_argv(table, out, "--samples", "2", "--rounds", "5", "--served-rounds", "2")
    assert fidelity.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["errors_points_speedup"] is None and result["remeasured_points"] is None
    assert result["remeasured"] is None and result["remeasured_by_signature"] is None
    assert result["remeasure_loop"] is None
    assert "layers_fresh_ms" not in result["rows"][0]
    assert result["rows"][0]["output_elements"] == 2 * (32 + 64) * 64 + 2 * 10


def test_remeasure_refuses_a_table_of_another_backend_before_timing(
    fidelity, step32_table, tmp_path, capsys
):
    # A torch table's points cannot be measured again on ONNX Runtime: one line, exit 2,
    # nothing written.
    table = step32_table(tmp_path / "t.db", "torch")
    out = tmp_path / "f.json"
    argv = fidelity_argv(table, out, "--samples", "2", "--rounds", "5", "--remeasure")
    assert fidelity.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "measured on torch, not onnxruntime" in err, err
    assert not out.exists()


def test_table_measurer_takes_the_tables_options_and_refuses_what_it_cannot_match(fidelity):
    from lut_builder.backends import get_backend

    class Table:
        path = "t.db"

        def __init__(self, options, timing_loop=None):
            self.fingerprint = {"backend": "onnxruntime", "precision": "fp32", "options": options}
            self.timing_loop = timing_loop

    stored = get_backend("onnxruntime", threads=1, copies=3).fingerprint()["options"]
    measurer, why = fidelity.table_measurer(Table(stored), "onnxruntime", get_backend, {})
    assert why == "" and measurer.copies == 3 and measurer.fingerprint()["options"] == stored
    assert measurer.timing_loop() == {"warmup": 5, "runs": 20, "min_time_s": 0.3}  # defaults
    measurer.close()
    # The table's timing loop where it records one, under the caller's options.
    loop = {"warmup": 2, "runs": 7, "min_time_s": 0.0}
    measurer, why = fidelity.table_measurer(Table(stored, loop), "onnxruntime", get_backend, {})
    assert why == "" and measurer.timing_loop() == loop
    measurer.close()
    measurer, why = fidelity.table_measurer(
        Table(stored, loop), "onnxruntime", get_backend, {"runs": 4}
    )
    assert why == "" and measurer.timing_loop() == {**loop, "runs": 4}
    measurer.close()
    # An option its constructor refuses, and one it does not take (a measuring setting of
    # another version): each refused in one line.
    bad = {**stored, "clock": "no such clock"}
    measurer, why = fidelity.table_measurer(Table(bad), "onnxruntime", get_backend, {})
    assert measurer is None and "cannot measure as t.db was measured: unknown clock" in why
    extra = {**stored, "tiles": 4}
    measurer, why = fidelity.table_measurer(Table(extra), "onnxruntime", get_backend, {})
    assert measurer is None and "t.db was measured with" in why and "'tiles': 4" in why


def test_output_elements_and_their_correlation_with_the_error(fidelity):
    from lut_builder.signatures import LayerSignature

    strided = LayerSignature("conv2d", (3, 3), (2, 2), (1, 1), in_hw=(9, 9), batch=4)
    assert fidelity.output_elements([(strided, 8, 16)]) == 4 * 16 * 5 * 5
    rows = [
        {"err_table_speedup": e, "output_elements": n, "layers_ms": 1.0}
        for e, n in [(0.05, 100), (0.0, 200), (-0.05, 300)]
    ]
    assert abs(fidelity.residual_vs_elements(rows) + 1) < 1e-12
    assert fidelity.residual_vs_elements(rows[:2]) is None


def test_signatures_that_share_a_short_label_are_told_apart(fidelity):
    from lut_builder.signatures import LayerSignature

    relu = LayerSignature("conv2d", in_hw=(4, 4), batch=8)
    plain = LayerSignature("conv2d", in_hw=(4, 4), batch=8, epilogue="bias")
    other = LayerSignature("conv2d", in_hw=(2, 2), batch=8)
    labels = fidelity.signature_labels({relu, plain, other})
    assert relu.short() == plain.short() and labels[other] == other.short()
    assert labels[relu] != labels[plain] and all(
        labels[g].startswith(g.short() + " [") for g in (relu, plain)
    )
