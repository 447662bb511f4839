"""bench/pareto.py: bad input stops it in one line before any work; a tiny end-to-end
run writes the JSON and plot, and a method that fails is recorded and passed over."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from tests.conftest import load_bench


def tiny_net(num_classes: int = 10, width: int = 16) -> nn.Module:
    """Two convolutions (``width`` and twice it) and a classifier: a table of a few
    points, seconds to train."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )


TINY = f"{__file__}:tiny_net"


def small_net(num_classes: int = 10) -> nn.Module:
    """:func:`tiny_net` twice as wide: wide enough that a CPU whose kernels block 16
    channels (AVX-512) runs the narrower copies faster."""
    return tiny_net(num_classes, width=32)


SMALL = f"{__file__}:small_net"


@pytest.fixture(scope="module")
def pareto():
    yield load_bench("pareto")
    sys.modules.pop("bench_pareto", None)


@pytest.fixture
def short_table_loops(pareto, monkeypatch):
    """Tables built and calibrated on a few runs: for tests of what a build or a run
    does, not of how well its table measures."""
    quality = pareto.prune_quality
    monkeypatch.setattr(quality, "TABLE_LOOP", {"warmup": 1, "runs": 3, "min_time_s": 0.0})
    monkeypatch.setattr(
        quality, "CALIBRATION_LOOP", {"warmup": 1, "runs": 2, "min_time_s": 0.0, "blocks": 2}
    )


def tiny_argv(tmp_path, *args: str) -> list[str]:
    """A tiny run's arguments: :func:`tiny_net` at 2x3x8x8 to 0.6x, on a MACs table and a
    bench lock in ``tmp_path``, then ``args``."""
    return [
        "--model", TINY, "--input-shape", "2,3,8,8", "--targets", "0.6x",
        "--table", str(tmp_path / "t.db"), "--table-backend", "macs",
        "--lock", str(tmp_path / "lock"), *args,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "halp-taylor,magic"], "unknown method(s) magic"),
        (["--targets", "0.5x,1x"], "target '1x' must be a fraction below 1x"),
        (["--targets", "1.2x"], "target '1.2x' must be a fraction below 1x"),
        (["--targets", "3ms"], "target '3ms' must be a fraction below 1x"),
        (["--data", "npz:/nonexistent/data.npz"], "nonexistent"),
        (["--lock", "/nonexistent/dir/lock"], "cannot open the benchmark lock"),
        (["--model", TINY + ",num_classes=5"], "has 10 classes but"),
        (["--input-shape", "2,1,8,8"], "does not accept an input"),
        (["--seeds", "0,x"], "--seeds '0,x': comma-separated integers"),
        (["--seeds", "0,,1"], "--seeds '0,,1': comma-separated integers"),
        (["--seeds", "2,1,2"], "--seeds '2,1,2' names a seed twice"),
        (["--seeds", "0,-1"], "every seed must be an integer from 0 to 18446744073709551615"),
        (["--seeds", str(2**64)], "every seed must be an integer from 0 to"),
        (["--threads", "100000"], "--threads must be at most"),
        (["--lr", "nan"], "--lr must be a finite number > 0, not nan"),
        (["--lr", "0"], "--lr must be a finite number > 0, not 0.0"),
        (["--step", "0"], "--step must be at least 1, not 0"),
        (["--epochs", "0"], "--epochs must be at least 1, not 0"),
        (["--prune-window", "0"], "--prune-window must be a fraction in (0, 1]"),
        (["--prune-window", "1.5"], "--prune-window must be a fraction in (0, 1]"),
        (["--min-interval", "0"], "--min-interval must be at least 1, not 0"),
        (["--methods", "tp-l2,halp-taylor", "--reference", "tp-l2"], "--reference tp-l2 must"),
        (["--methods", "halp-taylor", "--reference", "halp-taylor-abs"], "one of the halp-*"),
    ],
)
def test_bad_input(pareto, tmp_path, capsys, monkeypatch, extra, message):
    def no_work(*a, **k):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(pareto, "build_or_open_table", no_work)
    out = tmp_path / "sub" / "p.json"
    argv = ["--model", TINY, "--input-shape", "2,3,8,8", "--out", str(out), *extra]
    assert pareto.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "sub").exists()


