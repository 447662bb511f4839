"""bench/plan_agreement.py: two methods' plans of a pareto result compared group by group;
the figures of a hand-made result come out as counted by hand; bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

from tests.conftest import load_bench as load


def four_conv_net(num_classes: int = 10) -> nn.Module:
    """Four plain convolutions (16, 32, 48, 64 channels): four prunable groups."""
    layers: list[nn.Module] = []
    c_in = 3
    for c in (16, 32, 48, 64):
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


FOUR = f"{__file__}:four_conv_net"

#: (method, seed) -> widths of the four convs, at target 0.5x.
PLANS = {
    ("a", 0): [8, 16, 24, 64],
    ("b", 0): [8, 16, 40, 48],  # 32 channels apart from a's: 16 in each of two groups
    ("a", 1): [8, 24, 24, 64],  # 8 apart from a's seed 0
    ("b", 1): [8, 24, 24, 64],  # the same as a's
}


@pytest.fixture()
def setup(tmp_path):
    """A result of the four-conv net with the plans above, and a table of it (the MACs
    table itself: the 'measured' table then agrees with the MACs one everywhere)."""
    import torch

    pareto = load("pareto")
    torch.manual_seed(0)
    model = four_conv_net().eval()
    table = tmp_path / "t.db"
    pareto.macs_table(table, model, torch.randn(2, 3, 8, 8), 8, 8).close()
    runs = [
        {
            "method": m,
            "seed": s,
            "target": "0.5x",
            "status": "ok",
            "widths": w,
            "val_acc": 0.5 + 0.1 * s + (0.01 if m == "b" else 0),
            "measured_ratio": 0.5,
        }
        for (m, s), w in PLANS.items()
    ]
    runs.append({"method": "a", "seed": 2, "target": "0.5x", "status": "failed"})
    result = {
        "model": FOUR,
        "input_shape": [2, 3, 8, 8],
        "table": {"step": 8, "alignment": 8},
        "settings": {"min_keep": 0.5},
        "runs": runs,
    }
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    return path, table


def test_counts_what_the_plans_differ_in(setup, tmp_path, capsys):
    result, table = setup
    agreement = load("plan_agreement")
    out = tmp_path / "sub" / "agreement.json"
    argv = [str(result), "--table", str(table), "--methods", "a,b", "--out", str(out)]
    assert agreement.main(argv) == 0
    found = json.loads(out.read_text())
    assert found["groups"] == 4 and found["channels"] == 16 + 32 + 48 + 64
    assert found["min_keep"] == 0.5  # the result's
    # half of each group, rounded up to whole bundles of 8
    assert sorted(found["floors"].values()) == [8, 16, 24, 32]
    rows = {r["seed"]: r for r in found["targets"]["0.5x"]["seeds"]}
    assert rows[0]["differ"]["channels"] == 32 and rows[0]["differ"]["groups"] == 2
    kept_a, kept_b = sum(PLANS[("a", 0)]), sum(PLANS[("b", 0)])
    assert rows[0]["differ"]["fraction"] == pytest.approx(32 / ((kept_a + kept_b) / 2))
    assert rows[1]["differ"] == {"channels": 0, "fraction": 0.0, "groups": 0}
    # a's seed 0 has three groups at the floor (8, 16, 24), b's two (8, 16); both: two
    assert rows[0]["floor"] == {"a": 3, "b": 2, "both": 2}
    assert rows[0]["val_acc"] == {"a": 0.5, "b": pytest.approx(0.51)}
    between = found["targets"]["0.5x"]["between_seeds_a"]
    assert [p["channels"] for p in between] == [8]  # the failed seed 2 is left out
    assert found["targets"]["0.5x"]["trade_by_group"] == {}  # no group differs on 3 seeds
    # one table on both sides: the same ranking, the same cost per MAC everywhere
    dense = found["costs_at_dense"]
    assert dense["groups"] == 4 and dense["spearman"] == pytest.approx(1.0)
    spread = dense["ms_per_mac_rel"]
    assert spread["min"] == pytest.approx(1.0) and spread["max"] == pytest.approx(1.0)
    each = dense["ms_per_mac_rel_by_group"]
    assert len(each) == 4 and all(v == pytest.approx(1.0) for v in each.values())
    printed = capsys.readouterr().out
    assert "A = a, B = b" in printed and "between its seeds" in printed


def test_the_floor_the_runs_recorded_where_the_result_set_none(setup, tmp_path, capsys):
    """No floor in the settings: the one the two methods' runs recorded (the pruner's
    default, which follows the criterion), else the named criteria's 0.3; runs of the
    two at different floors are refused, naming them."""
    result, table = setup
    agreement = load("plan_agreement")
    data = json.loads(result.read_text())
    data["settings"] = {}
    for floors, expect in (((0.25, 0.25), 0.25), ((None, None), 0.3)):
        for r in data["runs"]:
            r["min_keep"] = floors[r["method"] == "b"]
        path = tmp_path / "r.json"
        path.write_text(json.dumps(data))
        out = tmp_path / "a.json"
        argv = [str(path), "--table", str(table), "--methods", "a,b", "--out", str(out)]
        assert agreement.main(argv) == 0
        assert json.loads(out.read_text())["min_keep"] == expect
        out.unlink()
    for r in data["runs"]:
        r["min_keep"] = 0.1 if r["method"] == "a" else 0.3
    path.write_text(json.dumps(data))
    assert agreement.main([str(path), "--table", str(table), "--methods", "a,b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(
        "the runs of a and b were pruned at floors 0.1, 0.3: give one (--min-keep)"
    )


def test_ranks_and_spearman():
    agreement = load("plan_agreement")
    assert agreement.ranks([3.0, 1.0, 2.0, 2.0]) == [4.0, 1.0, 2.5, 2.5]
    assert agreement.spearman([1, 2, 3, 4], [10, 20, 25, 90]) == pytest.approx(1.0)
    assert agreement.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert agreement.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert agreement.spearman([1, 2, 3], [5, 5, 5]) is None
    assert agreement.spearman([1, 2], [1, 2]) is None


def test_trade_by_group_sets_each_group_beside_the_accuracy_gap():
    """Groups the plans differ in on three seeds or more, B's extra channels on the mean,
    and their rank correlation with B's minus A's points over the seeds."""
    agreement = load("plan_agreement")

    def row(a: dict, b: dict, acc_a: float, acc_b: float) -> dict:
        return {"keep": {"A": a, "B": b}, "val_acc": {"A": acc_a, "B": acc_b}}

    rows = [  # group 1: B keeps more where it scores higher; group 2 differs on two seeds
        row({1: 64, 2: 32, 3: 16}, {1: 80, 2: 32, 3: 16}, 0.80, 0.81),
        row({1: 64, 2: 32, 3: 16}, {1: 96, 2: 16, 3: 16}, 0.80, 0.82),
        row({1: 64, 2: 32, 3: 16}, {1: 64, 2: 32, 3: 16}, 0.80, 0.79),
        row({1: 64, 2: 32, 3: 16}, {1: 112, 2: 16, 3: 16}, 0.80, 0.84),
    ]
    found = agreement.trade_by_group(rows, "A", "B")
    assert list(found) == ["1"]
    assert found["1"]["seeds_differ"] == 3
    assert found["1"]["b_minus_a_channels"] == pytest.approx((16 + 32 + 0 + 48) / 4)
    assert found["1"]["spearman_with_points"] == pytest.approx(1.0)
    rows[3]["val_acc"]["B"] = 0.78  # the widest trade now scores lowest
    assert agreement.trade_by_group(rows, "A", "B")["1"]["spearman_with_points"] < 0.5


@pytest.mark.parametrize(
    "methods, message",
    [
        ("a", "give two different methods"),
        ("a,a", "give two different methods"),
        ("a,zzz", "no finished run of method 'zzz'"),
    ],
)
def test_bad_input_is_one_line(setup, tmp_path, capsys, methods, message):
    result, table = setup
    agreement = load("plan_agreement")
    out = tmp_path / "x.json"
    argv = [str(result), "--table", str(table), "--methods", methods, "--out", str(out)]
    assert agreement.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_widths_that_do_not_fit_and_not_a_result(setup, tmp_path, capsys):
    result, table = setup
    agreement = load("plan_agreement")
    data = json.loads(result.read_text())
    data["runs"][0]["widths"] = [8, 16, 24]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    assert agreement.main([str(bad), "--table", str(table), "--methods", "a,b"]) == 2
    assert "3 widths recorded for a model of 4 convs" in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    assert agreement.main([str(empty), "--table", str(table)]) == 2
    assert "not a bench/pareto.py result" in capsys.readouterr().err


def split(result, tmp_path) -> list[str]:
    """The result's runs in two files: seed 0 in one, seeds 1 and 2 in the other."""
    data = json.loads(result.read_text())
    paths = []
    for name, seeds in (("r0.json", {0}), ("r12.json", {1, 2})):
        part = {**data, "runs": [r for r in data["runs"] if r["seed"] in seeds]}
        (tmp_path / name).write_text(json.dumps(part))
        paths.append(str(tmp_path / name))
    return paths


