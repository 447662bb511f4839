"""bench/slim_check.py: slim, masked and nudged fine-tunings of one plan, recorded side by
side; bad input is one line and no output."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TWO_CONV_BN
from tests.conftest import load_bench as load


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    import torch

    from tests.conftest import two_conv_bn_net

    path = tmp_path_factory.mktemp("slim") / "t.db"
    torch.manual_seed(0)
    load("pareto").macs_table(path, two_conv_bn_net(), torch.randn(2, 3, 8, 8), 8, 8).close()
    return path


def test_three_fine_tunings_of_one_plan(table, tmp_path, capsys):
    check = load("slim_check")
    out = tmp_path / "slim.json"
    argv = [
        "--model", TWO_CONV_BN, "--input-shape", "2,3,8,8", "--table", str(table),
        "--targets", "0.6x", "--seeds", "0", "--pretrain-epochs", "0", "--epochs", "1",
        "--out", str(out),
    ]  # fmt: skip
    assert check.main(argv) == 0
    result = json.loads(out.read_text())
    (row,) = result["runs"]
    assert row["same_plan"] is True
    assert row["slim"]["slimmed_at"] is not None
    assert row["masked"]["slimmed_at"] is None and row["nudged"]["slimmed_at"] is None
    for name in ("slim", "masked", "nudged"):
        assert 0 <= row[name]["val_acc"] <= 1 and row[name]["seconds"] > 0
    # one plan, the same function: the fine-tunings stay close on this tiny model
    assert 0 <= row["gap_slim_masked"] < 1e-2 and 0 <= row["gap_nudged_masked"] < 1e-2
    s = result["summary"]
    assert len(s["slim_minus_masked_points"]) == len(s["nudged_minus_masked_points"]) == 1
    assert result["table"] == "t.db" and "slim_minus_masked" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--nudge", "0"], "--nudge must lie between 0 and 0.01"),
        (["--seeds", "a"], "--seeds 'a': comma-separated integers"),
        (["--targets", "1.2x"], "1.2x"),
        (["--epochs", "0"], "--epochs must be at least 1"),
    ],
)
def test_bad_input_is_one_line(table, tmp_path, capsys, extra, message):
    check = load("slim_check")
    out = tmp_path / "x.json"
    argv = [
        "--model", TWO_CONV_BN, "--input-shape", "2,3,8,8", "--table", str(table),
        "--out", str(out), *extra,
    ]  # fmt: skip
    assert check.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()