def test_an_error_past_the_checks_is_one_line_and_keeps_what_ran(
    pareto, tmp_path, capsys, monkeypatch
):
    """A table that cannot be built or opened once the run has started (here one left
    incomplete): one line, exit code 1, and the JSON of the methods that ran before it."""
    from lut_builder.errors import IncompleteTableError

    def incomplete(*a, **k):
        raise IncompleteTableError("latency table t.db is incomplete (3 points not measured)")

    monkeypatch.setattr(pareto, "build_or_open_table", incomplete)
    out = tmp_path / "p.json"
    argv = [
        "--model", TINY, "--input-shape", "2,3,8,8", "--targets", "0.6x", "--seeds", "0",
        "--methods", "halp-taylor-macs,halp-taylor", "--epochs", "1", "--pretrain-epochs",
        "0", "--table", str(tmp_path / "t.db"), "--lock", str(tmp_path / "lock"),
        "--out", str(out),
    ]  # fmt: skip
    assert pareto.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is incomplete" in err[0] and str(out) in err[0], err
    saved = json.loads(out.read_text())
    assert saved["status"].startswith("waiting for the measured table")
    assert [r["method"] for r in saved["runs"]] == ["halp-taylor-macs"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--device", "cuda"], "--device cuda needs --backend torch"),
        (["--device", "tpu", "--backend", "torch"], "--device must be cpu, cuda or cuda:N"),
        (["--precision", "fp16", "--backend", "torch"], "--precision fp16 is for a GPU"),
        (["--backend", "torch", "--device", "cuda:1"], "this machine has no CUDA device"),
    ],
)
def test_a_deployment_this_machine_cannot_time_is_one_line(
    pareto, tmp_path, capsys, monkeypatch, extra, message
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    test_bad_input(pareto, tmp_path, capsys, monkeypatch, extra, message)


def test_a_table_of_another_deployment_is_one_line(pareto, tmp_path, capsys, monkeypatch):
    # A MACs table given as the measured table of a torch run: refused before any work.
    torch.manual_seed(0)
    pareto.macs_table(tmp_path / "macs.db", tiny_net(), torch.randn(2, 3, 8, 8), 8, 8)
    extra = ["--backend", "torch", "--table", str(tmp_path / "macs.db")]
    message = "was measured on analytic fp32 on analytic"
    test_bad_input(pareto, tmp_path, capsys, monkeypatch, extra, message)
    # A table of the run's deployment whose build was cut short is taken (it resumes).
    import sqlite3

    from lut_builder.backends import get_backend
    from lut_builder.build import build_table

    backend = get_backend("torch", threads=None)  # the process's threads left as they are
    build_table(tmp_path / "t.db", tiny_net(), torch.randn(2, 3, 8, 8), backend, step=8, calibration="none")  # fmt: skip
    backend.close()
    with sqlite3.connect(tmp_path / "t.db") as db:
        db.execute("update meta set value = 'false' where key = 'complete'")
    args = pareto.parse_args(["--model", TINY, "--input-shape", "2,3,8,8", "--backend", "torch",
                              "--table", str(tmp_path / "t.db")])  # fmt: skip
    pareto.check_deployment(args)
    # A GPU deployment is made of the device and precision asked for; no CPU threads.
    args = pareto.parse_args(["--model", TINY, "--input-shape", "2,3,8,8", "--backend", "torch",
                              "--device", "cuda:1", "--precision", "bf16"])  # fmt: skip
    assert pareto.deployment(args) == {
        "backend": "torch", "threads": None, "options": {"device": "cuda:1", "precision": "bf16"}
    }  # fmt: skip


def test_torch_backend_builds_times_and_feeds_back_on_torch(
    pareto, tmp_path, monkeypatch, short_feedback, short_table_loops
):
    # --backend torch: the table is the torch backend's, the pruner's feedback and the
    # bench's timings run torch runners (not one ONNX Runtime runner), and the bench's
    # deployment is put back after the run.
    import lut_builder.backends as backends

    made = []
    real = backends.make_runner

    def spy(name, *a, **k):
        made.append((name, k.get("threads")))
        return real(name, *a, **k)

    monkeypatch.setattr(backends, "make_runner", spy)
    monkeypatch.setattr("halp_trt.prune.feedback.FEEDBACK_TRUST", float("inf"))
    out = tmp_path / "p.json"
    argv = [
        "--model", SMALL, "--input-shape", "8,3,32,32", "--targets", "0.6x",
        "--table", str(tmp_path / "t.db"), "--lock", str(tmp_path / "lock"),
        "--backend", "torch", "--seeds", "0", "--methods", "halp-taylor,uniform",
        "--epochs", "1", "--pretrain-epochs", "0", "--step", "8", "--rounds", "3",
        "--timing", "blocks", "--match", "predicted", "--min-keep", "0", "--out", str(out),
    ]  # fmt: skip
    before = dict(pareto.prune_quality.DEPLOY)
    assert pareto.main(argv) == 0
    assert before == pareto.prune_quality.DEPLOY
    result = json.loads(out.read_text())
    assert result["table"]["fingerprint"]["backend"] == "torch"
    assert (result["table"]["backend"], result["table"]["threads"]) == ("torch", 1)
    assert result["timing"].startswith("torch CPU, one intra-op thread")
    runs = {r["method"]: r for r in result["runs"]}
    assert runs["halp-taylor"]["status"] == "ok", runs["halp-taylor"].get("error")
    assert runs["halp-taylor"]["steps_measured_ratio"][-1] is not None
    assert 0 < runs["halp-taylor"]["remeasured_ratio"] < 1.5
    assert 0 < runs["uniform"]["measured_ratio"] < 1.5
    assert made and set(made) == {("torch", 1)}


def test_a_model_not_timed_as_the_table_says_so(pareto, tmp_path, monkeypatch):
    # A runner that could not run a model as the table's layers were timed (on a GPU: no
    # CUDA graph) leaves its note beside that model's figures.
    import lut_builder.backends as backends

    real = backends.make_runner

    def noted(name, model, *a, **k):
        runner = real(name, model, *a, **k)
        if model[0].out_channels == 8:
            runner.note = "runs eagerly: CUDA graph capture failed (test)"
        return runner

    monkeypatch.setattr(backends, "make_runner", noted)
    monkeypatch.setattr(pareto.prune_quality, "LOCK", str(tmp_path / "lock"))
    torch.manual_seed(0)
    dense, x = tiny_net(), torch.randn(2, 3, 8, 8)
    half = pareto.uniform_prune(dense, x, 0.5, 8)
    got = pareto.measure_blocks({"dense": dense, "half": half}, x, 3)
    assert (
        got["half"]["runner_note"].startswith("runs eagerly") and "runner_note" not in got["dense"]
    )


def test_summary_counts_the_models_that_landed_within_the_band(pareto):
    # 0.95-1.02 of the target, ends included; each method's own count.
    def run(method, ratio, seed):
        return {
            "status": "ok", "method": method, "target": "0.5x", "target_fraction": 0.5,
            "seed": seed, "measured_ratio": ratio, "val_acc": 0.9, "method_s": 1.0,
        }  # fmt: skip

    runs = [run("halp-taylor", r, s) for s, r in enumerate((0.47, 0.475, 0.5, 0.51, 0.52))]
    runs += [run("uniform", 0.45, 0)]
    got = pareto.summarise(runs, ["halp-taylor", "uniform"], ["0.5x"])["by_target"]["0.5x"]
    assert (got["halp-taylor"]["landed"], got["halp-taylor"]["n"]) == (3, 5)
    assert got["uniform"]["landed"] == 0
    assert "excluded" not in got["halp-taylor"] and got["halp-taylor"]["failed"] == 0


def test_a_run_set_aside_is_counted_apart_and_summarised_as_not_run(pareto):
    # A committed run that a defect since fixed produced: "excluded", with why; its
    # figures stay in the file and out of every mean, and it is not a failure.
    def run(seed, acc, status="ok"):
        return {
            "status": status, "method": "halp-taylor", "target": "0.5x", "target_fraction": 0.5,
            "seed": seed, "measured_ratio": 0.5, "val_acc": acc, "method_s": 1.0,
        }  # fmt: skip

    runs = [run(0, 0.9), run(1, 0.1, pareto.EXCLUDED), run(2, 0.8, "failed")]
    got = pareto.summarise(runs, ["halp-taylor"], ["0.5x"])["by_target"]["0.5x"]["halp-taylor"]
    assert (got["n"], got["failed"], got["excluded"]) == (1, 1, 1)
    assert got["val_acc_mean"] == 0.9
    alone = pareto.summarise(runs[1:2], ["halp-taylor"], ["0.5x"])["by_target"]["0.5x"]
    assert alone["halp-taylor"] == {"n": 0, "failed": 0, "excluded": 1}


def test_a_seed_counts_at_a_target_only_where_the_method_has_a_plan_of_it(pareto):
    # A pool joins a run of seeds 0-1 at 0.5x and 0.3x with one of seed 2 at 0.3x only,
    # beside a reference at 0.5x on all three: seed 2's baseline has no 0.5x model, and
    # its 0.3x points are not read as one (the nearest point would be a model of 0.3 of
    # the dense latency set beside one of 0.5). Where it has one, the curve still runs
    # through its points of every target: a reference outside its 0.5x pair is read on
    # the line towards the 0.3x pair.
    def run(method, target, seed, ratio, acc):
        return {
            "status": "ok", "method": method, "target": target,
            "target_fraction": float(target.rstrip("x")), "seed": seed,
            "measured_ratio": ratio, "val_acc": acc, "method_s": 1.0,
        }  # fmt: skip

    runs = [run("halp-taylor", "0.5x", s, 0.50, 0.90) for s in (0, 1, 2)]
    for s in (0, 1):
        runs += [run("uniform", "0.5x", s, 0.48, 0.88), run("uniform+", "0.5x", s, 0.52, 0.90)]
    for s in (0, 1, 2):
        runs += [run("uniform", "0.3x", s, 0.30, 0.70), run("uniform+", "0.3x", s, 0.32, 0.72)]
    runs[0]["measured_ratio"] = 0.46  # seed 0's reference below the 0.5x pair
    got = pareto.summarise(runs, ["halp-taylor", "uniform"], ["0.5x", "0.3x"], "halp-taylor")
    eq = got["equal_latency"]["0.5x"]["uniform"]
    assert eq["seeds"] == [0, 1]
    # seed 0 on the line from (0.32, 0.72) to (0.48, 0.88) at 0.46: 0.86; seed 1 at 0.50
    # between the pair: 0.89
    assert eq["per_seed"] == pytest.approx([0.90 - 0.86, 0.90 - 0.89])
    assert eq["bracketed"] == [True, True]


def test_layer_shapes_are_the_layers_of_a_real_pass(pareto, monkeypatch):
    # Priced from a pass on the meta device: the same signatures as a real pass, the
    # model left on its device; a model meta cannot run is passed for real.
    from lut_builder.signatures import model_layers

    torch.manual_seed(0)
    net, x = tiny_net(), torch.randn(4, 3, 8, 8)
    assert pareto.layer_shapes(net, x) == model_layers(net, x)
    assert next(net.parameters()).device.type == "cpu"

    class HostSync(nn.Module):  # .item() has no meta kernel
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, t):
            return self.conv(t) * float(t.abs().max().item() > 0)

    sync = HostSync()
    assert pareto.layer_shapes(sync, x) == model_layers(sync, x) and len(model_layers(sync, x)) == 1


