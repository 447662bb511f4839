"""bench/plan_pricing.py: a pareto result's plans priced again on tables; the measured
table's own prediction comes back as the bench recorded it; bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_bench as load

ROOT = Path(__file__).resolve().parents[1]
TINY = f"{ROOT / 'tests/test_bench_pareto.py'}:tiny_net"


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """A tiny pareto run solved on the MACs table (so that table is its 'measured' one),
    without the measured-latency feedback: the plans as the table prices them, which is
    what the pricing reads (with it: a minute of timing a tiny model on two cores)."""
    tmp = tmp_path_factory.mktemp("pricing")
    pareto = load("pareto")
    out = tmp / "p.json"
    argv = [
        "--model", TINY, "--input-shape", "2,3,8,8", "--targets", "0.6x,0.4x", "--seeds", "0",
        "--methods", "halp-taylor-abs,uniform", "--epochs", "1", "--pretrain-epochs", "0",
        "--step", "8", "--rounds", "3", "--min-keep", "0", "--table", str(tmp / "t.db"),
        "--table-backend", "macs", "--lock", str(tmp / "lock"), "--out", str(out), "--no-feedback",
    ]  # fmt: skip
    assert pareto.main(argv) == 0
    return out, tmp / "t.db"


def test_prices_every_plan_as_the_bench_did(result, tmp_path, capsys):
    out, table = result
    pricing = load("plan_pricing")
    dest = tmp_path / "sub" / "pricing.json"
    argv = [str(out), "--table", f"own={table}", "--macs", "macs", "--out", str(dest)]
    assert pricing.main(argv) == 0
    priced = json.loads(dest.read_text())
    runs = {(r["method"], r["target"]): r for r in json.loads(out.read_text())["runs"]}
    assert len(priced["runs"]) == sum(1 for r in runs.values() if "measured_ratio" in r) >= 3
    for r in priced["runs"]:
        recorded = runs[(r["method"], r["target"])]["predicted_ratio"]
        # the run's own table and the MACs table rebuilt here agree with the bench
        assert r["predicted_ratio"]["own"] == pytest.approx(recorded, rel=1e-9)
        assert r["predicted_ratio"]["macs"] == pytest.approx(recorded, rel=1e-9)
        assert 0 < r["predicted_ratio"]["own"] < 1
    cell = priced["summary"]["0.6x"]["halp-taylor-abs"]["own"]
    assert cell["n"] == 1 and cell["min"] == cell["mean"] == cell["max"] > 0
    assert "halp-taylor-abs" in capsys.readouterr().out


def test_several_results_of_one_model_priced_together(result, tmp_path, capsys):
    out, table = result
    pricing = load("plan_pricing")
    again = tmp_path / "again.json"  # the same runs under another name: another seed's file
    again.write_text(out.read_text())
    dest = tmp_path / "both.json"
    argv = [str(out), str(again), "--table", f"own={table}", "--macs", "macs", "--out", str(dest)]
    assert pricing.main(argv) == 0
    priced = json.loads(dest.read_text())
    assert priced["results"] == [out.name, "again.json"]
    one = [r for r in priced["runs"] if r["result"] == out.name]
    two = [r for r in priced["runs"] if r["result"] == "again.json"]
    assert len(one) == len(two) >= 3
    for a, b in zip(one, two, strict=True):
        assert (a["method"], a["target"]) == (b["method"], b["target"])
        assert a["predicted_ratio"] == b["predicted_ratio"]
    cell = priced["summary"]["0.6x"]["halp-taylor-abs"]["own"]
    assert cell["n"] == 2  # summarised over both files' runs
    assert f"results {out}, {again}" in capsys.readouterr().out


def test_results_of_another_model_or_grid_are_refused(result, tmp_path, capsys):
    out, table = result
    pricing = load("plan_pricing")
    shape = tmp_path / "shape.json"
    shape.write_text(json.dumps({**json.loads(out.read_text()), "input_shape": [2, 3, 16, 16]}))
    dest = tmp_path / "x.json"
    assert pricing.main([str(out), str(shape), "--macs", "m", "--out", str(dest)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shape.json has input_shape [2, 3, 16, 16]" in err[0], err
    recorded = json.loads(out.read_text())
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({**recorded, "table": {**recorded["table"], "step": 16}}))
    # another grid is no matter to a measured table, one MACs table cannot price both
    assert pricing.main([str(out), str(grid), "--table", f"own={table}"]) == 0
    capsys.readouterr()
    assert pricing.main([str(out), str(grid), "--macs", "m", "--out", str(dest)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "grid.json was solved on grid step 16" in err[0], err
    assert pricing.main([str(out), str(out), "--macs", "m", "--out", str(dest)]) == 2
    assert "each result once" in capsys.readouterr().err
    assert not dest.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "give at least one --table"),
        (["--table", "nopath"], "must be NAME=PATH"),
        (["--table", "a=/nonexistent/t.db"], "nonexistent"),
    ],
)
def test_bad_input_is_one_line(result, tmp_path, capsys, extra, message):
    out, _ = result
    pricing = load("plan_pricing")
    dest = tmp_path / "x.json"
    assert pricing.main([str(out), *extra, "--out", str(dest)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not dest.exists()


def test_not_a_result(tmp_path, capsys):
    pricing = load("plan_pricing")
    bad = tmp_path / "r.json"
    bad.write_text("{}")
    assert pricing.main([str(bad), "--macs", "m"]) == 2
    assert "not a bench/pareto.py result" in capsys.readouterr().err


def test_lines_prices_a_table_as_its_lines_fill_it(result, tmp_path):
    from lut_builder.table import LatencyTable
    from tests.lut_builder.table.common import SIG, cost, drifted_table

    pricing = load("plan_pricing")
    table = drifted_table(tmp_path / "t.lut")  # the line points at 96 channels 25% low
    with LatencyTable.open(table.path) as probed, LatencyTable.open(table.path) as lines:
        assert probed.lookup(SIG, 96, 96) == pytest.approx(cost(96, 96), rel=0.02)
        assert lines.use_lines().lookup(SIG, 96, 96) < 0.6 * cost(96, 96)  # 0.75 twice
    # On the bench's result: priced both ways under their names (an analytic table's
    # lines are exact, so its probes keep them and the two agree).
    out, macs = result
    dest = tmp_path / "pricing.json"
    argv = [str(out), "--table", f"own={macs}", "--lines", f"lines={macs}", "--out", str(dest)]
    assert pricing.main(argv) == 0
    priced = json.loads(dest.read_text())
    assert priced["tables"] == {"own": "t.db", "lines": "t.db (filled with its lines)"}
    for r in priced["runs"]:
        assert r["predicted_ratio"]["lines"] == pytest.approx(r["predicted_ratio"]["own"])
