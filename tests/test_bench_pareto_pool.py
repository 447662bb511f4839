"""bench/pareto_pool.py: runs on different seeds pooled seed by seed, with one method's
neighbouring plans as the yardstick; figures of hand-made results come out as computed by
hand; runs that cannot be pooled are refused in one line, with no output written."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_bench


def run(seed, method, ratio, acc, target="0.5x"):
    return {"seed": seed, "target": target, "target_fraction": 0.5, "method": method,
            "status": "ok", "measured_ratio": ratio, "val_acc": acc, "method_s": 1.0}  # fmt: skip


def result(runs, model="m"):
    return {"model": model, "data": "digits", "input_shape": [8, 3, 16, 16], "runs": runs,
            "settings": {"reference": "halp-taylor-abs"}}  # fmt: skip


def first():
    """Seed 0: halp at 0.50 scores 0.90; TP's two plans put 0.93 there (0.92 at 0.40,
    0.94 at 0.60); uniform's two plans 0.91 (0.92 at 0.45, 0.90 at 0.55); FastNAS's two
    0.94 (0.92 at 0.30, 0.96 at 0.70: its second across the reference, not a neighbour)."""
    return result(
        [
            run(0, "halp-taylor-abs", 0.50, 0.90),
            run(0, "tp-taylor", 0.40, 0.92), run(0, "tp-taylor+", 0.60, 0.94),
            run(0, "uniform", 0.45, 0.92), run(0, "uniform+", 0.55, 0.90),
            run(0, "modelopt-fastnas", 0.30, 0.92), run(0, "modelopt-fastnas+", 0.70, 0.96),
        ]
    )  # fmt: skip


def second():
    """Seeds 1 and 2, TP only: halp 0.95 against 0.93 and 0.96 against 0.97."""
    return result(
        [
            run(1, "halp-taylor-abs", 0.50, 0.95),
            run(1, "tp-taylor", 0.45, 0.93), run(1, "tp-taylor+", 0.55, 0.93),
            run(2, "halp-taylor-abs", 0.50, 0.96),
            run(2, "tp-taylor", 0.48, 0.96), run(2, "tp-taylor+", 0.52, 0.98),
            run(2, "tp-l2", 0.40, 0.91),  # one plan, below the reference's latency
            run(2, "tp-l2", 0.30, 0.90, target="0.3x"),  # no reference there: no pair
            {**run(2, "uniform", 0.5, 0.5), "status": "failed"},
            # Seed 3's reference set aside after the fact (a defect's plan): no pair.
            {**run(3, "halp-taylor-abs", 0.2, 0.5), "status": "excluded", "excluded": "why"},
            run(3, "tp-taylor", 0.45, 0.9),
        ]
    )  # fmt: skip


def test_seeds_of_two_runs_pool_into_one_interval_beside_the_neighbouring_plans(tmp_path, capsys):
    pool = load_bench("pareto_pool")
    got = pool.pool([("a", first()), ("b", second())], "halp-taylor-abs")
    tp = got["equal_latency"]["0.5x"]["tp-taylor"]
    assert tp["seeds"] == 3 and [r["seed"] for r in tp["per_seed"]] == [0, 1, 2]
    assert [round(r["diff"], 6) for r in tp["per_seed"]] == [-0.03, 0.02, -0.01]
    assert tp["halp_minus_method_mean"] == pytest.approx(-0.02 / 3)
    assert tp["ahead"] == 1 and tp["bracketed"] == 3 and tp["ci"][0] < 0 < tp["ci"][1]
    uniform = got["equal_latency"]["0.5x"]["uniform"]
    assert uniform["seeds"] == 1 and uniform["halp_minus_method_mean"] == pytest.approx(-0.01)
    assert uniform["ci"] is None  # one seed: no interval
    assert "0.3x" not in got["equal_latency"]

    near = got["neighbouring_plans"]
    assert near["tp-taylor"]["pairs"] == 3
    assert near["tp-taylor"]["mean_points"] == pytest.approx((2 + 0 + 2) / 3)
    assert near["tp-taylor"]["wider_lower"] == 0
    assert near["uniform"] == pytest.approx(
        {"pairs": 1, "mean_points": -2.0, "sd_points": None, "mean_abs_points": 2.0,
         "min_points": -2.0, "max_points": -2.0, "wider_lower": 1, "ratio_gap_mean": 0.1}
    )  # fmt: skip
    assert near["all"]["pairs"] == 4 and near["all"]["wider_lower"] == 1
    fastnas = got["equal_latency"]["0.5x"]["modelopt-fastnas"]
    assert fastnas["per_seed"][0]["diff"] == pytest.approx(0.90 - 0.94)
    assert fastnas["bracketed"] == 1 and "modelopt-fastnas" not in near

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(first()))
    b.write_text(json.dumps(second()))
    out = tmp_path / "new" / "pool.json"  # its directory made, as --out's check promises
    assert pool.main([str(a), str(b), "--out", str(out)]) == 0
    # tp-l2 has one 0.5x plan, at 0.40 of the dense latency: the reference's 0.50 is
    # read beyond its points' ends (the 0.3x plan is on its curve, below both), and the
    # table says so beside the pairs that are bracketed.
    lines = {tuple(line.split()[:2]): line.split() for line in capsys.readouterr().out.splitlines()}
    assert lines[("0.5x", "tp-taylor")][-2:] == ["1/3", "3/3"]
    assert lines[("0.5x", "tp-l2")][-2:] == ["1/1", "0/1"]
    written = json.loads(out.read_text())
    assert written["benchmark"] == "pareto_pool" and written["runs"] == ["a.json", "b.json"]
    assert written["command"] == f"python bench/pareto_pool.py {a} {b} --out {out}"
    assert written["equal_latency"]["0.5x"]["tp-taylor"]["seeds"] == 3


def dense(res, *accs):
    """``res`` with its seeds' dense models recorded (their validation accuracy)."""
    seeds = sorted({r["seed"] for r in res["runs"]})
    return {**res, "dense": {str(s): {"val_acc": a} for s, a in zip(seeds, accs)}}


