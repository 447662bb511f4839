"""bench/calibration_regime.py: bad input is one line and writes nothing; a tiny run times
every copy in both regimes and fits the latency model on each."""

from __future__ import annotations

import json
import statistics
import sys

import pytest

from tests.conftest import TWO_CONV_BN, load_bench


@pytest.fixture(scope="module")
def regime():
    yield load_bench("calibration_regime")
    sys.modules.pop("bench_calibration_regime", None)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """An ONNX Runtime table of the two-conv model at 2x3x8x8, step 16, not calibrated."""
    from lut_builder.backends import get_backend
    from lut_builder.build import build_table
    from lut_builder.specs import example_input, load_model

    path = tmp_path_factory.mktemp("regime") / "t.db"
    model = load_model(TWO_CONV_BN).eval()
    backend = get_backend("onnxruntime", runs=3, min_time_s=0.0, warmup=1, alignment=16)
    build_table(path, model, example_input(model, (2, 3, 8, 8)), backend, calibration="none")
    backend.close()
    return path


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--fractions", "0.5,1"], "each must lie between 0 and 1"),
        (["--extra", "x"], "comma-separated numbers"),
        (["--reps", "0"], "--reps must be at least 1"),
        (["--input-shape", "2,3,8"], "--input-shape must be N,C,H,W"),
        (["--table", "/nonexistent/t.db"], "is not a file"),
        (["--pareto", "/nonexistent/p.json"], "is not a file"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(regime, table, tmp_path, capsys, extra, message):
    out = tmp_path / "r.json"
    argv = ["--model", TWO_CONV_BN, "--input-shape", "2,3,8,8", "--table", str(table),
            "--out", str(out), *extra]  # fmt: skip
    assert regime.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_a_pareto_run_of_another_model_is_refused(regime, table, tmp_path, capsys):
    other = tmp_path / "p.json"
    other.write_text(json.dumps({"model": "halp_trt.models:resnet20", "runs": []}))
    argv = ["--model", TWO_CONV_BN, "--input-shape", "2,3,8,8", "--table", str(table),
            "--pareto", str(other), "--out", str(tmp_path / "r.json")]  # fmt: skip
    assert regime.main(argv) == 2
    assert "a run of 'halp_trt.models:resnet20'" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def tiny_run(regime, table, tmp_path, *, samples: str, extra: str, reps: str) -> dict:
    """A tiny run of the bench on ``table`` (3 round-robin, 2 served rounds): its JSON."""
    out = tmp_path / "r.json"
    argv = [
        "--model", TWO_CONV_BN, "--input-shape", "2,3,8,8", "--table", str(table),
        "--samples", samples, "--extra", extra, "--rounds", "3", "--served-rounds", "2",
        "--reps", reps, "--lock", str(tmp_path / "lock"), "--out", str(out),
    ]  # fmt: skip
    assert regime.main(argv) == 0
    return json.loads(out.read_text())


def test_tiny_run_times_both_regimes_and_scores_each_fit(regime, table, tmp_path):
    result = tiny_run(regime, table, tmp_path, samples="2", extra="0.25", reps="2")
    rows = result["rows"]
    assert [r["kind"] for r in rows] == ["dense", "fitted", "fitted", "uniform", "random", "random"]
    for r in rows:
        assert len(r["round-robin"]) == len(r["served"]) == 2
        assert all(t > 0 for t in r["round-robin"] + r["served"]) and r["layers_ms"] > 0
    assert rows[0]["layers_ms"] > rows[3]["layers_ms"]  # the quarter copy is narrower
    # The table is not calibrated: no "table" row (a calibrated one is scored too).
    assert set(result["fits"]) == {"round-robin", "served", "round-robin, served"}
    # A random copy's error, from the stored medians and the stored fit.
    for key, timed in (("served", "served"), ("round-robin, served", "served")):
        fit = result["fits"][key]
        med = [statistics.median(r[timed]) for r in rows]

        def pred(r, fit=fit):
            return fit["scale"] * r["layers_ms"] + fit["overhead_ms"]

        errs = [(pred(r) / pred(rows[0])) / (m / med[0]) - 1 for r, m in zip(rows, med)]
        random = fit["speedup_errors"]["random"]
        assert random["n"] == 2
        assert random["max_abs"] == pytest.approx(max(abs(e) for e in errs[4:]))
        assert random["mean"] == pytest.approx(statistics.fmean(errs[4:]))


def test_a_calibrated_tables_own_model_is_scored_too(regime, table, tmp_path):
    import shutil

    from lut_builder import LatencyTable

    calibrated = tmp_path / "c.db"
    shutil.copy(table, calibrated)
    with LatencyTable.open(calibrated, writable=True) as t:
        t.set_overhead(0.01, {"regime": "served"}, scale=1.5)
    result = tiny_run(regime, calibrated, tmp_path, samples="1", extra="", reps="1")
    own = result["fits"]["table, served"]
    assert result["table_regime"] == "served"
    assert (own["scale"], own["overhead_ms"]) == (1.5, 0.01)
    rows = result["rows"]
    med = [statistics.median(r["served"]) for r in rows]
    pred = [1.5 * r["layers_ms"] + 0.01 for r in rows]
    err = (pred[-1] / pred[0]) / (med[-1] / med[0]) - 1
    assert own["speedup_errors"]["random"]["mean"] == pytest.approx(err)
