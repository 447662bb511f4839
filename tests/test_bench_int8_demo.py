"""bench/int8_demo.py's sweep of seeds and criteria: hand-made runs compare as computed
by hand, a failed run drops its seed from the pairs, every run after the first reuses
the first run's table, and bad input is one line, exit code 2, before any run."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_bench, two_conv_bn_net


def figures(int8, fp32, speedup):
    return {
        "precisions": [{"model": "int8 pruned", "accuracy": int8}],
        "fp32_pruned_accuracy": fp32,
        "quantization_points": 100 * (int8 - fp32),
        "int8_speedup": speedup,
    }


def run(seed, asked, int8, fp32, speedup, status="ok"):
    if status != "ok":
        return {"seed": seed, "asked": asked, "status": status}
    return {"seed": seed, "asked": asked, "status": "ok", **figures(int8, fp32, speedup)}


def test_compare_pairs_seed_by_seed():
    m = load_bench("int8_demo")
    runs = [
        run(0, "a", 0.96, 0.99, 1.95), run(0, "b", 0.98, 0.98, 1.90),
        run(1, "a", 0.97, 0.98, 2.00), run(1, "b", 0.96, 0.97, 1.92),
        run(2, "a", 0.95, 0.97, 2.05), run(2, "b", 0.0, 0.0, 0.0, status="failed"),
    ]  # fmt: skip
    cmp = m.compare(runs, ["a", "b"])
    assert cmp["means"]["a"]["runs"] == 3 and cmp["means"]["b"]["runs"] == 2
    assert cmp["means"]["a"]["int8_pruned_accuracy"] == pytest.approx(0.96)
    assert cmp["means"]["b"]["quantization_points"] == pytest.approx(-0.5)
    d = cmp["differences"]["b minus a"]
    assert d["seeds"] == [0, 1]  # seed 2's b failed: no pair
    assert d["int8_pruned_accuracy"]["per_seed"] == pytest.approx([0.02, -0.01])
    assert d["int8_pruned_accuracy"]["ahead"] == 1
    # quantizing cost a 3 and 1 points, b 0 and 1: b minus a +3 and +0
    assert d["quantization_points"]["per_seed"] == pytest.approx([3.0, 0.0])
    assert d["quantization_points"]["mean"] == pytest.approx(1.5)
    assert d["int8_speedup"]["mean"] == pytest.approx(-0.065)
    lo, hi = d["quantization_points"]["ci"]
    assert lo < 1.5 < hi and not d["quantization_points"]["resolved"]


def test_compare_with_every_run_of_a_criterion_failed():
    m = load_bench("int8_demo")
    runs = [run(0, "a", 0.96, 0.99, 1.95), run(0, "b", 0, 0, 0, status="failed")]
    cmp = m.compare(runs, ["a", "b"])
    assert cmp["means"]["b"] == {"runs": 0, **{k: None for k in m.MEASURES}}
    assert cmp["differences"]["b minus a"]["seeds"] == []
    assert cmp["differences"]["b minus a"]["int8_speedup"]["mean"] is None


def test_sweep_reuses_the_first_table_and_records_failures(tmp_path, monkeypatch):
    m = load_bench("int8_demo")
    calls = []

    def fake_run_once(out, extra, resume, lut=None):
        calls.append((out.name, extra, lut))
        if out.name == "s1-taylor-weights":
            raise m.RunFailed("halp-trt run exited with 1")
        return {"seconds": 1.0, **figures(0.97, 0.98, 2.0)}

    monkeypatch.setattr(m, "run_once", fake_run_once)
    args = m.parse_args(
        ["--out", str(tmp_path / "sweep"), "--seeds", "0,1",
         "--importance", "taylor-fisher,taylor-weights"]
    )  # fmt: skip
    result = m.sweep(args, ["--seeds", "0,1"])
    first = tmp_path / "sweep" / "s0-taylor-fisher" / "lut.db"
    assert calls == [
        ("s0-taylor-fisher", ["--seed", "0", "--importance", "taylor-fisher"], None),
        ("s0-taylor-weights", ["--seed", "0", "--importance", "taylor-weights"], first),
        ("s1-taylor-fisher", ["--seed", "1", "--importance", "taylor-fisher"], first),
        ("s1-taylor-weights", ["--seed", "1", "--importance", "taylor-weights"], first),
    ]
    assert [r["status"] for r in result["runs"]] == ["ok", "ok", "ok", "failed"]
    assert result["runs"][3]["error"] == "halp-trt run exited with 1"
    assert result["comparison"]["differences"]["taylor-weights minus taylor-fisher"]["seeds"] == [0]
    assert result["command"] == "python bench/int8_demo.py --seeds 0,1"
    json.dumps(result)  # what --json writes


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--seeds", "a"], "comma-separated integers like 0,1,2"),
        (["--seeds", "1,1"], "names a seed twice"),
        (["--importance", "nope"], "unknown importance 'nope'"),
        (["--importance", "l1,l1"], "distinct"),
        # after --: halp-trt run's flags, checked by its parser and configuration
        (["--", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--", "--target", "1.5x"], "--target must be below 1x"),
        (["--", "--seed", "3"], "--seed is the sweep's own"),
        (["--", "--importance", "l2"], "--importance is the sweep's own"),
        (["--", "--precision", "fp32"], "--precision is the sweep's own"),
        (["--", "--out", "elsewhere"], "--out is the sweep's own"),
        (["--", "--lut", "t.db"], "--lut is the sweep's own"),
    ],
)
def test_bad_input_is_one_line_before_any_run(argv, says, tmp_path, monkeypatch, capsys):
    m = load_bench("int8_demo")
    monkeypatch.setattr(m, "run_once", lambda *a, **k: pytest.fail("ran"))
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as e:
        m.main(["--out", str(out), "--json", str(tmp_path / "x.json"), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err
    assert not out.exists() and not (tmp_path / "x.json").exists()


def test_single_run_figures_are_read_from_the_report(tmp_path, monkeypatch):
    """The report's rows become the figures: FP32 pruned from the report's pruned model,
    what quantizing cost from it and the INT8 pruned row, the criterion from the plan."""
    m = load_bench("int8_demo")
    out = tmp_path / "run"

    def fake_call(cmd):
        assert cmd[cmd.index("--out") + 1] == str(out) and "--lut" not in cmd
        (out / "pruned").mkdir(parents=True)
        (out / "pruned" / "plan.json").write_text(
            json.dumps({"pruning": {"importance": "taylor-fisher"}})
        )
        rows = [
            {"model": n, "accuracy": a, "latency_ms": 1.0, "speedup_vs_fp32": 1.0,
             "size_bytes": 1}
            for n, a in (("fp32 dense", 0.99), ("int8 dense", 0.985), ("int8 pruned", 0.96))
        ]  # fmt: skip
        report = {
            "fingerprint": {"device": "cpu"}, "stages": {}, "target": "0.5x",
            "precisions": rows, "pruned": {"accuracy": 0.98}, "speedup": 1.9,
            "speedup_spread": 0.05, "predicted_speedup": 2.0, "target_met": True,
        }  # fmt: skip
        (out / "report.json").write_text(json.dumps(report))
        return 0

    monkeypatch.setattr(m.subprocess, "call", fake_call)
    r = m.run_once(out, [], resume=False)
    assert r["importance"] == "taylor-fisher" and r["table"] == "built"
    assert r["quantization_points"] == pytest.approx(-2.0)
    assert r["accuracy_points_vs_fp32_dense"] == pytest.approx(-3.0)
    assert not r["targets"]["accuracy_met"] and r["targets"]["speedup_met"]


@pytest.mark.parametrize("broken", ["no report", "no pruned accuracy", "exit 1"])
def test_a_failed_or_unreadable_run_raises_saying_why(broken, tmp_path, monkeypatch):
    m = load_bench("int8_demo")
    out = tmp_path / "run"

    def fake_call(cmd):
        (out / "pruned").mkdir(parents=True)
        (out / "pruned" / "plan.json").write_text("{}")
        if broken == "no pruned accuracy":
            (out / "report.json").write_text(json.dumps({"precisions": [], "pruned": {}}))
        return 1 if broken == "exit 1" else 0

    monkeypatch.setattr(m.subprocess, "call", fake_call)
    says = {
        "exit 1": "exited with 1",
        "no report": "report.json",
        "no pruned accuracy": "cannot read",
    }
    with pytest.raises(m.RunFailed, match=says[broken]):
        m.run_once(out, [], resume=False)


def test_flags_after_the_separator_reach_every_run(tmp_path, monkeypatch):
    """Flags after ``--`` are checked by `halp-trt run`'s parser and passed to every run
    after the demo's (so they replace them); the record names them."""
    m = load_bench("int8_demo")
    seen = []

    def fake_run(out, extra, resume, lut=None):
        seen.append(extra)
        return figures(0.95, 0.96, 1.9)

    monkeypatch.setattr(m, "run_once", fake_run)
    extra = ["--model", "halp_trt.models:mobilenetv2_cifar", "--target", "0.4x"]
    args = m.parse_args(["--seeds", "0,1", "--importance", "l1", "--", *extra])
    assert args.run_flags == extra
    result = m.sweep(args, ["--seeds", "0,1"])
    assert seen == [[*extra, "--seed", "0", "--importance", "l1"],
                    [*extra, "--seed", "1", "--importance", "l1"]]  # fmt: skip
    assert result["demo"].endswith("--precision int8 " + " ".join(extra))
    assert m.parse_args(["--seeds", "0"]).run_flags == []


