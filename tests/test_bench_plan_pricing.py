"""bench/plan_pricing.py: a pareto result's plans priced again on tables; the measured
table's own prediction comes back as the bench recorded it; bad input is one line."""

from __future__ import annotations

import json
import shlex
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


def test_the_recorded_command_pastes_back_as_it_was_typed(result, tmp_path):
    """An argument with spaces (a note, a path) is quoted in the recorded command, so
    the shell splits it back into the same arguments; a plain one stays as typed."""
    out, table = result
    pricing = load("plan_pricing")
    dest = tmp_path / "with space" / "pricing.json"
    argv = [str(out), "--macs", "macs", "--note", "two tables, one build", "--out", str(dest)]
    assert pricing.main(argv) == 0
    command = json.loads(dest.read_text())["command"]
    assert shlex.split(command) == ["python", "bench/plan_pricing.py", *argv]
    assert "--macs macs" in command  # nothing quoted that needs no quotes


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


def priced_run(seed, method, measured, own, macs, result="r.json", target="0.7x"):
    return {"result": result, "method": method, "target": target, "seed": seed,
            "measured_ratio": measured, "predicted_ratio": {"own": own, "macs": macs}}  # fmt: skip


def test_a_pair_of_methods_priced_seed_by_seed():
    pricing = load("plan_pricing")
    runs = [
        # seed 0: B 0.02 slower, "own" says 0.01 slower, "macs" 0.01 faster
        priced_run(0, "a", 0.70, 0.70, 0.66), priced_run(0, "b", 0.72, 0.71, 0.65),
        # seed 1: B 0.01 faster, "own" 0.01 faster, "macs" 0.03 faster
        priced_run(1, "a", 0.71, 0.70, 0.66), priced_run(1, "b", 0.70, 0.69, 0.63),
        # seed 2: only A (left out); seed 3: another method (ignored)
        priced_run(2, "a", 0.69, 0.70, 0.66), priced_run(3, "c", 0.5, 0.5, 0.5),
    ]  # fmt: skip
    (cell,) = pricing.pairs(runs, ("a", "b"), ["own", "macs"]).values()
    assert cell["methods"] == ["a", "b"] and cell["seeds"] == [0, 1]
    assert cell["measured_mean"] == pytest.approx(0.005)
    own, macs = cell["tables"]["own"], cell["tables"]["macs"]
    assert own["predicted_mean"] == pytest.approx(0.0)
    assert own["error_mean"] == pytest.approx(-0.005) and own["sign_right"] == 2
    assert own["error_abs_median"] == pytest.approx(0.005)
    assert macs["predicted_mean"] == pytest.approx(-0.02)
    assert macs["error_mean"] == pytest.approx(-0.025) and macs["sign_right"] == 1
    lo, hi = macs["error_ci"]
    assert lo < -0.025 < hi
    with pytest.raises(pricing.BenchError, match="no seed has a priced run of both a and c"):
        pricing.pairs(runs, ("a", "c"), ["own"])


def test_pair_flag_writes_the_pairs_and_refuses_a_bad_pair(result, tmp_path, capsys):
    out, table = result
    pricing = load("plan_pricing")
    dest = tmp_path / "pair.json"
    argv = [str(out), "--table", f"own={table}", "--pair", "uniform,halp-taylor-abs"]
    assert pricing.main([*argv, "--out", str(dest)]) == 0
    pairs = json.loads(dest.read_text())["pairs"]
    assert list(pairs) == ["0.6x", "0.4x"]
    runs = {(r["method"], r["target"]): r for r in json.loads(out.read_text())["runs"]}
    for target, cell in pairs.items():
        assert cell["seeds"] == [0]
        gap = (
            runs[("halp-taylor-abs", target)]["measured_ratio"]
            - runs[("uniform", target)]["measured_ratio"]
        )
        assert cell["measured_mean"] == pytest.approx(gap)
        assert cell["tables"]["own"]["error_ci"] is None  # one seed: no interval
    assert "halp-taylor-abs minus uniform" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    assert pricing.main([*argv[:3], "--pair", "uniform", "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--pair 'uniform': give two different methods, A,B" in err[0]
    assert not bad.exists()
    again = tmp_path / "again.json"  # the same runs under another name: each seed twice
    again.write_text(out.read_text())
    assert pricing.main([str(out), str(again), *argv[1:], "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"is in both {out.name} and again.json" in err[0], err
    assert not bad.exists()