def test_runs_of_one_seed_join_on_the_same_dense_model():
    """Seed 0's TP in one run, its halp-trt and uniform in another, the dense model the
    same: one seed's pairs, as if run together; the same method in both is refused."""
    pool = load_bench("pareto_pool")
    runs = first()["runs"]
    halp = dense(result([r for r in runs if not r["method"].startswith("tp")]), 0.8)
    tp = dense(result([r for r in runs if r["method"].startswith("tp")]), 0.8)
    got = pool.pool([("a", halp), ("b", tp)], "halp-taylor-abs")
    alone = pool.pool([("c", first())], "halp-taylor-abs")
    for method in ("tp-taylor", "uniform"):
        (row,) = got["equal_latency"]["0.5x"][method]["per_seed"]
        assert row["run"] == "a+b" and row["seed"] == 0
        assert row["diff"] == pytest.approx(
            alone["equal_latency"]["0.5x"][method]["per_seed"][0]["diff"]
        )
    assert got["equal_latency"]["0.5x"]["tp-taylor"]["per_seed"][0]["diff"] == pytest.approx(-0.03)
    assert got["neighbouring_plans"]["tp-taylor"]["pairs"] == 1
    with pytest.raises(pool.BenchError, match="with tp-taylor at 0.5x in both"):
        pool.pool([("a", dense(first(), 0.8)), ("b", tp)], "halp-taylor-abs")
    # A run set aside (or failed) in one file and run again in another is counted once:
    # the re-run's.
    aside = [{**r, "status": "excluded"} if r["method"].startswith("tp") else r for r in runs]
    again = pool.pool([("a", dense(result(aside), 0.8)), ("b", tp)], "halp-taylor-abs")
    assert (
        again["equal_latency"]["0.5x"]["tp-taylor"]["per_seed"]
        == (got["equal_latency"]["0.5x"]["tp-taylor"]["per_seed"])
    )


