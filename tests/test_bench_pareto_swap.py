"""bench/pareto_swap.py: a re-run method set against an earlier result's other methods at
equal measured latency; results that do not share dense models and settings are refused."""

from __future__ import annotations

import copy
import json

import pytest

from tests.conftest import load_bench


def load_swap():
    return load_bench("pareto_swap")


def run(seed, method, ratio, acc, target="0.5x"):
    return {"seed": seed, "target": target, "target_fraction": 0.5, "method": method,
            "status": "ok", "measured_ratio": ratio, "val_acc": acc, "method_s": 1.0}  # fmt: skip


def result(methods, runs, dense_acc=(0.95, 0.96)):
    return {
        "command": "python bench/pareto.py ...",
        "model": "m",
        "data": "digits",
        "input_shape": [8, 3, 16, 16],
        "targets": ["0.5x"],
        "methods": methods,
        "settings": {"model": "m", "data": "digits", "epochs": 2, "reference": methods[0]},
        "table": {"fingerprint": {"backend": "onnxruntime"}},
        "dense": {str(i): {"val_acc": a} for i, a in enumerate(dense_acc)},
        "runs": runs,
    }


def written(tmp_path, base, rerun) -> list[str]:
    """The two results written as files: their paths, swap.main's first two arguments."""
    paths = [tmp_path / "base.json", tmp_path / "rerun.json"]
    for path, d in zip(paths, (base, rerun)):
        path.write_text(json.dumps(d))
    return [str(path) for path in paths]


@pytest.fixture()
def pair():
    base = result(
        ["halp-taylor-abs", "tp-taylor"],
        [
            run(0, "halp-taylor-abs", 0.50, 0.90), run(1, "halp-taylor-abs", 0.50, 0.90),
            run(0, "tp-taylor", 0.40, 0.92), run(0, "tp-taylor+", 0.60, 0.96),
            run(1, "tp-taylor", 0.45, 0.93), run(1, "tp-taylor+", 0.55, 0.95),
        ],
    )  # fmt: skip
    rerun = result(
        ["halp-taylor-abs"],
        [run(0, "halp-taylor-abs", 0.50, 0.95), run(1, "halp-taylor-abs", 0.45, 0.96)],
    )
    return base, rerun