def test_tiny_run_records_a_failure(pareto, tmp_path, monkeypatch, capsys, short_feedback):
    def forced():
        raise RuntimeError("forced failure")

    monkeypatch.setitem(pareto.METHOD_FUNCS, "halp-taylor", forced)
    # The plans' timings count as trusted however busy the machine is: on a loaded CI
    # machine a tiny model's interval can stay wider than FEEDBACK_TRUST, the pruner then
    # sets the timing aside (steps_measured_ratio [None]) and there is nothing to remeasure.
    monkeypatch.setattr("halp_trt.prune.feedback.FEEDBACK_TRUST", float("inf"))
    out = tmp_path / "p.json"
    argv = tiny_argv(
        tmp_path, "--seeds", "0", "--methods", "halp-taylor,halp-taylor-macs,uniform",
        "--epochs", "1", "--pretrain-epochs", "1", "--step", "8", "--rounds", "5",
        "--min-keep", "0", "--out", str(out),
    )  # fmt: skip
    assert pareto.main(argv) == 0
    result = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 1000
    runs = {r["method"]: r for r in result["runs"]}
    assert runs["halp-taylor"]["status"] == "failed"
    assert "forced failure" in runs["halp-taylor"]["error"]
    # the traceback names the bench's files relative to the repository, not this machine's
    trace = runs["halp-taylor"]["traceback"]
    assert (
        'File "bench/pareto.py"' in trace and str(Path(__file__).resolve().parents[1]) not in trace
    )
    # halp-taylor failed: uniform is matched to the table's plan for 0.6x instead.
    assert runs["uniform"]["status"] == "ok", runs["uniform"].get("error")
    for name in ("uniform", "uniform+"):
        if name not in runs:
            continue
        r = runs[name]
        assert {"seed", "target", "val_acc", "measured_ratio", "method_s", "finetune_s"} <= set(r)
        assert 0 < r["measured_ratio"] < 1.5 and 0 <= r["val_acc"] <= 1
        assert 0 <= r["val_acc_before_bn"] <= 1  # the accuracy before the BN re-estimate
    # run before the (here: MACs) table was built, then priced and timed with the rest
    macs = runs["halp-taylor-macs"]
    assert macs["status"] == "ok", macs.get("error")
    assert {"predicted_ratio", "measured_ratio", "val_acc", "val_acc_before_bn"} <= set(macs)
    # timed once more the pruner's way after the round-robin timing
    assert macs["steps_measured_ratio"][-1] is not None
    assert 0 < macs["remeasured_ratio"] < 1.5 and macs["remeasured_halfwidth"] > 0
    assert "remeasured_ratio" not in runs["uniform"]
    # one epoch is too short for 5 steps 40 iterations apart: one step, as halp-trt
    # prune fits them
    assert (macs["steps"], len(macs["steps_predicted_ratio"])) == (1, 1)
    summary = result["summary"]["by_target"]["0.6x"]
    assert summary["uniform"]["n"] == 1
    assert summary["halp-taylor-macs"]["val_acc_before_bn_mean"] == macs["val_acc_before_bn"]
    assert result["summary"]["by_target"]["0.6x"]["halp-taylor"] == {"n": 0, "failed": 1}
    assert result["dense"]["0"]["val_acc"] > 0
    assert result["table"]["backend"] == "macs" and result["status"] == "complete"
    assert result["summary"]["reference"] == result["settings"]["reference"] == "halp-taylor"


def test_timing_blocks_times_the_models_in_turn_in_blocks(pareto, tmp_path, monkeypatch):
    import lut_builder.timing as timing

    torch.manual_seed(0)
    dense = tiny_net()
    x = torch.randn(2, 3, 8, 8)
    half = pareto.uniform_prune(dense, x, 0.5, 4)
    timed = []
    real = timing.time_blocks

    def spy(runners, **kw):
        timed.append((len(runners), kw["rounds"], kw["block_ms"]))
        return real(runners, **kw)

    monkeypatch.setattr(timing, "time_blocks", spy)
    monkeypatch.setattr(pareto.prune_quality, "LOCK", str(tmp_path / "lock"))
    got = pareto.measure_blocks({"dense": dense, "same": copy.deepcopy(dense), "half": half}, x, 9)
    # All three in one run, 9 rounds of one block each, of 20 ms at least.
    assert timed == [(3, 9, 20.0)]
    assert got["dense"]["ratio_to_dense"] == 1.0
    assert 0.8 < got["same"]["ratio_to_dense"] < 1.25
    assert got["half"]["ratio_to_dense"] < got["same"]["ratio_to_dense"]
    for fig in got.values():
        assert 0 < fig["p10_ms"] <= fig["median_ms"] <= fig["p90_ms"]
    # The bench reads its ratios from there with --timing blocks, and says so; the knob
    # methods are matched by the same timing.
    calls, measure = [], pareto.measure_blocks
    monkeypatch.setattr(
        pareto, "measure_blocks", lambda m, x, r: calls.append(r) or measure(m, x, r)
    )
    out = tmp_path / "p.json"
    argv = tiny_argv(
        tmp_path, "--seeds", "0", "--methods", "uniform", "--epochs", "1",
        "--pretrain-epochs", "0", "--step", "8", "--rounds", "4", "--timing", "blocks",
        "--out", str(out),
    )  # fmt: skip
    assert pareto.main(argv) == 0
    result = json.loads(out.read_text())
    assert calls[-1] == 4 and "all models in turn (4 rounds, one block each" in result["timing"]
    runs = {r["method"]: r for r in result["runs"]}
    assert runs["uniform"]["status"] == "ok", runs["uniform"].get("error")
    assert 0 < runs["uniform"]["measured_ratio"] < 1.5
    # each matching try timed in blocks: 30 of them, before the seed's timing
    tries = runs["uniform"]["matching"]
    assert tries and calls[:-1] == [30] * len(tries)


@pytest.mark.parametrize(
    "methods, reference",
    [
        ("halp-taylor-weights,halp-auto-calib,tp-l2", "halp-auto-calib"),
        ("tp-l2,halp-taylor,halp-taylor-abs,halp-taylor-weights", "halp-taylor-weights"),
        ("tp-l2,halp-taylor,halp-taylor-abs", "halp-taylor-abs"),
        ("halp-taylor,uniform", "halp-taylor"),
        ("uniform,halp-sp-lamp,halp-taylor-macs", "halp-sp-lamp"),
        ("uniform,tp-l2", None),
    ],
)
def test_reference_defaults_to_the_shipped_criterion(pareto, tmp_path, methods, reference):
    argv = ["--model", TINY, "--input-shape", "2,3,8,8", "--methods", methods]
    args = pareto.parse_args([*argv, "--out", str(tmp_path / "p.json")])
    pareto.check_inputs(args)
    assert args.reference == reference