def test_a_given_table_must_be_an_int8_table(tmp_path, monkeypatch, capsys):
    """``--lut``: a missing file or a table measured at FP32 is one line, exit code 2,
    before any run; an INT8 table's path reaches every run."""
    from lut_builder.backends import get_backend
    from lut_builder.build import build_table
    from lut_builder.specs import example_input

    m = load_bench("int8_demo")
    monkeypatch.setattr(m, "run_once", lambda *a, **k: pytest.fail("ran"))
    model = two_conv_bn_net()
    measurer = get_backend("onnxruntime", runs=3, min_time_s=0.0, warmup=1)
    build_table(tmp_path / "fp32.db", model, example_input(model, (2, 3, 8, 8)), measurer,
                step=32, calibration="none")  # fmt: skip
    measurer.close()
    for lut, says in ((tmp_path / "none.db", "does not exist"), (tmp_path / "fp32.db", "fp32")):
        with pytest.raises(SystemExit) as e:
            m.main(["--seeds", "0", "--out", str(tmp_path / "never"), "--lut", str(lut)])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err, err
        assert not (tmp_path / "never").exists()

    seen = []
    monkeypatch.setattr(
        m, "run_once", lambda out, extra, resume, lut=None: seen.append(lut) or figures(1, 1, 2)
    )
    args = m.parse_args(["--seeds", "0,1"])
    args.lut = tmp_path / "int8.db"  # as parse_args leaves a table it accepted
    assert m.sweep(args, [])["lut"] == str(args.lut)
    assert seen == [tmp_path / "int8.db"] * 2
