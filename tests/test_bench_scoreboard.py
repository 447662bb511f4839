"""bench/scoreboard.py: pools of hand-made runs come out as one row per model, CPU and
target holding the shipped default against each baseline; a pool run against another
criterion or floor than ``auto`` ships there is set aside and said so; bad input is one
line, exit code 2, nothing written."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from tests.conftest import ROOT, load_bench

MODEL = "halp_trt.models:mobilenetv2_cifar"  # auto at 0.7x: taylor-weights-mean, floor 0.5
ZEN4 = ["avx", "avx2", "avx512f", "fma"]


def run(seed, method, ratio, acc, floor=None, importance=None, target="0.7x"):
    r = {"seed": seed, "target": target, "target_fraction": float(target[:-1]), "method": method,
         "status": "ok", "measured_ratio": ratio, "val_acc": acc, "method_s": 1.0}  # fmt: skip
    if floor is not None:
        r["min_keep"] = floor
    if importance is not None:
        r["importance"] = importance
    return r


def result(runs, reference="halp-auto-calib", flags=ZEN4, cpu="AMD EPYC"):
    return {"model": MODEL, "data": "npz:digits.npz: 10 images", "input_shape": [8, 3, 16, 16],
            "runs": runs, "settings": {"reference": reference},
            "table": {"fingerprint": {"host": {"cpu": cpu, "cpu_flags": flags}}}}  # fmt: skip


def default_runs(seed, floor=0.5, importance="taylor-weights-mean", reference="halp-auto-calib"):
    """Seed ``seed`` at 0.7x: the default 0.90 at 0.70; the MACs table at the same floor
    0.91 (ahead of it), the MACs table at 0.1 0.80, uniform 0.88 (both at 0.70), SP-LAMP
    at the floor 0.1 0.89, and a halp-trt variant that is no baseline."""
    macs = reference.replace("-calib", "-macs-calib")
    return [
        run(seed, reference, 0.70, 0.90, floor, importance),
        run(seed, macs, 0.70, 0.91 + seed / 100, floor),
        run(seed, macs, 0.70, 0.80, 0.1),
        run(seed, "halp-taylor-abs-calib", 0.70, 0.70, 0.3),
        run(seed, "halp-sp-lamp-calib", 0.70, 0.89, 0.1),
        run(seed, "uniform", 0.65, 0.86), run(seed, "uniform+", 0.75, 0.90),
    ]  # fmt: skip


def write_pool(tmp_path, name, results, reference):
    """Pool ``results`` (file name -> result) with bench/pareto_pool.py into ``name``."""
    pool = load_bench("pareto_pool")
    for file, res in results.items():
        (tmp_path / file).write_text(json.dumps(res))
    paths = [str(tmp_path / f) for f in results]
    assert pool.main([*paths, "--reference", reference, "--out", str(tmp_path / name)]) == 0
    return str(tmp_path / name)


def test_the_default_against_each_baseline_one_row_per_model_cpu_and_target(tmp_path, capsys):
    board = load_bench("scoreboard")
    res = result(default_runs(0) + default_runs(1))
    path = write_pool(tmp_path, "pool.json", {"a.json": res}, "halp-auto-calib@floor0.5")
    out = tmp_path / "board" / "scoreboard.json"
    capsys.readouterr()
    assert board.main([path, "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["cpu"], row["target"]) == ("AMD EPYC, AVX-512", "0.7x")
    assert row["criterion"] == "taylor-weights-mean"
    assert set(row["baselines"]) == {"MACs table", "SP-LAMP", "uniform"}
    assert row["baselines"]["SP-LAMP"]["method"] == "halp-sp-lamp-calib@floor0.1"
    macs = row["baselines"]["MACs table"]
    # the ablation at the default's floor (0.91, 0.92), not the one at 0.1 (0.80)
    assert macs["method"] == "halp-auto-macs-calib@floor0.5"
    assert macs["mean_points"] == pytest.approx(-1.5) and macs["ahead"] == 0
    uniform = row["baselines"]["uniform"]  # 0.88 at 0.70, read between its two plans
    assert uniform["mean_points"] == pytest.approx(2.0) and uniform["seeds"] == 2
    assert row["behind"] == ["MACs table"] and row["at_or_above_every_mean"] is False
    printed = capsys.readouterr().out
    head = "| mobilenetv2_cifar | AMD EPYC, AVX-512 | 0.7x | `taylor-weights-mean`, floor 0.5 |"
    assert head in printed
    assert "-1.50 [-7.9, +4.9] 0/2" in printed and "+2.00 [+2.0, +2.0] 2/2" in printed
    assert printed.splitlines()[-2].endswith("| no: MACs table |")
    assert printed.splitlines()[-1] == f"wrote {out}"


def test_a_pool_of_another_floor_or_criterion_is_set_aside_and_said_so(tmp_path, capsys):
    board = load_bench("scoreboard")
    kept = write_pool(
        tmp_path, "kept.json", {"a.json": result(default_runs(0))}, "halp-auto-calib@floor0.5"
    )
    floor = write_pool(
        tmp_path, "floor.json", {"b.json": result(default_runs(0, floor=0.3))}, "halp-auto-calib"
    )
    fisher = result(default_runs(0, importance="taylor-fisher"))
    other = write_pool(tmp_path, "other.json", {"c.json": fisher}, "halp-auto-calib@floor0.5")
    assert board.main([kept, floor, other]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "set aside: floor.json at 0.7x: its reference is pruned at the floor 0.3; the "
        "default's there is 0.5",
        "set aside: other.json at 0.7x: its reference ran taylor-fisher; auto runs "
        "taylor-weights-mean there now",
    ]


def test_the_criterion_auto_chooses_named_is_the_default(tmp_path):
    board = load_bench("scoreboard")
    named = "halp-taylor-weights-mean-calib"
    res = result(default_runs(0, reference=named), reference=named)
    path = write_pool(tmp_path, "pool.json", {"a.json": res}, f"{named}@floor0.5")
    found, skipped = board.entries([path])
    assert not skipped
    assert {e["method"] for e in found} == {
        "halp-taylor-weights-mean-macs-calib@floor0.5",
        "halp-sp-lamp-calib@floor0.1",
        "uniform",
    }


def test_the_committed_scoreboard_is_what_its_pools_give_under_the_rules_now():
    """bench/results/scoreboard.json, read again from the pools its command names, under
    the pruner's rules as they are: a change of what ``auto`` ships (its criterion or
    floor at some model and target) leaves the committed table stale, and this fails
    until it is made again; the README shows that table as it is."""
    board = load_bench("scoreboard")
    committed = json.loads((ROOT / "bench/results/scoreboard.json").read_text())
    args = shlex.split(committed["command"])[2:]
    pools = [str(ROOT / a) for a in args[: args.index("--out")]]
    found, skipped = board.entries(pools)
    assert board.board(found) == committed["rows"]
    assert skipped == committed["set_aside"]
    assert board.markdown(committed["rows"]) in (ROOT / "README.md").read_text()


def test_the_pool_with_most_seeds_gives_a_baseline(tmp_path):
    board = load_bench("scoreboard")
    one = write_pool(
        tmp_path, "one.json", {"a.json": result(default_runs(0))}, "halp-auto-calib@floor0.5"
    )
    two = write_pool(
        tmp_path,
        "two.json",
        {"b.json": result(default_runs(1) + default_runs(2))},
        "halp-auto-calib@floor0.5",
    )
    for order in ([one, two], [two, one]):
        (row,) = board.board(board.entries(order)[0])
        assert row["baselines"]["uniform"]["pool"] == "two.json"
        assert row["baselines"]["uniform"]["seeds"] == 2


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_text("{}"), "is not a bench/pareto_pool.py result"),
        (lambda p: p.write_text("not json"), "is not a bench/pareto_pool.py result"),
        (None, "pools runs of several CPUs (AMD EPYC, AVX-512; AMD EPYC, AVX2)"),
        ("aside", "none of the pools sets the shipped default against a baseline"),
        ("target", "has a target '3ms', not a fraction (0.5x)"),
        (
            "stale",
            "pool.json: its reference halp-auto-calib names none of its runs at 0.7x (named "
            "before the floors were? pool them again)",
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, make, message):
    board = load_bench("scoreboard")
    if make is None:
        results = {
            "a.json": result(default_runs(0)),
            "b.json": result(default_runs(1), flags=["avx", "avx2", "fma"]),
        }
        path = write_pool(tmp_path, "pool.json", results, "halp-auto-calib@floor0.5")
    elif make == "target":
        res = result(default_runs(0))
        path = write_pool(tmp_path, "pool.json", {"a.json": res}, "halp-auto-calib@floor0.5")
        pool = json.loads(Path(path).read_text())
        pool["equal_latency"] = {"3ms": pool["equal_latency"]["0.7x"]}
        Path(path).write_text(json.dumps(pool))
    elif make == "stale":  # a pool of floor-0.5 runs whose reference lost its floor
        res = result(default_runs(0))
        path = write_pool(tmp_path, "pool.json", {"a.json": res}, "halp-auto-calib@floor0.5")
        pool = json.loads(Path(path).read_text())
        pool["reference"] = "halp-auto-calib"
        Path(path).write_text(json.dumps(pool))
    elif make == "aside":
        res = result(default_runs(0, floor=0.3))
        path = write_pool(tmp_path, "pool.json", {"a.json": res}, "halp-auto-calib")
    else:
        path = tmp_path / "pool.json"
        make(path)
    capsys.readouterr()
    out = tmp_path / "scoreboard.json"
    assert board.main([str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scoreboard.py: error: ") and message in err
    assert "\n" not in err and not out.exists()
