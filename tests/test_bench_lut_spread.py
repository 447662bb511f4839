"""bench/lut_spread.py: how far separate builds of one table put the same pruned models
apart, read off bench/lut_fidelity.py results; runs of other widths, models or the
same table twice are refused in one line with no output written."""

from __future__ import annotations

import json

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
    out = tmp_path / "s.json"
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
    assert found["models"] == 2 and found["step"] == 16
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