def test_keep_adds_seeds_to_a_result_of_the_same_settings(pareto, tmp_path, capsys):
    out = tmp_path / "p.json"
    base = tiny_argv(
        tmp_path, "--methods", "halp-taylor-macs", "--epochs", "1", "--pretrain-epochs", "0",
        "--step", "8", "--rounds", "3", "--out", str(out),
        "--no-feedback",  # what --keep keeps needs no timing of plans: seconds a run
    )  # fmt: skip
    assert pareto.main([*base, "--seeds", "0"]) == 0
    first = json.loads(out.read_text())
    assert first["runs"][0]["steps_measured_ratio"] == [None]  # the plans were not timed...
    assert "remeasured_ratio" not in first["runs"][0]  # ... so nothing to time again
    assert pareto.main([*base, "--seeds", "1", "--keep"]) == 0
    both = json.loads(out.read_text())
    assert both["seeds"] == [0, 1] and sorted(both["dense"]) == ["0", "1"]
    assert [r["seed"] for r in both["runs"]] == [0, 1]
    assert both["runs"][0] == first["runs"][0]
    assert both["summary"]["by_target"]["0.6x"]["halp-taylor-macs"]["n"] == 2
    assert len(both["commands"]) == 2 and "--keep" in both["commands"][1]
    # Seed 1 again: its old run is replaced, not doubled.
    assert pareto.main([*base, "--seeds", "1", "--keep"]) == 0
    again = json.loads(out.read_text())
    assert [r["seed"] for r in again["runs"]] == [0, 1] and len(again["commands"]) == 3
    capsys.readouterr()
    # Other settings: one line, exit 2, the result untouched.
    before = out.read_text()
    assert pareto.main([*base, "--seeds", "2", "--keep", "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings (epochs)" in err[0], err
    assert out.read_text() == before
    # A result from before a setting existed counts as run with its default.
    old = json.loads(before)
    del old["settings"]["prune_window"]
    out.write_text(json.dumps(old))
    assert pareto.main([*base, "--seeds", "2", "--keep"]) == 0
    assert json.loads(out.read_text())["seeds"] == [0, 1, 2]
    # ... and one from before the minimum interval ran its steps as close as they came
    old = json.loads(out.read_text())
    del old["settings"]["min_interval"]
    out.write_text(json.dumps(old))
    assert pareto.main([*base, "--seeds", "2", "--keep"]) == 2
    assert "other settings (min_interval)" in capsys.readouterr().err
    assert pareto.main([*base, "--seeds", "2", "--keep", "--min-interval", "1"]) == 0
    # ... and one from before --timing was timed round-robin: blocks do not add to it.
    old = json.loads(out.read_text())
    del old["settings"]["timing"]
    out.write_text(json.dumps(old))
    assert pareto.main([*base, "--seeds", "2", "--keep", "--min-interval", "1"]) == 0
    blocks = ["--timing", "blocks", "--min-interval", "1"]
    assert pareto.main([*base, "--seeds", "2", "--keep", *blocks]) == 2
    assert "other settings (timing)" in capsys.readouterr().err
    missing = tmp_path / "none.json"
    argv = [a if a != str(out) else str(missing) for a in base]
    assert pareto.main([*argv, "--seeds", "2", "--keep"]) == 2
    assert "no result to add to" in capsys.readouterr().err
    assert not missing.exists()


def test_dense_finetune_trains_an_unpruned_copy_and_leaves_the_methods_as_they_were(
    pareto, tmp_path
):
    base = tiny_argv(
        tmp_path, "--seeds", "0", "--methods", "halp-taylor-macs", "--epochs", "1",
        "--pretrain-epochs", "1", "--step", "8", "--rounds", "3", "--no-feedback",
    )  # fmt: skip
    plain, copied = tmp_path / "plain.json", tmp_path / "copied.json"
    assert pareto.main([*base, "--out", str(plain)]) == 0
    assert pareto.main([*base, "--out", str(copied), "--dense-finetune"]) == 0
    a, b = json.loads(plain.read_text()), json.loads(copied.read_text())
    assert "finetuned_val_acc" not in a["dense"]["0"]
    assert "dense_finetuned_val_acc_mean" not in a["summary"]
    got = b["dense"]["0"]
    assert 0 <= got["finetuned_val_acc"] <= 1 and got["finetuned_s"] > 0
    assert b["summary"]["dense_finetuned_val_acc_mean"] == got["finetuned_val_acc"]
    # The dense model the methods start from is the same, and so is what they make of it.
    assert got["val_acc"] == a["dense"]["0"]["val_acc"]
    assert [r["val_acc"] for r in b["runs"]] == [r["val_acc"] for r in a["runs"]]
    assert [r["widths"] for r in b["runs"]] == [r["widths"] for r in a["runs"]]
    # A seed with the copy adds to a result without one: the methods' runs are alike.
    assert (
        pareto.main([*base, "--out", str(plain), "--seeds", "1", "--keep", "--dense-finetune"]) == 0
    )
    both = json.loads(plain.read_text())
    assert (
        "finetuned_val_acc" in both["dense"]["1"] and "finetuned_val_acc" not in both["dense"]["0"]
    )
    assert (
        both["summary"]["dense_finetuned_val_acc_mean"] == both["dense"]["1"]["finetuned_val_acc"]
    )


def test_mean_normalised_scores_average_one_over_the_alive_channels(pareto):
    import torch

    from halp_trt.graph import ChannelGraph

    torch.manual_seed(0)
    net, x = tiny_net(), torch.randn(4, 3, 8, 8)
    graph = ChannelGraph(net, x)
    with torch.no_grad():  # prune channels 0-3 of the first group: their scores are 0
        net[1].weight[:4] = 0
        net[1].bias[:4] = 0
    imp = pareto.mean_normalised("taylor")(graph)
    raw = pareto.mean_normalised("taylor").__mro__[1](graph)
    nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2, 3])).backward()
    imp.accumulate()
    raw.accumulate()
    for gid, s in imp.scores().items():
        r = raw.scores()[gid]
        alive = r > 0
        assert abs(s[alive].mean() - 1) < 1e-9 and (s[~alive] == 0).all()
        assert abs(s[alive] / r[alive] - 1 / r[alive].mean()).max() < 1e-9
    first = next(g for g in graph.prunable if any(r.layer == "1" for r in g.norms))
    assert (imp.scores()[first.id][:4] == 0).all() and (imp.scores()[first.id][4:] > 0).all()


class _Residual(nn.Module):
    """A stem and one residual block: the stream couples two BatchNorms, the block's
    inner width one."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.conv1, self.bn1 = nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        s = torch.relu(s + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(s))))))
        return self.fc(s.mean((2, 3)))


def test_layer_weighted_scores_average_the_terms_each_channel_sums(pareto):
    from halp_trt.graph import ChannelGraph

    torch.manual_seed(0)
    net, x = _Residual(), torch.randn(4, 3, 8, 8)
    graph = ChannelGraph(net, x)
    weighted = pareto.layer_weighted("taylor-abs")(graph)
    normed = pareto.mean_normalised("taylor-abs")(graph)
    nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2, 3])).backward()
    weighted.accumulate()
    normed.accumulate()
    got, base = weighted.scores(), normed.scores()
    terms = {g.id: len([r for r in g.norms if r.kind == "batchnorm"]) for g in graph.prunable}
    assert sorted(terms.values()) == [1, 2]  # the inner width, the stream
    for gid, s in got.items():
        assert s == pytest.approx(base[gid] * terms[gid])
        assert s.mean() == pytest.approx(terms[gid])


@pytest.mark.parametrize("factory, power", [("terms_averaged", 1.0), ("terms_root", 0.5)])
def test_terms_reduced_divide_each_channel_by_the_layers_it_couples(pareto, factory, power):
    """``halp-taylor-weights-mean-calib``'s criterion: ``taylor-weights`` with each
    channel's terms averaged over the layers that write and read it (the stream: the stem
    and conv2 write it, conv1 and fc read it; the inner width: conv1 writes, conv2 reads);
    ``-root-calib``'s: the summed terms over the square root of that count."""
    from halp_trt.graph import ChannelGraph
    from halp_trt.importance import get_importance

    torch.manual_seed(0)
    net, x = _Residual(), torch.randn(4, 3, 8, 8)
    graph = ChannelGraph(net, x)
    reduced = getattr(pareto, factory)("taylor-weights")(graph)
    summed = get_importance("taylor-weights")(graph)
    nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2, 3])).backward()
    reduced.accumulate()
    summed.accumulate()
    got, base = reduced.scores(), summed.scores()
    layers = {g.id: 4 if g.size == 8 else 2 for g in graph.prunable}
    assert sorted(g.size for g in graph.prunable) == [8, 16]
    for gid, s in got.items():
        assert (base[gid] > 0).all()
        assert s == pytest.approx(base[gid] / layers[gid] ** power)


def test_concave_weights_make_a_groups_value_2r_minus_r_squared(pareto):
    score = np.array([0.0, 3.0, 1.0, 0.0, 4.0, 2.0])  # channels 0 and 3 pruned
    w = pareto.concave_weights(score)
    assert (w[[0, 3]] == 0).all() and (w[[1, 2, 4, 5]] > 0).all()
    order = np.argsort(-score, kind="stable")[:4]  # 4, 1, 5, 2: the knapsack's order
    assert list(np.argsort(-w, kind="stable")[:4]) == list(order)
    total = score.sum()
    for k in range(5):  # every kept prefix is worth S * (2r - r**2)
        r = score[order[:k]].sum() / total
        assert w[order[:k]].sum() == pytest.approx(total * (2 * r - r * r))
    assert w[4] == pytest.approx(4.0 * (2 - 0.4)) and w[2] == pytest.approx(1.0 * 0.1)
    assert (pareto.concave_weights(np.zeros(3)) == 0).all()


def test_concave_value_wraps_a_criterion(pareto):
    import torch

    from halp_trt.graph import ChannelGraph

    torch.manual_seed(0)
    net, x = tiny_net(), torch.randn(4, 3, 8, 8)
    graph = ChannelGraph(net, x)
    imp = pareto.concave_value("taylor-abs")(graph)
    raw = pareto.concave_value("taylor-abs").__mro__[1](graph)
    nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2, 3])).backward()
    imp.accumulate()
    raw.accumulate()
    got, want = imp.scores(), raw.scores()
    assert set(got) == set(want)
    for gid, s in got.items():
        assert s == pytest.approx(pareto.concave_weights(want[gid]))
        assert not np.allclose(s, want[gid])