def test_the_rerun_replaces_its_method_and_is_compared_at_its_measured_latency(pair, tmp_path):
    swap = load_swap()
    base, rerun = pair
    got = swap.swap(base, rerun)
    assert got["rerun_methods"] == ["halp-taylor-abs"]
    ours = [r for r in got["runs"] if r["method"] == "halp-taylor-abs"]
    assert sorted(r["val_acc"] for r in ours) == [0.95, 0.96]  # the re-run's, not the base's
    eq = got["summary"]["equal_latency"]["0.5x"]["tp-taylor"]
    # seed 0: tp-taylor at 0.50 interpolates to 0.94 -> +1 point; seed 1: at 0.45 it is
    # its own point 0.93 -> +3 points.
    assert eq["per_seed"] == pytest.approx([0.01, 0.03])
    assert eq["bracketed"] == [True, True]
    # Written through the command, with a plot beside it.
    paths = written(tmp_path, *pair)
    out = tmp_path / "swapped.json"
    assert swap.main([*paths, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["summary"] == json.loads(json.dumps(got["summary"]))
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda b, r: r["settings"].update(epochs=6), "other settings (epochs)"),
        (lambda b, r: r["settings"].update(timing="blocks"), "other settings (timing)"),
        (lambda b, r: r["table"].update(fingerprint={"backend": "torch"}), "table fingerprint"),
        (lambda b, r: r["dense"]["1"].update(val_acc=0.5), "seed 1: the dense models differ"),
        (lambda b, r: r["dense"].update({"7": {"val_acc": 0.9}}), "no seed 7"),
        (lambda b, r: r["methods"].append("uniform"), "has no uniform"),
    ],
)
def test_results_of_other_dense_models_or_settings_are_refused(pair, tmp_path, capsys, change,
                                                               message):  # fmt: skip
    swap = load_swap()
    base, rerun = copy.deepcopy(pair)
    change(base, rerun)
    paths = written(tmp_path, base, rerun)
    out = tmp_path / "out.json"
    assert swap.main([*paths, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_another_window_only_when_asked_and_recorded(pair, tmp_path, capsys):
    swap = load_swap()
    base, rerun = copy.deepcopy(pair)
    base["settings"]["prune_window"], rerun["settings"]["prune_window"] = 0.5, 0.25
    paths = written(tmp_path, base, rerun)
    out = tmp_path / "out.json"
    assert swap.main([*paths, "--out", str(out)]) == 2
    assert "other settings (prune_window)" in capsys.readouterr().err
    assert swap.main([*paths, "--out", str(out), "--other-window"]) == 0
    got = json.loads(out.read_text())
    assert got["prune_window"] == {"earlier": 0.5, "rerun": 0.25}
    assert got["summary"]["equal_latency"]["0.5x"]["tp-taylor"]["per_seed"] == pytest.approx(
        [0.01, 0.03]
    )


def test_a_new_method_is_added_only_when_asked_and_can_be_the_reference(pair, tmp_path, capsys):
    swap = load_swap()
    base, _ = copy.deepcopy(pair)
    rerun = result(
        ["halp-taylor-abs", "halp-taylor-abs-mean"],
        [
            run(0, "halp-taylor-abs", 0.50, 0.95), run(1, "halp-taylor-abs", 0.45, 0.96),
            run(0, "halp-taylor-abs-mean", 0.50, 0.93), run(1, "halp-taylor-abs-mean", 0.45, 0.95),
        ],
    )  # fmt: skip
    paths = written(tmp_path, base, rerun)
    out = tmp_path / "out.json"
    assert swap.main([*paths, "--out", str(out)]) == 2
    assert "has no halp-taylor-abs-mean (--new-methods adds methods)" in capsys.readouterr().err
    assert not out.exists()
    argv = [*paths, "--out", str(out), "--new-methods"]
    assert swap.main([*argv, "--reference", "uniform"]) == 2
    assert "--reference uniform is not among the methods run" in capsys.readouterr().err
    assert swap.main([*argv, "--reference", "halp-taylor-abs-mean"]) == 0
    got = json.loads(out.read_text())
    assert got["methods"] == ["halp-taylor-abs", "tp-taylor", "halp-taylor-abs-mean"]
    eq = got["summary"]["equal_latency"]["0.5x"]
    assert got["summary"]["reference"] == "halp-taylor-abs-mean"
    # seed 0: tp-taylor interpolates to 0.94 at 0.50 -> -1 point; seed 1: 0.93 -> +2.
    assert eq["tp-taylor"]["per_seed"] == pytest.approx([-0.01, 0.02])
    # the other re-run method at the same ratios: -2 and -1 points
    assert eq["halp-taylor-abs"]["per_seed"] == pytest.approx([-0.02, -0.01])


def test_seeds_take_part_of_a_rerun_into_an_earlier_result_of_fewer_seeds(pair, tmp_path, capsys):
    swap = load_swap()
    base, _ = copy.deepcopy(pair)
    rerun = result(
        ["halp-taylor-abs"],
        [run(s, "halp-taylor-abs", 0.50, 0.95) for s in (0, 1, 2)],
        dense_acc=(0.95, 0.96, 0.97),
    )
    paths = written(tmp_path, base, rerun)
    out = tmp_path / "out.json"
    assert swap.main([*paths, "--out", str(out)]) == 2
    assert "the earlier result has no seed 2" in capsys.readouterr().err
    for bad, message in (
        ("0,5", "the re-run has no seed 5"),
        ("0,x", "--seeds '0,x'"),
        ("0,1,0", "names a seed twice"),
    ):
        assert swap.main([*paths, "--out", str(out), "--seeds", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
        assert not out.exists()
    assert swap.main([*paths, "--out", str(out), "--seeds", "1,0"]) == 0
    got = json.loads(out.read_text())
    assert got["seeds"] == [0, 1]
    assert {r["seed"] for r in got["runs"]} == {0, 1}
    ours = [r for r in got["runs"] if r["method"] == "halp-taylor-abs"]
    assert [r["val_acc"] for r in ours] == [0.95, 0.95]  # the re-run's, seed 2 left out


def test_the_reruns_trained_dense_copies_join_the_earlier_dense_models(pair):
    swap = load_swap()
    base, rerun = pair
    assert "dense_finetuned_val_acc_mean" not in swap.swap(base, rerun)["summary"]
    rerun["dense"]["0"].update(finetuned_val_acc=0.97, finetuned_s=2.0)
    rerun["dense"]["1"].update(finetuned_val_acc=0.99, finetuned_s=2.0)
    got = swap.swap(base, rerun)
    assert got["dense"]["0"] == {"val_acc": 0.95, "finetuned_val_acc": 0.97, "finetuned_s": 2.0}
    assert got["summary"]["dense_finetuned_val_acc_mean"] == pytest.approx(0.98)
    assert "finetuned_val_acc" not in base["dense"]["0"]  # the earlier result is not changed


def test_a_swapped_result_takes_a_second_rerun(pair, tmp_path):
    swap = load_swap()
    base, rerun = copy.deepcopy(pair)
    paths = written(tmp_path, base, rerun)
    first = tmp_path / "first.json"
    assert swap.main([*paths, "--out", str(first)]) == 0
    assert json.loads(first.read_text())["dense"] == base["dense"]
    second = result(
        ["halp-taylor-abs-concave"],
        [run(0, "halp-taylor-abs-concave", 0.50, 0.97),
         run(1, "halp-taylor-abs-concave", 0.45, 0.91)],
    )  # fmt: skip
    (tmp_path / "second.json").write_text(json.dumps(second))
    out = tmp_path / "out.json"
    argv = [str(first), str(tmp_path / "second.json"), "--out", str(out), "--new-methods"]
    assert swap.main([*argv, "--reference", "halp-taylor-abs"]) == 0
    got = json.loads(out.read_text())
    assert got["methods"] == ["halp-taylor-abs", "tp-taylor", "halp-taylor-abs-concave"]
    accs = {(r["method"], r["seed"]): r["val_acc"] for r in got["runs"]}
    assert accs[("halp-taylor-abs", 0)] == 0.95  # the first re-run's, kept
    assert accs[("halp-taylor-abs-concave", 1)] == 0.91
    # seed 0: the same ratio, 0.95 - 0.97; seed 1: the same ratio, 0.96 - 0.91
    eq = got["summary"]["equal_latency"]["0.5x"]["halp-taylor-abs-concave"]
    assert eq["per_seed"] == pytest.approx([-0.02, 0.05])


def test_the_timing_travels_so_a_swapped_result_pools_with_its_own_kind(pair):
    swap, pool = load_swap(), load_bench("pareto_pool")
    base, rerun = copy.deepcopy(pair)
    for r in (base, rerun):
        r["settings"]["timing"] = "blocks"
    got = swap.swap(base, rerun)
    assert got["settings"]["timing"] == "blocks"
    later = copy.deepcopy(base)  # a blocks run of two more seeds
    later["dense"] = {"2": {"val_acc": 0.95}, "3": {"val_acc": 0.96}}
    later["runs"] = [{**r, "seed": r["seed"] + 2} for r in later["runs"]]
    pooled = pool.pool([("swapped", got), ("later", later)], "halp-taylor-abs")
    assert pooled["equal_latency"]["0.5x"]["tp-taylor"]["seeds"] == 4
    assert swap.swap(*pair)["settings"]["timing"] == "round-robin"  # from before --timing