def test_results_in_parts_read_as_one(setup, tmp_path, capsys):
    """Seeds run in two parts give the figures of the one result, the between-seed pairs
    across the parts included, and the means over the seeds."""
    result, table = setup
    agreement = load("plan_agreement")
    whole, parts = tmp_path / "whole.json", tmp_path / "parts.json"
    base = ["--table", str(table), "--methods", "a,b"]
    assert agreement.main([str(result), *base, "--out", str(whole)]) == 0
    assert agreement.main([*split(result, tmp_path), *base, "--out", str(parts)]) == 0
    one, two = json.loads(whole.read_text()), json.loads(parts.read_text())
    assert one["targets"] == two["targets"] and two["results"] == ["r0.json", "r12.json"]
    mean = two["targets"]["0.5x"]["mean"]
    kept_a, kept_b = sum(PLANS[("a", 0)]), sum(PLANS[("b", 0)])
    assert mean["differ_fraction"] == pytest.approx(32 / ((kept_a + kept_b) / 2) / 2)
    # a's one pair (seed 2 failed): 8 channels of the mean of its two plans' kept
    between = 8 / ((sum(PLANS[("a", 0)]) + sum(PLANS[("a", 1)])) / 2)
    assert mean["between_seeds_a_fraction"] == pytest.approx(between)
    assert mean["a_minus_b_points"] == pytest.approx(-1.0)
    assert "mean over 2 seeds: A-B" in capsys.readouterr().out


def test_parts_that_do_not_go_together(setup, tmp_path, capsys):
    """A seed's run in two parts, parts of two models, one file twice: one line each."""
    result, table = setup
    agreement = load("plan_agreement")
    base = ["--table", str(table), "--methods", "a,b"]
    r0, r12 = split(result, tmp_path)
    twice = tmp_path / "again.json"
    twice.write_text(json.dumps(json.loads(result.read_text())))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**json.loads(Path(r12).read_text()), "model": "x:y"}))
    for argv, message in (
        ([r0, str(twice)], "a at 0.5x, seed 0, is in both r0.json and again.json"),
        ([r0, str(other)], "other.json has model 'x:y'"),
        ([r0, r0], "two results are named r0.json"),
    ):
        assert agreement.main([*argv, *base]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
