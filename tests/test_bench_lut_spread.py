"""bench/lut_spread.py: how far separate builds of one table put the same pruned models
apart, read off bench/lut_fidelity.py results; runs of other widths, models or the
same table twice are refused in one line with no output written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import load_bench

ASSIGN = [{"1": 16, "2": 32}, {"1": 32, "2": 16}]


def run(table, pred, meas, base=(2.0, 4.0), **over):
    """A lut_fidelity result: the unpruned model predicted and measured at ``base`` ms,
    two pruned models at ``pred`` / ``meas`` ms."""
    rows = [{"model": "unpruned", "sample": False, "pred_table_ms": base[0],
             "measured_ms": base[1]}]  # fmt: skip
    rows += [
        {"model": f"pruned_{i:02d}", "sample": True, "pred_table_ms": p, "measured_ms": m}
        for i, (p, m) in enumerate(zip(pred, meas, strict=True))
    ]
    out = {"model": "m:f", "input_shape": [8, 3, 16, 16], "backend": "onnxruntime",
           "precision": "fp32", "step": 16, "seed": 0, "assignments": ASSIGN,
           "table": table, "build": {"points": 10}, "rows": rows}  # fmt: skip
    out.update(over)
    return out


def test_spread_of_predicted_and_measured_ratios(tmp_path):
    spread = load_bench("lut_spread")
    # build A predicts 0.5 and 0.25 of the unpruned model, build B 0.55 and 0.25 (its own
    # unpruned at 2.2 ms: a level shift alone moves no ratio); measured 0.5/0.25, 0.5/0.3.
    a = run("a.sqlite", [1.0, 0.5], [2.0, 1.0])
    b = run("b.sqlite", [1.21, 0.55], [1.0, 0.6], base=(2.2, 2.0))
    paths = []
    for name, r in (("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text(json.dumps(r))
        paths.append(str(tmp_path / name))
    out = tmp_path / "new" / "s.json"  # its directory made, as --out's check promises
    assert spread.main([*paths, "--out", str(out)]) == 0
    found = json.loads(out.read_text())
    r0, r1 = found["rows"]
    assert r0["predicted_ratio"] == pytest.approx([0.5, 0.55])
    assert r0["predicted_spread"] == pytest.approx(0.1)
    assert r1["predicted_spread"] == pytest.approx(0.0)
    assert r0["measured_spread"] == pytest.approx(0.0)
    assert r1["measured_spread"] == pytest.approx(0.2)
    assert found["predicted_spread"] == pytest.approx({"median": 0.05, "max": 0.1})
    # each build against its own run: A exact; B 0.55/0.5 and 0.25/0.3
    assert found["ratio_errors"][0] == pytest.approx({"median": 0.0, "max": 0.0})
    assert found["ratio_errors"][1]["max"] == pytest.approx(1 / 6)
    assert found["ratio_errors"][1]["median"] == pytest.approx((0.1 + 1 / 6) / 2)
    # against the runs' mean (geometric): 0.5 and sqrt(0.25 * 0.3) measured
    mean1 = (0.25 * 0.3) ** 0.5
    assert found["ratio_errors_against_mean"][0] == pytest.approx(
        {"median": (1 - 0.25 / mean1) / 2, "max": 1 - 0.25 / mean1}
    )
    assert found["ratio_errors_against_mean"][1]["max"] == pytest.approx(0.1)
    assert found["models"] == 2 and found["step"] == 16 and found["same_table"] is False
    assert found["command"].startswith("python bench/lut_spread.py ")


@pytest.mark.parametrize(
    "second, says",
    [
        (run("b.sqlite", [1.0, 0.5], [2.0, 1.0], assignments=ASSIGN[::-1]), "random widths"),
        (run("b.sqlite", [1.0, 0.5], [2.0, 1.0], step=8), "differ in step"),
        (run("a.sqlite", [1.0, 0.5], [2.0, 1.0]), "in two runs"),
        ({"rows": []}, "not a bench/lut_fidelity.py result"),
        (run("b.sqlite", [1.0, 0.0], [2.0, 1.0]), "not positive"),
        ({**run("b.sqlite", [1.0, 0.5], [2.0, 1.0]), "rows": [{"model": "unpruned"}]}, "'pred"),
        (None, "at least two"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, second, says):
    spread = load_bench("lut_spread")
    paths = []
    for name, r in (("a.json", run("a.sqlite", [1.0, 0.5], [2.0, 1.0])), ("b.json", second)):
        if r is not None:
            (tmp_path / name).write_text(json.dumps(r))
            paths.append(str(tmp_path / name))
    out = tmp_path / "s.json"
    assert spread.main([*paths, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err
    assert not out.exists()


def test_runs_of_one_table_read_the_measurements_scatter(tmp_path, capsys):
    spread = load_bench("lut_spread")
    # One table, three runs: its predictions are the same, the measured ratios of the first
    # model scatter around the prediction (0.45, 0.5, 0.55 against 0.5), so each run errs by
    # up to 11% and the mean of the runs by under 0.5%.
    paths = []
    for k, m in enumerate((0.9, 1.0, 1.1)):
        path = tmp_path / f"r{k}.json"
        path.write_text(json.dumps(run("t.sqlite", [1.0, 0.5], [2 * m, 1.0])))
        paths.append(str(path))
    out = tmp_path / "s.json"
    assert spread.main(["--same-table", *paths, "--out", str(out)]) == 0
    found = json.loads(out.read_text())
    assert found["same_table"] is True and found["predicted_spread"]["max"] == 0.0
    assert [e["max"] for e in found["ratio_errors"]] == pytest.approx([1 / 9, 0.0, 1 / 11])
    mean = (0.45 * 0.5 * 0.55) ** (1 / 3)
    assert found["ratio_errors_against_mean"][0]["max"] == pytest.approx(abs(0.5 / mean - 1))
    assert found["ratio_errors_against_mean"][0]["max"] < 0.005
    assert "3 runs of one table" in capsys.readouterr().out
    assert found["ratio_errors_against_mean_lines"] is None  # no lines' fill priced
    # pruned_01 measured 0.25 in every run, pruned_00 0.45 / 0.5 / 0.55: each run's shift is
    # half its log deviation, and the scatter beside it the other half.
    for k, m in enumerate((0.45, 0.5, 0.55)):
        dev = math.log(m / mean)
        assert found["measured_shift"][k] == pytest.approx(math.exp(dev / 2) - 1)
        assert found["measured_scatter_after_shift"][k] == pytest.approx(abs(dev) / 2)
    # The same table under another name (a copy) is the same table; a run whose
    # predictions differ (another build, or the table recalibrated) is not.
    copy = tmp_path / "c.json"
    copy.write_text(json.dumps(run("copy.sqlite", [1.0, 0.5], [2.0, 1.0])))
    assert spread.main(["--same-table", paths[0], str(copy)]) == 0
    out.unlink()
    capsys.readouterr()
    other = tmp_path / "o.json"
    other.write_text(json.dumps(run("t.sqlite", [1.0, 0.55], [2.0, 1.0])))
    assert spread.main(["--same-table", paths[0], str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "o.json predicts pruned_01 otherwise" in err, err
    assert not out.exists()


def test_the_lines_fill_against_the_runs_mean(tmp_path):
    spread = load_bench("lut_spread")
    # Two runs of a table with probes, each also priced filled with its lines: the lines
    # predict the first model at 0.55 of the unpruned one, the runs measured 0.5 both times.
    paths = []
    for k in range(2):
        r = run("t.sqlite", [1.0, 0.5], [2.0, 1.0])
        for row, lines in zip(r["rows"], (2.0, 1.1, 0.5)):
            row["pred_table_lines_ms"] = lines
        path = tmp_path / f"r{k}.json"
        path.write_text(json.dumps(r))
        paths.append(str(path))
    out = tmp_path / "s.json"
    assert spread.main(["--same-table", *paths, "--out", str(out)]) == 0
    found = json.loads(out.read_text())
    assert found["ratio_errors_against_mean"][0]["max"] == pytest.approx(0.0)
    assert found["ratio_errors_against_mean_lines"] == [pytest.approx({"median": 0.05, "max": 0.1})]
    # A run made before the lines' fill was priced stands in the mean all the same: here
    # it measured the first model at 0.6: the mean of the three is (0.6 * 0.5 * 0.5) ** (1/3).
    older = run("t.sqlite", [1.0, 0.5], [2.4, 1.0])
    (tmp_path / "old.json").write_text(json.dumps(older))
    assert spread.main(["--same-table", str(tmp_path / "old.json"), *paths, "--out", str(out)]) == 0
    found = json.loads(out.read_text())
    mean = (0.6 * 0.5 * 0.5) ** (1 / 3)
    assert found["ratio_errors_against_mean_lines"][0]["max"] == pytest.approx(0.55 / mean - 1)
    # Lines' fills that price the same models otherwise are not one table's.
    odd = json.loads(Path(paths[1]).read_text())
    odd["rows"][1]["pred_table_lines_ms"] = 1.2
    (tmp_path / "odd.json").write_text(json.dumps(odd))
    assert spread.main(["--same-table", paths[0], str(tmp_path / "odd.json")]) == 2
