"""bench/check_precision.py: a table's stored check beside how precisely its blocks
measured it, read back from bench/lut_fidelity.py results; bad input is one line."""

from __future__ import annotations

import json
import math
import statistics
import sys

import pytest

from tests.conftest import load_bench


@pytest.fixture(scope="module")
def precision():
    yield load_bench("check_precision")
    sys.modules.pop("bench_check_precision", None)


def result(path, table, median, largest, copy_blocks, fidelity=(0.02, 0.05), fitted=3):
    """A lut_fidelity result whose table's check missed by ``median`` / ``largest``, its
    calibration's blocks: the unpruned model at 1 ms in four blocks, ``fitted - 1``
    calibration copies, then ``copy_blocks``."""
    base = [1.0, 1.1, 0.9, 1.0]
    blocks = [base] + [[0.7] * 4] * (fitted - 1) + copy_blocks
    points = [{"speedup_error": largest}] + [{"speedup_error": median}] * (len(copy_blocks) - 1)
    check = {"copies": len(copy_blocks), "speedup_error_median": median,
             "speedup_error_max": largest, "regime": "served", "points": points,
             "within": median <= 0.05 and largest <= 0.10}  # fmt: skip
    path.write_text(
        json.dumps(
            {
                "table": f"/somewhere/{table}",
                "table_check": check,
                "calibration_block_medians_ms": blocks,
                "errors_table_speedup": {"median_abs": fidelity[0], "max_abs": fidelity[1]},
            }
        )  # fmt: skip
    )
    return str(path)


def test_each_table_once_with_its_precision_and_its_fidelity_runs(precision, tmp_path, capsys):
    base = [1.0, 1.1, 0.9, 1.0]
    steady = [[b / 2 for b in base]] * 2  # measured exactly: paired with the base
    moving = [[0.5, 0.6, 0.4, 0.5], [0.5, 0.5, 0.5, 0.5]]
    a1 = result(tmp_path / "a1.json", "a.db", 0.02, 0.04, steady, (0.03, 0.06))
    a2 = result(tmp_path / "a2.json", "a.db", 0.02, 0.04, steady, (0.01, 0.02))
    b = result(tmp_path / "b.json", "b.db", 0.07, 0.12, moving)
    c = result(tmp_path / "c.json", "c.db", 0.20, 0.30, steady)
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"table": "x.db", "errors_table_speedup": {}}))
    out = tmp_path / "out" / "p.json"
    argv = [a1, a2, b, c, str(bare), "--out", str(out)]
    assert precision.main(argv) == 0
    got = json.loads(out.read_text())
    assert got["left_out"] == 1 and [t["table"] for t in got["tables"]] == ["a.db", "b.db", "c.db"]
    a, bt, ct = got["tables"]
    assert a["two_se_median"] == pytest.approx(0.0, abs=1e-12) and a["within_limits"]
    assert [f["median"] for f in a["fidelity_runs"]] == [0.03, 0.01]
    # b's copies: one moves against the base block by block, one does not.
    ses = [
        statistics.stdev(math.log(x / y) for x, y in zip(base, m)) / 2 for m in moving
    ]  # fmt: skip
    assert bt["two_se_per_copy"] == pytest.approx([2 * s for s in ses])
    assert bt["two_se_median"] == pytest.approx(2 * statistics.median(ses))
    # Over both limits by less than the check's scatter (median 0.07 <= 0.05 + 2 se, max
    # 0.12 <= 0.10 + 2 se of its copy); c far beyond.
    assert not bt["within_limits"] and bt["over_within_scatter"]
    assert not ct["within_limits"] and not ct["over_within_scatter"]
    printed = capsys.readouterr().out
    assert "3 tables (1 results without a check left out)" in printed
    assert "(over, within its scatter)" in printed


def test_bad_input_is_one_line_and_writes_nothing(precision, tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"table": "x.db"}))
    out = tmp_path / "p.json"
    for argv, said in (
        ([str(broken)], "is not a bench/lut_fidelity.py result"),
        ([str(tmp_path / "missing.json")], "is not a bench/lut_fidelity.py result"),
        ([str(bare)], "no result carries a check with its blocks"),
        # Blocks of unequal length: the standard errors cannot be computed.
        ([result(tmp_path / "ragged.json", "r.db", 0.02, 0.04, [[0.5, 0.5], [0.5]])],
         "blocks must be 3 lists of equal length"),
    ):  # fmt: skip
        assert precision.main([*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and said in err, err
        assert not out.exists()