def test_summed_gradient_takes_the_magnitude_of_the_windows_sum(pareto):
    import torch

    from halp_trt.graph import ChannelGraph
    from halp_trt.importance import get_importance

    torch.manual_seed(0)
    net, x = tiny_net(), torch.randn(4, 3, 8, 8)
    graph = ChannelGraph(net, x)
    summed = pareto.summed_gradient()(graph)
    plain = get_importance("taylor-weights")(graph)
    normed = pareto.mean_normalised(pareto.summed_gradient())(graph)
    sums = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in net.named_parameters()}
    for seed in (1, 2):
        gen = torch.Generator().manual_seed(seed)
        net.zero_grad()
        xb = torch.randn(4, 3, 8, 8, generator=gen)
        nn.functional.cross_entropy(net(xb), torch.tensor([0, 1, 2, 3])).backward()
        for imp in (summed, plain, normed):
            imp.accumulate()
        for n, p in net.named_parameters():
            sums[n] += (p * p.grad).detach().double()
        if seed == 1:  # one minibatch: the same as taylor-weights
            for gid, s in summed.scores().items():
                assert s == pytest.approx(plain.scores()[gid], rel=1e-6)
    got, mean_of_abs = summed.scores(), plain.scores()
    assert summed.count == 2
    # conv 0 writes group 0, conv 3 reads it and writes group 1, read by the classifier
    first = (sums["0.weight"].abs().sum((1, 2, 3)) + sums["3.weight"].abs().sum((0, 2, 3))) / 2
    second = (sums["3.weight"].abs().sum((1, 2, 3)) + sums["8.weight"].abs().sum(0)) / 2
    by_size = {s.size: s for s in got.values()}
    assert by_size[16] == pytest.approx(first.numpy(), rel=1e-6)
    assert by_size[32] == pytest.approx(second.numpy(), rel=1e-6)
    for gid, s in got.items():  # the magnitude of a mean is never above the mean magnitude
        assert (s <= mean_of_abs[gid] * (1 + 1e-6)).all() and (s < mean_of_abs[gid]).any()
        assert normed.scores()[gid] == pytest.approx(s / s.mean())
    summed.reset()
    assert summed.count == 0


def calibration_setup():
    """A tiny dense net with BatchNorm statistics unlike a fresh BatchNorm's, its input, and
    64 random training images (8 batches of 8)."""
    import types

    import torch
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    dense, x = tiny_net().eval(), torch.randn(2, 3, 8, 8)
    for m in dense.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    images, labels = torch.randn(64, 3, 8, 8), torch.randint(0, 10, (64,))
    return dense, x, types.SimpleNamespace(train=TensorDataset(images, labels))


def assert_kept_as_dense(slim, dense) -> list[int]:
    """Each filter the slim first conv kept is one of the dense model's, with its BatchNorm
    statistics, and no gradient is left; returns the kept rows."""
    import torch

    conv, bn = slim[0], slim[1]
    assert conv.out_channels < 16
    rows = [
        int(np.flatnonzero([torch.equal(w, d) for d in dense[0].weight])[0]) for w in conv.weight
    ]
    assert torch.equal(bn.running_mean, dense[1].running_mean[rows])
    assert torch.equal(bn.running_var, dense[1].running_var[rows])
    assert all(p.grad is None for p in slim.parameters())
    return rows


def test_calibrated_prunes_before_any_update_on_the_batches_torch_prunings_taylor_takes(
    pareto, tmp_path
):
    """``*-calib``: scored on the calibration batches with the weights as they are, one
    plan to the target, the kept channels' weights and BatchNorm statistics the dense
    model's; a training set of fewer batches is refused."""
    import torch

    from halp_trt.errors import PruningError

    dense, x, data = calibration_setup()
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    table = pareto.macs_table(tmp_path / "m.db", dense, x, 8, 8)
    try:
        slim, facts = pareto.halp_calibrated(
            dense, data, x, table, "0.5x", "taylor-abs", batch_size=8, feedback=False,
            min_keep=0,
        )  # fmt: skip
        with pytest.raises(PruningError, match="asked for 8 minibatches and got 4"):
            pareto.halp_calibrated(
                dense, data, x, table, "0.5x", "taylor-abs", batch_size=16, feedback=False
            )
    finally:
        table.close()
    assert all(torch.equal(v, dense.state_dict()[k]) for k, v in before.items())
    assert facts["minibatches"] == facts["calibration_batches"] == 8
    assert facts["plan_predicted_ms"] <= facts["target_ms"] * (1 + 1e-9)
    assert facts["steps_predicted_ratio"][0] == pytest.approx(
        facts["plan_predicted_ms"] / facts["base_predicted_ms"]
    )
    # no weight updated: each kept filter is one of the dense model's, its statistics too
    rows = assert_kept_as_dense(slim, dense)
    reads = dense[3].weight[:, rows]  # the second conv's filters on the kept inputs
    assert all(any(torch.equal(w, d) for d in reads) for w in slim[3].weight)


def test_calib4_and_calib_steps(pareto, tmp_path, monkeypatch):
    """``halp-taylor-weights-calib4`` is ``halp-taylor-weights-calib`` on the first 4 of
    its 8 batches (the pruning window's count), ``-calib16`` on 16, ``-macs-calib`` the
    same path on the MACs table, ``-concave-calib`` with a concave value; ``-calib-steps``
    prunes in ``--steps`` knapsack steps before training, down HALP's schedule, each
    re-scored on the 8. ``tp-taylor16`` takes Torch-Pruning's gradients over 16 batches,
    ``tp-taylor`` over 8, once per seed each."""
    taken, taylor_grads = [], pareto.taylor_grads

    def spy(dense, data, batch_size, batches=pareto.CALIBRATION_BATCHES, device="cpu"):
        taken.append((batches, device))
        return taylor_grads(dense, data, batch_size, batches, device)

    monkeypatch.setattr(pareto, "taylor_grads", spy)
    tables, criteria, halp_calibrated = [], [], pareto.halp_calibrated

    def table_spy(dense, data, x, table, target, importance, *args, **kwargs):
        tables.append(table.path.name)
        criteria.append(importance if isinstance(importance, str) else importance.__name__)
        return halp_calibrated(dense, data, x, table, target, importance, *args, **kwargs)

    monkeypatch.setattr(pareto, "halp_calibrated", table_spy)
    out = tmp_path / "p.json"
    argv = tiny_argv(
        tmp_path, "--seeds", "0",
        "--methods", "halp-taylor-weights-calib,halp-taylor-weights-calib4,"
        "halp-taylor-weights-calib-steps,halp-taylor-abs-calib16,tp-taylor,tp-taylor16,"
        "halp-taylor-weights-macs-calib,halp-taylor-weights-concave-calib,halp-sp-lamp-calib",
        "--reference", "halp-taylor-weights-calib", "--epochs", "1", "--steps", "3",
        "--pretrain-epochs", "1", "--step", "8", "--rounds", "3", "--no-feedback",
        "--min-keep", "0", "--out", str(out),
    )  # fmt: skip
    assert pareto.main(argv) == 0
    runs = {r["method"]: r for r in json.loads(out.read_text())["runs"]}
    for method, batches in (
        ("halp-taylor-weights-calib", 8), ("halp-taylor-weights-calib4", 4),
        ("halp-taylor-abs-calib16", 16),
    ):  # fmt: skip
        assert runs[method]["status"] == "ok", runs[method].get("error")
        assert runs[method]["calibration_batches"] == runs[method]["minibatches"] == batches
        assert len(runs[method]["steps_predicted_ratio"]) == 1
    steps = runs["halp-taylor-weights-calib-steps"]
    assert steps["status"] == "ok", steps.get("error")
    assert steps["calibration_steps"] == 3 and steps["minibatches"] == 8
    ratios = steps["steps_predicted_ratio"]
    assert len(ratios) == 3 and ratios[0] > ratios[2] and ratios[0] >= ratios[1] >= ratios[2]
    assert ratios[2] * steps["base_predicted_ms"] <= steps["target_ms"] * (1 + 1e-9)
    assert all(runs[m]["status"] == "ok" for m in ("tp-taylor", "tp-taylor16"))
    assert taken == [(8, "cpu"), (16, "cpu")]  # on the device the run trains on
    # -macs-calib: the -calib path on the MACs table (run first, before the measured one)
    macs = runs["halp-taylor-weights-macs-calib"]
    assert macs["status"] == "ok", macs.get("error")
    assert macs["calibration_batches"] == macs["minibatches"] == 8
    assert tables == ["t_macs.db"] + ["t.db"] * 6, tables
    # -concave-calib: the same path and table, each group's value concave in its score
    concave = runs["halp-taylor-weights-concave-calib"]
    assert concave["status"] == "ok", concave.get("error")
    assert concave["calibration_batches"] == concave["minibatches"] == 8
    assert criteria.count("Concave_taylor-weights") == 1, criteria
    assert criteria.count("taylor-weights") == 4, criteria
    # -sp-lamp-calib: SP-LAMP's scores on the same path (no gradient read)
    lamp = runs["halp-sp-lamp-calib"]
    assert lamp["status"] == "ok", lamp.get("error")
    assert lamp["calibration_batches"] == 8 and criteria.count("sp-lamp") == 1, criteria


