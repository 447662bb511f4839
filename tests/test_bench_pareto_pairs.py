"""bench/pareto_pairs.py: two methods paired on every dense model both ran on, across
runs; hand-made results come out as computed by hand; models of other dense models,
settings or failed runs do not pair; bad input is one line, exit code 2, no output."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_bench


def run(seed, method, acc, ratio=0.5, target="0.5x", status="ok"):
    return {"seed": seed, "target": target, "method": method, "status": status,
            "measured_ratio": ratio, "val_acc": acc}  # fmt: skip


def result(runs, dense, epochs=6, shape=(8, 3, 16, 16), min_keep=None):
    settings = {"model": "m", "data": "digits", "pretrain_epochs": 10, "epochs": epochs}
    if min_keep is not None:
        settings["min_keep"] = min_keep
    return {
        "benchmark": "pareto",
        "model": "m",
        "data": "digits",
        "input_shape": list(shape),
        "settings": settings,
        "dense": {str(s): {"val_acc": a} for s, a in dense.items()},
        "runs": runs,
    }


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_pairs_join_runs_on_one_dense_model_and_nothing_else(tmp_path, capsys):
    pairs = load_bench("pareto_pairs")
    one = result(
        [run(0, "a", 0.90, 0.49), run(0, "b", 0.88, 0.51), run(1, "a", 0.80), run(1, "b", 0.81),
         run(1, "a", 0.70, target="0.3x")],  # no b at 0.3x: no pair
        {0: 0.85, 1: 0.84},
    )  # fmt: skip
    # Seed 0 again on the same dense model: a's two runs are averaged (0.90, 0.94); a run
    # set aside after the fact (a defect's) is not.
    again = result([run(0, "a", 0.94), run(0, "a", 0.10, status="excluded")], {0: 0.85})
    # Seed 2: b failed. Seed 0 on another dense model (another machine): its own key.
    other = result(
        [run(2, "a", 0.5), run(2, "b", 0.5, status="failed"),
         run(0, "a", 0.60), run(0, "b", 0.50)],
        {2: 0.8, 0: 0.70},
    )  # fmt: skip
    # Another setting (epochs): its own line.
    longer = result([run(0, "a", 0.95), run(0, "b", 0.97)], {0: 0.85}, epochs=12)
    # The same dense model with halp-trt's floor lowered: its own line too, not averaged
    # into the runs at the default floor (a's 0.50 would move seed 0's a).
    floor = result([run(0, "a", 0.50), run(0, "b", 0.49)], {0: 0.85}, min_keep=0.1)
    paths = [
        write(tmp_path, f"pareto_{i}.json", r)
        for i, r in enumerate((one, again, other, longer, floor))
    ]
    # Files that are not bench/pareto.py results are read past.
    paths.append(write(tmp_path, "pareto_x_swapped.json", {"benchmark": "pareto_swap", "runs": []}))
    got = pairs.pairs(pairs.collect(paths), "a", "b")
    by = {
        (s["setting"]["epochs"], s["setting"]["min_keep"], s["setting"]["target"]): s
        for s in got["settings"]
    }
    assert set(by) == {(6, None, "0.5x"), (12, None, "0.5x"), (6, 0.1, "0.5x")}
    assert by[(6, 0.1, "0.5x")]["pairs"] == 1
    assert by[(6, 0.1, "0.5x")]["a_minus_b_mean"] == pytest.approx(0.01)
    by = {(e, t): s for (e, f, t), s in by.items() if f is None}
    six = by[(6, "0.5x")]
    # seed 0 (dense 0.85): 0.92 - 0.88; seed 1: 0.80 - 0.81; seed 0 (dense 0.70): 0.60 - 0.50
    assert six["pairs"] == 3 and six["ahead"] == 2
    assert six["a_minus_b_mean"] == pytest.approx((0.04 - 0.01 + 0.10) / 3)
    assert six["ci"][0] < six["a_minus_b_mean"] < six["ci"][1]
    assert by[(12, "0.5x")]["pairs"] == 1 and by[(12, "0.5x")]["ci"] is None
    assert got["all"]["pairs"] == 5
    assert got["all"]["a_minus_b_mean"] == pytest.approx((0.04 - 0.01 + 0.10 - 0.02 + 0.01) / 5)

    out = tmp_path / "pairs.json"
    argv = ["a", "b", "--results", *map(str, paths), "--out", str(out)]
    assert pairs.main(argv) == 0
    text = capsys.readouterr().out
    assert "all pairs" in text and "+2.40" in text and "e10+6 floor 0.1 0.5x" in text
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "pareto_pairs" and saved["all"]["pairs"] == 5


def test_a_halp_run_at_another_floor_pairs_under_its_own_name(tmp_path):
    """A halp-trt run that recorded a floor other than 0.3 (the pruner's default where it
    follows the criterion, its result setting none) is ``M@floor0.1``: on the same dense
    model as the same method at 0.3 it is not averaged into it, and pairs by that name."""
    pairs = load_bench("pareto_pairs")
    at03 = result([{**run(0, "halp-x", 0.90), "min_keep": 0.3}, run(0, "b", 0.88)], {0: 0.85})
    at01 = result([{**run(0, "halp-x", 0.50), "min_keep": 0.1}, run(0, "b", 0.49)], {0: 0.85})
    paths = [write(tmp_path, f"pareto_{i}.json", r) for i, r in enumerate((at03, at01))]
    got = pairs.pairs(pairs.collect(paths), "halp-x", "b")
    assert got["all"]["pairs"] == 1
    assert got["all"]["a_minus_b_mean"] == pytest.approx(0.90 - (0.88 + 0.49) / 2)
    low = pairs.pairs(pairs.collect(paths), "halp-x@floor0.1", "b")
    assert low["all"]["pairs"] == 1
    assert low["all"]["a_minus_b_mean"] == pytest.approx(0.50 - (0.88 + 0.49) / 2)


def test_targets_and_count_as_choose_what_pairs(tmp_path):
    """``--targets`` keeps only those targets; ``--count-as M:C=N`` counts M's runs that
    recorded criterion C as runs of N (averaged with N's own on one dense model), and
    leaves M's runs of another criterion as M's."""
    pairs = load_bench("pareto_pairs")
    auto_mean = {**run(0, "auto", 0.92, target="0.7x"), "importance": "mean"}
    auto_other = {**run(1, "auto", 0.50, target="0.7x"), "importance": "sum"}
    one = result(
        [run(0, "mean", 0.90, target="0.7x"), auto_mean, run(0, "u", 0.89, target="0.7x"),
         auto_other, run(1, "u", 0.80, target="0.7x"), run(1, "mean", 0.84, target="0.7x"),
         run(0, "mean", 0.70, target="0.3x"), run(0, "u", 0.60, target="0.3x")],
        {0: 0.85, 1: 0.84},
    )  # fmt: skip
    paths = [write(tmp_path, "pareto_0.json", one)]
    got = pairs.pairs(pairs.collect(paths, {"0.7x"}, {("auto", "mean"): "mean"}), "mean", "u")
    # seed 0: (0.90 + 0.92) / 2 - 0.89; seed 1: 0.84 - 0.80 (auto's other criterion stays
    # auto's); 0.3x left out
    assert got["all"]["pairs"] == 2
    assert got["all"]["a_minus_b_mean"] == pytest.approx((0.02 + 0.04) / 2)
    assert [s["setting"]["target"] for s in got["settings"]] == ["0.7x"]
    every = pairs.pairs(pairs.collect(paths), "mean", "u")
    assert every["all"]["pairs"] == 3  # without either option: both targets, no alias
    args = pairs.parse_args(["a", "b", "--targets", "0.6x,0.7x", "--count-as", "x:c=y"])
    assert args.targets == {"0.6x", "0.7x"} and dict(args.count_as) == {("x", "c"): "y"}


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    pairs = load_bench("pareto_pairs")
    path = write(tmp_path, "pareto_0.json", result([run(0, "a", 0.9)], {0: 0.8}))
    out = tmp_path / "pairs.json"
    for argv in (
        ["a", "b", "--results", str(path), "--out", str(out)],  # no pair
        ["a", "b", "--results", str(tmp_path / "missing.json"), "--out", str(out)],
    ):
        assert pairs.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("pareto_pairs.py: error: ") and "\n" not in err
        assert not out.exists()
    for argv in (
        ["a", "b", "--results", str(path), "--targets", "0.7", "--out", str(out)],
        ["a", "b", "--results", str(path), "--count-as", "a=b", "--out", str(out)],
    ):
        with pytest.raises(SystemExit) as e:
            pairs.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("pareto_pairs.py: error: ") and "\n" not in err
        assert not out.exists()


def test_the_default_reads_the_records_results_not_the_derived_files():
    pairs = load_bench("pareto_pairs")
    names = [p.name for p in pairs.default_results()]
    assert names and all(n.startswith("pareto_") for n in names)
    assert not any(
        n.startswith(("pareto_pool", "pareto_pairs")) or n.endswith("_swapped.json") for n in names
    )