def test_a_run_with_the_floor_set_is_a_method_of_its_own():
    """halp-trt at floor 0.1 in one run (seed 0, 0.95 at 0.50), the baselines and halp-trt
    at the default floor in another: the floor's run pools against those baselines, and
    the default floor's run of the same seed is not counted twice."""
    pool = load_bench("pareto_pool")
    low = dense(result([run(0, "halp-taylor-abs", 0.50, 0.95)]), 0.8)
    low["settings"] = {"min_keep": 0.1}
    got = pool.pool([("a", low), ("b", dense(first(), 0.8))], "halp-taylor-abs@floor0.1")
    (tp,) = got["equal_latency"]["0.5x"]["tp-taylor"]["per_seed"]
    assert tp["diff"] == pytest.approx(0.95 - 0.93)
    (halp,) = got["equal_latency"]["0.5x"]["halp-taylor-abs"]["per_seed"]
    assert halp["diff"] == pytest.approx(0.95 - 0.90)
    assert "halp-taylor-abs@floor0.1" not in got["equal_latency"]["0.5x"]
    # The floor a run recorded names it where its result set none (the pruner's default
    # follows the criterion); a recorded 0.3 is the bare name.
    plain = dense(result([{**run(0, "halp-taylor-abs", 0.50, 0.95), "min_keep": 0.1}]), 0.8)
    same = pool.pool([("a", plain), ("b", dense(first(), 0.8))], "halp-taylor-abs@floor0.1")
    assert same["equal_latency"] == got["equal_latency"]
    assert (
        pool.floored(result([{**run(0, "halp-x", 0.5, 0.9), "min_keep": 0.3}]))[0]["method"]
        == "halp-x"
    )


@pytest.mark.parametrize(
    "other, message",
    [
        (first(), "seed 0 is in a.json and b.json"),
        (result(second()["runs"], model="n"), "b.json has model 'n'"),
        (result([run(1, "tp-taylor", 0.5, 0.9)]), "b.json has no 'halp-taylor-abs' run of seed 1"),
        (dense(first(), 0.8), "seed 0 is in a.json and b.json, whose dense models"),
        ("not json", "b.json is not a bench/pareto.py result"),
        (
            {**second(), "settings": {"timing": "blocks"}},
            "b.json was timed blocks, a.json round-robin",
        ),
    ],
)
def test_runs_that_cannot_be_pooled_are_one_line_and_write_nothing(
    tmp_path, capsys, other, message
):
    pool = load_bench("pareto_pool")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(first()))
    b.write_text(other if isinstance(other, str) else json.dumps(other))
    out = tmp_path / "pool.json"
    assert pool.main([str(a), str(b), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pareto_pool.py: error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_the_reference_is_the_one_the_results_were_run_against(tmp_path, capsys):
    """Without --reference: the method the results name as theirs, with the floor its runs
    recorded; two different ones, or none, are one line and exit code 2."""
    pool = load_bench("pareto_pool")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(first()))
    b.write_text(json.dumps(second()))
    assert pool.main([str(a), str(b)]) == 0
    assert capsys.readouterr().out.startswith("halp-taylor-abs minus each method")
    low = {**second(), "settings": {"reference": "halp-taylor-abs", "min_keep": 0.1}}
    assert pool.recorded_reference([("b", low)]) == "halp-taylor-abs@floor0.1"
    for other, message in [
        (low, "different references (halp-taylor-abs in a.json; halp-taylor-abs@floor0.1 in b.json)"),
        ({**second(), "settings": {}}, None),  # b records none: a's
        ({**first(), "settings": {"reference": "halp-x"}}, "no reference with a run"),
    ]:  # fmt: skip
        b.write_text(json.dumps(other))
        files = [str(b)] if message == "no reference with a run" else [str(a), str(b)]
        out = tmp_path / "pool.json"
        code = pool.main([*files, "--out", str(out)])
        if message is None:
            assert code == 0 and json.loads(out.read_text())["reference"] == "halp-taylor-abs"
            out.unlink()
            continue
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and "\n" not in err and not out.exists()