def test_auto_runs_the_criterion_its_target_names_on_either_table(pareto, tmp_path, monkeypatch):
    """``halp-auto-calib`` is the default's path (``auto``), ``halp-auto-macs-calib`` the
    same on the MACs table; each run records the criterion ``auto`` named for its target."""
    tables, halp_calibrated = [], pareto.halp_calibrated

    def table_spy(dense, data, x, table, target, importance, *args, **kwargs):
        tables.append((table.path.name, target, importance))
        return halp_calibrated(dense, data, x, table, target, importance, *args, **kwargs)

    monkeypatch.setattr(pareto, "halp_calibrated", table_spy)
    out = tmp_path / "p.json"
    argv = tiny_argv(
        tmp_path, "--seeds", "0", "--targets", "0.8x,0.5x",
        "--methods", "halp-auto-calib,halp-auto-macs-calib", "--reference", "halp-auto-calib",
        "--epochs", "1", "--pretrain-epochs", "1", "--step", "8", "--rounds", "3",
        "--no-feedback", "--min-keep", "0", "--out", str(out),
    )  # fmt: skip
    assert pareto.main(argv) == 0
    runs = {(r["method"], r["target"]): r for r in json.loads(out.read_text())["runs"]}
    for method in ("halp-auto-calib", "halp-auto-macs-calib"):
        for target, chosen in (("0.8x", "taylor-weights-mean"), ("0.5x", "taylor-fisher")):
            run = runs[(method, target)]
            assert run["status"] == "ok", run.get("error")
            assert run["importance"] == chosen and run["calibration_batches"] == 8
    assert sorted(tables) == sorted(
        (name, t, "auto") for name in ("t.db", "t_macs.db") for t in ("0.8x", "0.5x")
    )


def test_target_floor_is_the_targets_fraction_or_the_pruners_floor(pareto):
    from halp_trt.prune.pruner import DEFAULT_MIN_KEEP

    assert pareto.target_floor(None, 0.7) == 0.7
    assert pareto.target_floor(None, 0.1) == DEFAULT_MIN_KEEP
    assert pareto.target_floor(0.5, 0.3) == 0.5
    assert pareto.target_floor(0.0, 0.6) == 0.6


def test_floor_method_keeps_the_targets_fraction_of_every_group(pareto, tmp_path):
    """``halp-taylor-abs-floor`` (and ``halp-taylor-weights-calib-floor``) plan with every
    group keeping at least the target's fraction of its width (rounded up to whole
    bundles); ``halp-taylor-abs`` with the floor given (none here) may go below it."""
    out = tmp_path / "p.json"
    argv = tiny_argv(
        tmp_path, "--seeds", "0",
        "--methods", "halp-taylor-abs,halp-taylor-abs-floor,halp-taylor-weights-calib-floor",
        "--epochs", "1", "--pretrain-epochs", "1", "--step", "4", "--rounds", "3",
        "--no-feedback", "--min-keep", "0", "--out", str(out),
    )  # fmt: skip
    assert pareto.main(argv) == 0
    runs = {r["method"]: r for r in json.loads(out.read_text())["runs"]}
    floor, plain = runs["halp-taylor-abs-floor"], runs["halp-taylor-abs"]
    assert floor["status"] == plain["status"] == "ok", (floor.get("error"), plain.get("error"))
    assert (floor["min_keep"], plain["min_keep"]) == (0.6, 0.0)
    # 0.6 of 16 and of 32 channels, up to bundles of 4: 12 and 20
    assert floor["widths"][0] >= 12 and floor["widths"][1] >= 20, floor["widths"]
    assert floor["predicted_ratio"] <= 0.6 * 1.02
    calib = runs["halp-taylor-weights-calib-floor"]  # the same floor on the -calib path
    assert calib["status"] == "ok", calib.get("error")
    assert calib["min_keep"] == 0.6 and calib["minibatches"] == 8
    assert calib["widths"][0] >= 12 and calib["widths"][1] >= 20, calib["widths"]


def test_first_stage_floor_holds_the_groups_written_at_the_inputs_resolution(pareto, tmp_path):
    """``halp-taylor-weights-calib-first``: the groups a convolution writes at the input's
    resolution keep the target's fraction of their width, the others the pruner's floor."""
    from halp_trt.graph import ChannelGraph

    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip
    x = torch.zeros(2, 3, 8, 8)
    groups = {g.producers[0].layer: g.id for g in ChannelGraph(net, x).prunable}
    assert pareto.first_stage_floor(net, x, 0.6) == {groups["0"]: 10}  # 9.6 up; "3" is 4x4
    out = tmp_path / "p.json"
    argv = tiny_argv(
        tmp_path, "--seeds", "0", "--methods", "halp-taylor-weights-calib-first",
        "--epochs", "1", "--pretrain-epochs", "1", "--step", "4", "--rounds", "3",
        "--no-feedback", "--min-keep", "0", "--out", str(out),
    )  # fmt: skip
    assert pareto.main(argv) == 0
    run = json.loads(out.read_text())["runs"][0]
    assert run["status"] == "ok", run.get("error")
    # the tiny net's two convolutions both write at 8x8: 0.6 of 16 and 32, whole bundles
    assert sorted(run["min_channels"].values()) == [10, 20]
    assert run["widths"][0] >= 12 and run["widths"][1] >= 20, run["widths"]


def test_calib_steps_leaves_the_dense_statistics(pareto, tmp_path):
    """The stepped calibration updates no weight and puts the BatchNorm statistics back:
    each kept filter and its statistics are the dense model's."""
    import torch

    dense, x, data = calibration_setup()
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    table = pareto.macs_table(tmp_path / "m.db", dense, x, 8, 8)
    try:
        slim, facts = pareto.halp_calibrated(
            dense, data, x, table, "0.5x", "taylor-weights", batch_size=8, feedback=False,
            min_keep=0, steps=3,
        )  # fmt: skip
    finally:
        table.close()
    assert all(torch.equal(v, dense.state_dict()[k]) for k, v in before.items())
    assert len(facts["steps_predicted_ratio"]) == 3
    assert_kept_as_dense(slim, dense)


def test_paired_interval_tells_a_difference_from_the_seeds_spread(pareto):
    # mean 0.01, sd 0.001 over 3 seeds: t(0.975, 2) = 4.303, half-width 0.00248
    clear = pareto.paired_interval([0.009, 0.010, 0.011])
    assert clear["resolved"] and clear["ci"] == pytest.approx(
        [0.01 - 0.002484, 0.01 + 0.002484], abs=1e-5
    )
    noisy = pareto.paired_interval([0.02, -0.01, 0.005])
    assert not noisy["resolved"] and noisy["ci"][0] < 0 < noisy["ci"][1]
    assert pareto.paired_interval([0.03]) == {"diff_sd": None, "ci": None, "resolved": False}


@pytest.mark.parametrize("both_sides", [False, True])
def test_match_latency_brings_a_faster_baseline_up_to_the_reference(pareto, monkeypatch,
                                                                    both_sides):  # fmt: skip
    # A table that prices the reference 8% optimistically (as the knapsack's plans are):
    # matched by the prediction, the baseline measures 8% faster. One-sided matching
    # keeps it; both-sided raises the budget until it is within 2%.
    import prune_quality

    true_ms = {k / 100: 10.0 * k / 100 for k in range(40, 101)}  # knob -> measured ms
    reference = object()
    truth = {id(reference): 7.0}
    predict = {id(reference): 7.0 / 1.08}

    class Model:
        def __init__(self, knob):
            self.knob = knob
            truth[id(self)] = predict[id(self)] = true_ms[knob]

        def parameters(self):
            return []

    monkeypatch.setattr(prune_quality, "measure_ratio", lambda a, b, x: truth[id(a)] / truth[id(b)])
    knob, model, ratio, history, _ = prune_quality.match_latency(
        Model, lambda m: predict[id(m)], reference, None, sorted(true_ms), both_sides=both_sides
    )
    if both_sides:
        assert 0.98 <= ratio <= 1.02 and len(history) >= 2
    else:
        assert ratio == pytest.approx(0.64 / 0.7, rel=1e-6) and len(history) == 1
    assert model.knob == knob


def test_plot_title_wraps_a_long_spec_inside_the_figure(pareto):
    spec = "npz:" + "/very/long/path/to/a/dataset" * 4 + ".npz"
    title = pareto.plot_title(f"halp_trt.models:resnet18_cifar on {spec} 8x3x16x16: accuracy")
    lines = title.split("\n")
    assert len(lines) > 1 and max(map(len, lines)) <= 90
    assert "".join(lines).replace(" ", "") == title.replace("\n", "").replace(" ", "")
    assert pareto.plot_title("short title") == "short title"


