"""bench/ratio_drift.py: bad input stops it in one line and writes nothing; a tiny run
times an untrained and a trained copy of the same widths alternately and writes both."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import TWO_CONV_BN, load_bench

TINY = TWO_CONV_BN


@pytest.fixture(scope="module")
def drift():
    yield load_bench("ratio_drift")
    sys.modules.pop("bench_ratio_drift", None)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--fraction", "1"], "--fraction must lie between 0 and 1"),
        (["--reps", "0"], "--reps must be at least 1"),
        (["--input-shape", "2,3,8"], "--input-shape must be N,C,H,W"),
        (["--data", "npz:/nonexistent.npz"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(drift, tmp_path, capsys, extra, message):
    out = tmp_path / "d.json"
    argv = ["--model", TINY, "--input-shape", "2,3,8,8", "--out", str(out), *extra]
    assert drift.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_a_table_that_cannot_cut_the_model_is_one_line_before_training(drift, tmp_path, capsys):
    import torch

    from halp_trt.specs import load_model

    out, table = tmp_path / "d.json", tmp_path / "t.db"
    base = ["--model", TINY, "--input-shape", "2,3,8,8", "--out", str(out)]
    assert drift.main([*base, "--table", str(table)]) == 2
    table.write_bytes(b"not a table " * 8)  # the target is checked before the file
    assert drift.main([*base, "--table", str(table), "--target", "1.2x"]) == 2
    assert drift.main([*base, "--table", str(table)]) == 2
    tiny = tmp_path / "tiny.db"  # the model's table at 8x8, asked for 16x16
    load_bench("pareto").macs_table(tiny, load_model(TINY), torch.randn(2, 3, 8, 8), 8, 8).close()
    wrong = ["--model", TINY, "--input-shape", "2,3,16,16", "--out", str(out)]
    assert drift.main([*wrong, "--table", str(tiny)]) == 2
    assert drift.main([*base, "--table", str(tiny), "--target", "0.01x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5, err
    assert f"--table {table} does not exist" in err[0]
    assert "--target must be a fraction below 1x" in err[1]
    assert "is not a latency table" in err[2]
    assert "does not cover layer" in err[3]
    assert "is infeasible" in err[4]
    assert not out.exists()


def test_a_plan_cut_is_the_model_the_pruner_timed_at_its_step(
    drift, tmp_path, short_feedback, monkeypatch
):
    """With --table, the untrained copy is halp-trt's plan before training, and the
    pruner's own reading of it at the step is kept beside the later readings."""
    import torch

    from halp_trt.specs import load_model

    # The short feedback's 5 rounds scatter on a busy machine; trusted here whatever they
    # spread, so that the step has a reading to keep.
    monkeypatch.setattr("halp_trt.prune.feedback.FEEDBACK_TRUST", 10.0)

    table = tmp_path / "t.db"
    model = load_model(TINY)
    load_bench("pareto").macs_table(table, model, torch.randn(2, 3, 8, 8), 8, 8).close()
    out = tmp_path / "d.json"
    argv = [
        "--model", TINY, "--input-shape", "2,3,8,8", "--table", str(table), "--target", "0.6x",
        "--pretrain-epochs", "0", "--epochs", "1", "--reps", "2",
        "--lock", str(tmp_path / "lock"), "--out", str(out),
    ]  # fmt: skip
    assert drift.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["cut"] == "plan" and result["settings"]["target"] == "0.6x"
    step = result["step"]
    assert 0 < step["ratio"] < 1 and step["halfwidth"] >= 0 and step["importance"]
    assert result["widths"] != [32, 64] and len(result["widths"]) == 2  # pruned, not uniform
    for name in ("untrained", "trained"):
        s = result["summary"][name]
        assert s["over_step"] == pytest.approx(s["median"] / step["ratio"])


def test_tiny_run_times_both_copies_alternately(drift, tmp_path, short_feedback):
    out = tmp_path / "d.json"
    argv = [
        "--model", TINY, "--input-shape", "2,3,8,8", "--fraction", "0.5", "--align", "8",
        "--pretrain-epochs", "0", "--epochs", "1", "--reps", "2",
        "--lock", str(tmp_path / "lock"), "--out", str(out),
    ]  # fmt: skip
    assert drift.main(argv) == 0
    result = json.loads(out.read_text())
    assert [r["copy"] for r in result["runs"]] == ["untrained", "trained", "trained", "untrained"]
    assert [r["first"] for r in result["runs"]] == ["untrained"] * 2 + ["trained"] * 2
    assert all(0 < r["ratio"] < 2 and r["halfwidth"] >= 0 for r in result["runs"])
    assert result["widths"] == [16, 32]  # half of 32 and of 64, on the 8-channel step
    pairs = result["summary"]["trained_over_untrained"]["per_rep"]
    assert len(pairs) == 2 and all(p > 0 for p in pairs)
    by_order = result["summary"]["trained_over_untrained"]
    assert by_order["untrained_first_median"] == pairs[0]
    assert by_order["trained_first_median"] == pairs[1]
    assert "cpu_flags" in result["host"] and "blocks" in result["timing"]


def test_scatter_is_set_beside_what_the_intervals_claim(drift):
    rows = [
        {"ratio": 0.30, "halfwidth": 0.010},
        {"ratio": 0.31, "halfwidth": 0.020},
        {"ratio": 0.29, "halfwidth": 0.030},
    ]
    got = drift.scatter_and_claim(rows)
    assert got["scatter"] == pytest.approx(0.01 / 0.30)  # sample sd 0.01 over median 0.30
    assert got["halfwidth_median"] == 0.020
    assert got["implied_sd"] == pytest.approx(0.020 / 1.96)
    assert drift.scatter_and_claim(rows[:1])["scatter"] is None


def test_pairs_follow_the_copy_not_the_position(drift):
    # A machine slowing by 1% a measurement: the second of each pair reads 1% higher.
    rows = [
        {"rep": 0, "copy": "untrained", "first": "untrained", "ratio": 0.300},
        {"rep": 0, "copy": "trained", "first": "untrained", "ratio": 0.303},
        {"rep": 1, "copy": "trained", "first": "trained", "ratio": 0.306},
        {"rep": 1, "copy": "untrained", "first": "trained", "ratio": 0.309},
    ]
    got = drift.pair_ratios(rows)
    assert got["per_rep"] == pytest.approx([1.01, 0.306 / 0.309])
    assert got["untrained_first_median"] > 1 > got["trained_first_median"]
    assert drift.pair_ratios(rows[:2])["trained_first_median"] is None
