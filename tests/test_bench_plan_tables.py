"""bench/plan_tables.py: plans solved on a latency table and on a MACs table of the same
grid, priced on the latency table; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import load_bench

SPEC = "halp_trt.models:resnet20"
SHAPE = "2,3,16,16"


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """An analytic table of ResNet-20 whose costs are not MACs: a launch cost per layer
    and a bandwidth term (the defaults), so the two tables disagree."""
    from lut_builder.backends import get_backend
    from lut_builder.build import build_table
    from lut_builder.specs import load_model

    path = tmp_path_factory.mktemp("lut") / "r20.db"
    model = load_model(SPEC).eval()
    build_table(path, model, torch.randn(2, 3, 16, 16), get_backend("analytic"), step=4)
    return path


def test_plans_on_both_tables_priced_on_the_measured_one(table, tmp_path):
    pt = load_bench("plan_tables")
    out = tmp_path / "p.json"
    args = ["--model", SPEC, "--input-shape", SHAPE, "--table", str(table)]
    assert pt.main([*args, "--targets", "0.8x,0.6x", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["target"] for r in res["rows"]] == [0.8, 0.6]
    for row in res["rows"]:
        m, a, eq = row["measured"], row["macs"], row["macs_matched"]
        assert m["latency"] <= row["target"] + 1e-9  # solved on this table: within budget
        assert a["macs_table"] <= row["target"] + 1e-9  # solved on MACs: within its budget
        assert a["macs"] == pytest.approx(a["macs_table"], abs=0.05)  # (rounded counts)
        assert eq["latency"] <= m["latency"] + 1e-9  # matched: no slower than measured
        assert 0 < eq["macs_target"] <= 1
        for p in (m, a, eq):
            assert 0 < p["importance"] <= 1 and 0 < p["macs"] <= 1 and p["widths"]
        # The knapsack keeps the most importance under its own table's budget: at equal
        # latency on this table, the plan solved on it keeps at least as much.
        assert m["importance"] >= eq["importance"] - 1e-9
    assert res["command"].startswith("python bench/plan_tables.py --model")
    assert res["table_backend"] == "analytic"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--targets", "1x"], "not between 0x and 1x"),
        (["--targets", "fast"], "is not a fraction"),
        (["--targets", "0.01x"], "infeasible"),
        (["--table", "/nonexistent.db"], "is not a file"),
        (["--input-shape", "2,3,8"], "input"),
        (["--out", "/nonexistent/dir/p.json"], "is not a directory"),
    ],
)
def test_bad_input_is_one_line(table, tmp_path, capsys, extra, message):
    pt = load_bench("plan_tables")
    out = tmp_path / "p.json"
    opts = {"--model": SPEC, "--input-shape": SHAPE, "--table": str(table), "--out": str(out)}
    opts.update(zip(extra[::2], extra[1::2]))
    assert pt.main([x for kv in opts.items() for x in kv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_a_table_of_another_model_is_refused(table, tmp_path, capsys):
    pt = load_bench("plan_tables")
    out = tmp_path / "p.json"
    # (ResNet-56 would do: its layers are ResNet-20's signatures, which the table covers.)
    spec = "halp_trt.models:mobilenetv2_cifar"
    argv = ["--model", spec, "--input-shape", SHAPE, "--table", str(table)]
    assert pt.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not cover" in err, err
    assert not out.exists()