def test_table_of_a_coarser_step_than_the_cpu_block_is_built_and_calibrated(
    pareto, tmp_path, monkeypatch, short_table_loops
):
    """A step-16 grid on a CPU whose block is 8 (AVX2): the calibration's narrowed copies
    are rounded to the grid's step, not to the finer alignment below its narrowest point;
    a table left uncalibrated (a build whose calibration failed) is calibrated on open."""
    import torch

    from lut_builder.backends.onnxruntime import measurer
    from lut_builder.build import build_table
    from lut_builder.table import LatencyTable

    monkeypatch.setattr(measurer, "cpu_block_size", lambda: 8)
    torch.manual_seed(0)
    model, x = tiny_net().eval(), torch.randn(1, 3, 8, 8)
    quality = pareto.prune_quality
    table = quality.build_or_open_table(tmp_path / "t.lut", model, x, 16)
    assert (table.alignment, table.step) == (8, 16)
    assert table.complete and table.overhead_ms is not None
    assert len(table.overhead["points"]) == 3  # the model and its 3/4 and 1/2 copies
    table.close()

    backend = measurer.OnnxRuntimeBackend(runs=3, min_time_s=0.0, warmup=1)
    build_table(tmp_path / "u.lut", model, x, backend, step=16, calibration="none")
    backend.close()
    with LatencyTable.open(tmp_path / "u.lut") as bare:
        assert bare.overhead_ms is None
    table = quality.build_or_open_table(tmp_path / "u.lut", model, x, 16)
    assert table.overhead_ms is not None and len(table.overhead["points"]) == 3
    table.close()

    # A table file some of whose points are not measured yet (a bench beside this one
    # building it, which holds the lock until done; or a build cut short) is completed,
    # not opened half-built (IncompleteTableError).
    backend = measurer.OnnxRuntimeBackend(runs=3, min_time_s=0.0, warmup=1)
    half = build_table(tmp_path / "v.lut", model, x, backend, step=16, shard=(0, 2))
    backend.close()
    assert not half.complete and (tmp_path / "v.lut").exists()
    table = quality.build_or_open_table(tmp_path / "v.lut", model, x, 16)
    assert table.complete and table.overhead_ms is not None
    table.close()


def test_torch_prunings_group_taylor_reads_the_convolutions_not_the_batchnorms():
    """What the README says ``tp-taylor`` scores, and ``taylor-weights`` follows: in
    Torch-Pruning 1.6.1 a BatchNorm's gradient does not move the group Taylor score."""
    import torch

    tp = pytest.importorskip("torch_pruning")
    model = tiny_net()
    x = torch.randn(2, 3, 8, 8)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=list(range(16)))
    score = tp.importance.GroupTaylorImportance(group_reduction="sum", normalizer=None)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model[1].weight.grad = torch.ones(16)
    model[1].bias.grad = torch.ones(16)
    assert (score(group) == 0).all()
    model[3].weight.grad = torch.ones_like(model[3].weight)  # reads the group's channels
    expected = model[3].weight.detach().abs().sum((0, 2, 3))
    torch.testing.assert_close(score(group), expected)


def test_spec_label_keeps_machine_paths_out_of_the_figure(pareto):
    assert pareto.spec_label("npz:/home/me/data/hard.npz") == "npz:hard.npz"
    assert pareto.spec_label("npz:runs/hard.npz") == "npz:runs/hard.npz"  # relative: kept
    assert pareto.spec_label("digits") == "digits"
    assert pareto.spec_label("halp_trt.models:resnet18_cifar") == "halp_trt.models:resnet18_cifar"
    assert pareto.spec_label("/home/me/nets/model.py:wide") == "model.py:wide"


def test_fastnas_scores_on_training_images_unless_told_otherwise(pareto):
    """FastNAS picks its subnet by accuracy on the score set: by default training images,
    never the validation images every method is graded on."""
    from types import SimpleNamespace

    import torch
    from torch.utils.data import TensorDataset

    def images(n, offset):
        return TensorDataset(torch.arange(offset, offset + n).float(), torch.zeros(n))

    data = SimpleNamespace(train=images(1000, 0), val=images(301, 5000))
    train = pareto.fastnas_score_set(data, "train")
    assert train.dataset is data.train and len(train) == 151
    assert len(set(train.indices)) == 151 and max(train.indices) > 900  # spread over it
    val = pareto.fastnas_score_set(data, "val")
    assert val.dataset is data.val and list(val.indices) == list(range(0, 301, 2))
    assert pareto.parse_args(["--model", TINY, "--input-shape", "2,3,8,8"]).fastnas_score == "train"
    with pytest.raises(ValueError, match="score_on"):
        pareto.fastnas_score_set(data, "test")


def test_sensitivity_scores_subnets_on_fastnas_images_and_measures_once(pareto):
    """The bench's measuring criterion: BatchNorm statistics from the calibration
    batches, each subnet scored on the training images FastNAS scores on; a second
    criterion on the same model state (another power or metric) measures nothing again."""
    import types

    from torch.utils.data import TensorDataset

    from halp_trt.graph import ChannelGraph
    from halp_trt.importance import get_importance
    from halp_trt.train import evaluate, recalibrate_bn

    dense, x, data = calibration_setup()
    data = types.SimpleNamespace(
        train=data.train, val=TensorDataset(torch.randn(32, 3, 8, 8), torch.randint(0, 10, (32,)))
    )
    model = copy.deepcopy(dense)
    graph = ChannelGraph(model, (x,))
    batches = list(pareto.calibration_batches(data, 8))
    options = {g.id: (8, 8) for g in graph.prunable}
    pareto.MEASURED.clear()
    crit = pareto.sensitivity(data, metric="accuracy")(graph)
    crit.measure(batches, options)
    assert crit.facts["sensitivity_evaluations"] == 1 + 1 + 3
    score_set = pareto.fastnas_score_set(data, "train")

    def scored(keep) -> tuple[float, float]:
        m = copy.deepcopy(dense)
        if keep:
            ChannelGraph(m, (x,)).mask(keep)
        recalibrate_bn(m, batches, len(batches), "cpu")
        return evaluate(m, score_set)

    assert crit.full == pytest.approx(scored({}))
    l2 = get_importance("l2")(graph).scores()
    for group in graph.prunable:
        order = np.argsort(-l2[group.id], kind="stable")
        curve = crit.facts["sensitivity_curves"][str(group.id)]
        again = [scored({group.id: sorted(order[:k].tolist())}) for k in curve["widths"]]
        assert curve["loss"] == pytest.approx([v[0] for v in again])
        assert curve["accuracy"] == pytest.approx([v[1] for v in again])
    other = pareto.sensitivity(data, power=pareto.SENSITIVITY_POWER)(graph)  # loss
    other.measure(batches, options)
    assert other.facts["sensitivity_evaluations"] == 0
    assert other.facts["sensitivity_curves"] == crit.facts["sensitivity_curves"]
    assert other.facts["sensitivity_metric"] == "loss"


def test_tensor_digest_tells_values_dtypes_and_shapes_apart(pareto):
    a = torch.arange(6, dtype=torch.float32)
    base = pareto.tensor_digest([("w", a), ("n", torch.tensor(3))])
    assert base == pareto.tensor_digest([("w", a.clone()), ("n", torch.tensor(3))])
    for other in (
        [("w", a.reshape(2, 3)), ("n", torch.tensor(3))],
        [("w", a.double()), ("n", torch.tensor(3))],
        [("w", a + 1e-6), ("n", torch.tensor(3))],
        [("v", a), ("n", torch.tensor(3))],
    ):
        assert pareto.tensor_digest(other) != base
    bf16 = pareto.tensor_digest([("w", a.bfloat16())])  # NumPy has no bfloat16
    assert bf16 != pareto.tensor_digest([("w", a.half())])


def test_sensitivity_method_runs_end_to_end_and_records_its_curves(pareto, tmp_path):
    out = tmp_path / "p.json"
    argv = tiny_argv(
        tmp_path, "--seeds", "0",
        "--methods", "halp-sensitivity-calib,halp-sensitivity-max-calib,halp-sensitivity-acc-calib,"
        "halp-sensitivity,halp-sensitivity-tie",
        "--reference", "halp-sensitivity-calib", "--epochs", "1", "--pretrain-epochs", "1",
        "--step", "8", "--rounds", "3", "--no-feedback", "--out", str(out),
    )  # fmt: skip
    pareto.MEASURED.clear()
    assert pareto.main(argv) == 0
    run, *others = json.loads(out.read_text())["runs"]
    assert run["method"] == "halp-sensitivity-calib"
    for r in (run, *others):
        assert r["status"] == "ok", r.get("error")
        assert r["plan_predicted_ms"] <= r["target_ms"] * (1 + 1e-9)
    assert run["sensitivity_evaluations"] == 1 + sum(
        len(c["widths"]) for c in run["sensitivity_curves"].values()
    )
    *others, shipped, tie = others
    for other in others:  # the same dense model, measured once
        assert other["sensitivity_evaluations"] == 0
        assert other["sensitivity_curves"] == run["sensitivity_curves"]
    assert [r["sensitivity_metric"] for r in others] == ["loss", "accuracy"]
    # halp-trt's own scores on its calibration batches: measured by itself, same widths
    assert shipped["method"] == "halp-sensitivity"
    assert shipped["sensitivity_evaluations"] == run["sensitivity_evaluations"]
    assert shipped["sensitivity_metric"] == "accuracy"
    widths = {g: c["widths"] for g, c in shipped["sensitivity_curves"].items()}
    assert widths == {g: c["widths"] for g, c in run["sensitivity_curves"].items()}
    # the loss weighed in beside the accuracy: the same measurement, other scores
    assert tie["method"] == "halp-sensitivity-tie" and shipped["sensitivity_loss_weight"] == 0
    assert tie["sensitivity_loss_weight"] == pareto.SENSITIVITY_LOSS_WEIGHT
    assert tie["sensitivity_curves"] == shipped["sensitivity_curves"]


def test_run_under_a_flock_of_its_own_lock_is_refused_before_training(tmp_path):
    # `flock LOCK python bench/pareto.py ...` would wait for its own parent at the first
    # timing, after a seed's training: it is one line and exit code 2 before any.
    import fcntl
    import os
    import subprocess

    if not os.path.exists("/proc/locks"):
        pytest.skip("needs /proc/locks")
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "p.json"
    argv = [*tiny_argv(tmp_path, "--methods", "uniform", "--seeds", "0"), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(root)}
    with open(tmp_path / "lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        done = subprocess.run(
            [sys.executable, str(root / "bench/pareto.py"), *argv],
            capture_output=True, text=True, timeout=300, cwd=root, env=env,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "runs under" in err[0] and "dense" not in done.stdout
    assert not out.exists() and not (tmp_path / "t.db").exists()


def test_fastnas_bracket_searches_again_until_the_other_side(pareto):
    """FastNAS's second point: its FLOPs bound scaled by the latency still to cover, until
    its measured latency crosses the reference's; the tries and their ratios recorded;
    one that never crosses is an error naming them."""

    def latency(f):  # latency not proportional to FLOPs: a fixed part and a step
        return 0.3 + 0.6 * f + (0.05 if f > 0.75 else 0.0)

    searched = []

    def search(f):
        searched.append(f)
        return f

    def ratio_of(model, reference, x):
        return latency(model) / latency(reference)

    # The first model (FLOPs 0.7) is faster than a reference at 0.8: a looser bound.
    f, model, ratio, history = pareto.fastnas_bracket(search, 0.7, 0.7, 0.8, None, ratio_of)
    assert ratio >= 1 and model == f == searched[-1] > 0.7
    assert history[0] == {"flops_fraction": 0.7, "ratio": latency(0.7) / latency(0.8)}
    assert [h["flops_fraction"] for h in history[1:]] == searched
    # Slower than the reference: a tighter bound, under the reference's latency.
    f, _, ratio, _ = pareto.fastnas_bracket(search, 0.7, 0.7, 0.6, None, ratio_of)
    assert ratio <= 1 and f < 0.7
    # A reference no bound reaches: the bound stops at 0.99, then an error naming the tries.
    searched.clear()
    with pytest.raises(RuntimeError, match=r"no FLOPs bound .* 0\.7: 0\.215, 0\.99: 0\.282\)"):
        pareto.fastnas_bracket(search, 0.7, 0.7, 5.0, None, ratio_of)
    assert searched == [0.99]
    # A latency that creeps with the bound: the second try follows the first two's slope
    # to the bound's end (scaled by the ratio alone it would take 0.75, 0.80, 0.85).
    searched.clear()
    with pytest.raises(RuntimeError, match=r"0\.99: 0\.984\)"):
        pareto.fastnas_bracket(
            search, 0.7, 0.7, None, None, lambda m, r, x: (0.6 + 0.05 * m) / 0.66
        )
    assert searched == [0.7494, 0.99]
    # A bound that returns the model before it again is no new point: not timed, not
    # taken as crossing, and the next try goes further.
    searched.clear()
    timed = []

    def ratio_once(model, reference, x):
        timed.append(model)
        return 1.0 if model == "ceiling" else 0.97

    f, model, ratio, history = pareto.fastnas_bracket(
        lambda f: searched.append(f) or ("ceiling" if f >= 0.65 else "narrower"),
        "ceiling", 0.7, None, None, ratio_once, same=lambda a, b: a == b,
    )  # fmt: skip
    assert model == "narrower" and ratio == 0.97 and timed == ["ceiling", "narrower"]
    assert [h.get("same", False) for h in history] == [False, True, True, False]
    assert searched == [0.679, 0.6586, 0.6388]
    # Each try crosses nothing: BRACKET_TRIES searches at most.
    searched.clear()
    with pytest.raises(RuntimeError, match="no FLOPs bound"):
        pareto.fastnas_bracket(search, 0.1, 0.1, 0.5, None, lambda m, r, x: 0.5)
    assert len(searched) == pareto.BRACKET_TRIES


def test_fastnas_runs_a_second_point_across_the_reference_and_summarises_it(
    pareto, tmp_path, monkeypatch
):
    """The first seed's FastNAS runs before the table, its second point (``+``) after, on
    the same search (its profile kept), on the other side of the reference's measured
    latency: the summary interpolates between them (``bracketed``); the search's files
    are gone after the run."""
    import prune_quality

    dirs = []

    def fake_fastnas(dense, data, x, f, align, batch_size, workdir, score_on="train"):
        # FastNAS at FLOPs f, stood in for by uniform width at f (the search's own cost
        # is ModelOpt's); its checkpoint directory is the one kept for the second point.
        dirs.append(workdir)
        (workdir / "fastnas_search.pth").touch()
        return prune_quality.uniform_prune(dense, x[:1], f, align)

    def macs(model):
        return sum(
            m.in_channels * m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)
        )

    # Timed by conv MACs (deterministic), not by the clock.
    monkeypatch.setattr(pareto, "fastnas", fake_fastnas)
    monkeypatch.setattr(prune_quality, "measure_ratio", lambda a, b, x, **k: macs(a) / macs(b))
    out = tmp_path / "p.json"
    argv = tiny_argv(
        tmp_path, "--seeds", "0", "--methods", "halp-taylor-macs,modelopt-fastnas",
        "--reference", "halp-taylor-macs", "--epochs", "1", "--pretrain-epochs", "1",
        "--step", "8", "--rounds", "3", "--min-keep", "0", "--no-feedback", "--out", str(out),
    )  # fmt: skip
    assert pareto.main(argv) == 0
    result = json.loads(out.read_text())
    runs = {r["method"]: r for r in result["runs"]}
    first, plus = runs["modelopt-fastnas"], runs["modelopt-fastnas+"]
    assert first["status"] == plus["status"] == "ok", plus.get("error")
    assert len(set(dirs)) == 1 and not dirs[0].exists()  # one search, then removed
    ref = runs["halp-taylor-macs"]
    matching = plus["matching"]
    assert matching[0]["flops_fraction"] == first["flops_fraction"] == 0.6
    assert plus["flops_fraction"] == matching[-1]["flops_fraction"] != 0.6
    # on either side of the reference, the first's side told by its ratio
    assert (matching[0]["ratio"] < 1) == (plus["matched_ratio"] >= 1)
    assert {"measured_ratio", "val_acc", "finetune_s"} <= set(plus)
    eq = result["summary"]["equal_latency"]["0.6x"]["modelopt-fastnas"]
    measured = sorted([first["measured_ratio"], plus["measured_ratio"]])
    assert eq["bracketed"] == [measured[0] <= ref["measured_ratio"] <= measured[1]]
    assert result["summary"]["by_target"]["0.6x"]["modelopt-fastnas+"]["n"] == 1
