"""`halp-trt prune` as a user runs it: outputs on success, one line and nothing on failure."""

from __future__ import annotations

import json
import re
import sys
import textwrap
import warnings

import pytest
import torch

import halp_trt as ht
from halp_trt.prune import PrunePlan

from ..conftest import assert_user_error

MODEL_PY = textwrap.dedent(
    """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F


    class Small(nn.Module):
        def __init__(self, broken=False):
            super().__init__()
            self.broken = broken
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(16)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x)))
            x = F.relu(self.bn2(self.conv2(x)))
            if self.broken:
                # Adds zero, but its gradient is infinite: importances become inf/NaN.
                x = x + torch.sqrt(x - x.detach())
            return self.fc(x.mean((2, 3)))


    def small():
        torch.manual_seed(0)
        return Small()


    def broken():
        torch.manual_seed(0)
        return Small(broken=True)
    """
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 1-channel model file and an analytic table for it at 1x1x8x8."""
    import importlib.util

    from lut_builder.backends import get_backend
    from lut_builder.build import build_table

    root = tmp_path_factory.mktemp("prune_cli")
    (root / "small.py").write_text(MODEL_PY)
    spec = importlib.util.spec_from_file_location("small_for_table", root / "small.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    info = {"model": "small.py:small", "input_shape": [1, 1, 8, 8]}
    build_table(
        root / "small.db", module.small(), torch.randn(1, 1, 8, 8), get_backend("analytic"),
        step=2, info=info,
    )  # fmt: skip
    return root


def common(setup, out, *extra, model="small"):
    # The model is imported as a module from the command's working directory (tmp_path),
    # so the pickled model.pt names an importable class.
    (out.parent / "small_model.py").write_text(MODEL_PY)
    return [
        "prune",
        "--model", f"small_model:{model}",
        "--data", "digits",
        "--lut", setup / "small.db",
        "--target", "0.9x",
        "--epochs", "2",
        "--steps", "3",
        "--min-interval", "1",  # 24 iterations: room for the 3 steps
        "--batch-size", "128",
        "--bundle", "2",
        "--no-progress",
        "--out", out,
        *extra,
    ]  # fmt: skip


def no_result(tmp_path, out):
    assert not out.exists()
    assert not list(tmp_path.glob(".*partial*")), "staging directory left behind"


def test_prune_writes_model_plan_and_log(halp_cli, setup, tmp_path):
    out = tmp_path / "out"
    r = halp_cli(*common(setup, out, "--seed", "3"))
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "after pruning: val acc" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["log.json", "model.pt", "plan.json"]
    plan = PrunePlan.load(out / "plan.json")
    assert plan.predicted_ms <= plan.target_ms
    assert plan.target == "0.9x" and plan.target_ms == pytest.approx(0.9 * plan.base_ms)
    assert plan.schedule["name"] == "exp" and plan.schedule["steps"] == 3
    assert plan.check["passed"]
    log = json.loads((out / "log.json").read_text())
    assert [s["step"] for s in log["steps"]] == [1, 2, 3]
    for s in log["steps"]:
        assert {"predicted_ms", "retained", "train_loss", "train_acc", "budget_ms"} <= set(s)
    assert len(log["epochs"]) == 2 and "val_acc" in log["epochs"][0]
    assert 0 <= log["before"]["val_acc"] <= 1 and 0 <= log["after"]["val_acc"] <= 1
    assert log["overhead"]["ratio"] > 0
    sys.path.insert(0, str(tmp_path))
    try:
        model = torch.load(out / "model.pt", weights_only=False)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("small_model", None)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    widths = {n: (m.in_channels, m.out_channels) for n, m in model.named_children() if "conv" in n}
    assert widths == {n: plan.widths[n] for n in widths}
    assert sum(w[1] for w in widths.values()) < 32


@pytest.mark.parametrize(
    "extra,fragments",
    [
        (["--target", "0.1x"], ["infeasible", "smallest latency"]),
        (["--input-shape", "1,1,16,16"], ["does not cover layer"]),
        (["--data", "npz:missing.npz"], ["missing.npz", "does not exist"]),
        (["--backend", "onnxruntime"], ["measured for another target", "backend"]),
        (["--target", "soon"], ["--target must be like 0.5x", "not 'soon'"]),
        (["--steps", "0"], ["--steps must be an integer >= 1, not 0"]),
        (["--importance", "random"], ["--importance is not usable", "unknown importance"]),
        (["--interval", "5", "--interval-epochs", "1"], ["--interval-epochs cannot be given"]),
        (["--interval", "100000"], ["--interval does not fit the run"]),
        (["--lr", "-1"], ["--lr must be a number > 0.0, not -1.0"]),
        (["--min-keep", "1"], ["--min-keep must be a number >= 0.0 and < 1.0, not 1.0"]),
        (["--bn-batches", "-1"], ["--bn-batches must be an integer >= 0, not -1"]),
        (["--min-interval", "0"], ["--min-interval must be an integer >= 1, not 0"]),
        (["--target", "0.3x", "--min-keep", "0.9"], ["infeasible", "lower min_keep"]),
        (["--feedback"], ["latency feedback times plans on this machine's CPU", "analytic"]),
        (
            ["--calibration-batches", "4", "--schedule", "exp"],
            ["--calibration-batches prunes once, before training", "oneshot schedule"],
        ),
        (["--calibration-batches", "1000"], ["asked for 1000 minibatches and got 11"]),
        (
            ["--importance", "sensitivity"],
            ["--calibration-batches must be at least 1 with importance sensitivity"],
        ),
    ],
    ids=[
        "infeasible",
        "uncovered",
        "data",
        "fingerprint",
        "target",
        "steps",
        "importance",
        "two-intervals",
        "long-interval",
        "lr",
        "min-keep",
        "bn-batches",
        "min-interval",
        "floor-infeasible",
        "feedback-on-analytic-table",
        "calibration-with-steps",
        "calibration-past-the-data",
        "sensitivity-without-calibration",
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_result(halp_cli, setup, tmp_path, extra, fragments):
    out = tmp_path / "out"
    assert_user_error(halp_cli(*common(setup, out), *extra), *fragments)
    no_result(tmp_path, out)


def test_nan_importance_mid_training_leaves_no_result(halp_cli, setup, tmp_path):
    out = tmp_path / "out"
    result = halp_cli(*common(setup, out, "--interval", "1", model="broken"))
    assert_user_error(result, "importance of group", "diverged")
    no_result(tmp_path, out)


def test_a_run_too_short_for_the_steps_gets_fewer_and_a_note(halp_cli, setup, tmp_path):
    out = tmp_path / "out"
    args = common(setup, out)
    args[args.index("--steps") + 1] = "30"
    result = halp_cli(*args)
    assert result.returncode == 0, result.stderr
    notes = [ln for ln in result.stdout.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "too few for 30 pruning steps" in notes[0], result.stdout
    log = json.loads((out / "log.json").read_text())
    steps = len(log["steps"])
    assert 1 <= steps < 30 and f"pruning in {steps} steps, one every 1 iterations" in notes[0]
    # one step per iteration over the first half of the run
    assert [s["iteration"] for s in log["steps"]] == list(range(1, steps + 1))
    room = int(re.search(r"(\d+) training iterations", notes[0]).group(1))
    assert steps == room // 2


def test_steps_closer_than_the_minimum_interval_become_one_shot(halp_cli, setup, tmp_path):
    out = tmp_path / "out"
    args = common(setup, out)
    del args[args.index("--min-interval") : args.index("--min-interval") + 2]
    result = halp_cli(*args, "--short-run", "train")
    assert result.returncode == 0, result.stderr
    notes = [ln for ln in result.stdout.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "at least 40 apart: pruning in one step" in notes[0]
    log = json.loads((out / "log.json").read_text())
    # where the first of the 3 steps asked would have been, a third into the window
    room = int(re.search(r"(\d+) training iterations", notes[0]).group(1))
    assert [s["iteration"] for s in log["steps"]] == [room // 2 // 3]
    assert notes[0].endswith(f"at iteration {room // 2 // 3}")
    assert PrunePlan.load(out / "plan.json").schedule["steps"] == 1


def test_a_run_too_short_for_two_steps_prunes_before_training(halp_cli, setup, tmp_path):
    # The default (--short-run calibrate): where the window holds one step 40 apart, the
    # step comes before training, scored on 8 minibatches, and the log says which.
    out = tmp_path / "out"
    args = common(setup, out)
    del args[args.index("--min-interval") : args.index("--min-interval") + 2]
    result = halp_cli(*args)
    assert result.returncode == 0, result.stderr
    notes = [ln for ln in result.stdout.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1, result.stdout
    assert "leave room for one pruning step, not two 40 apart" in notes[0]
    assert "pruning once before training, scored on" in notes[0]
    assert "one step before training, scored on" in result.stdout
    log = json.loads((out / "log.json").read_text())
    ((step, iteration, minibatches),) = [
        (s["step"], s["iteration"], s["minibatches"]) for s in log["steps"]
    ]
    assert (step, iteration) == (1, 0) and 1 <= minibatches <= 8
    assert f"scored on {minibatches} minibatches of the dense model" in notes[0]
    assert log["prune_config"]["schedule"] == "oneshot"
    assert log["prune_config"]["calibration_batches"] == minibatches
    assert log["prune_config"]["short_run"] == "calibrate"
    plan = PrunePlan.load(out / "plan.json")
    assert plan.schedule["name"] == "oneshot" and plan.predicted_ms <= plan.target_ms


def test_feedback_follows_the_table_and_refuses_another_machine(setup, monkeypatch):
    from halp_trt.errors import UserError
    from halp_trt.prune import feedback as fb
    from halp_trt.train.prune_job import prune_classifier
    from lut_builder import LatencyTable
    from lut_builder.backends.base import host_fingerprint

    here = f"cpu: {host_fingerprint()['cpu']}"

    class Table:
        path, threads = "t.db", 2
        fingerprint = {"backend": "onnxruntime", "precision": "fp32", "device": here}

    assert fb.feedback_from_table(Table()) == {"backend": "onnxruntime", "threads": 2}
    # A table that records its CPU's flags must have this CPU's; older tables have none.
    flags = host_fingerprint()["cpu_flags"]
    if flags is not None:
        same = Table()
        same.fingerprint = {**Table.fingerprint, "host": {"cpu_flags": flags}}
        assert fb.feedback_from_table(same)["backend"] == "onnxruntime"
        other_flags = sorted(set(flags) ^ {"avx512f", "amx_tile"})
        other = Table()
        other.fingerprint = {**Table.fingerprint, "host": {"cpu_flags": other_flags}}
        with pytest.raises(UserError, match="other CPU extensions") as err:
            fb.feedback_from_table(other)
        assert "build the table on this machine" in str(err.value)
    for change, fragment in [
        ({"device": "cpu: Another CPU"}, "times this machine"),
        ({"precision": "int8"}, "times FP32 models"),
        ({"backend": "tensorrt", "device": "cuda: NVIDIA H100"}, "this machine's CPU"),
        ({"backend": "analytic", "device": "analytic"}, "this machine's CPU"),
    ]:
        other = Table()
        other.fingerprint = {**Table.fingerprint, **change}
        with pytest.raises(UserError, match=fragment):
            fb.feedback_from_table(other)

    # A torch table of a GPU is timed on this process's GPU when it is that GPU model, at
    # the table's precision, layout and graph replay; anything else is one line.
    import torch

    gpu = Table()
    gpu.fingerprint = {
        "backend": "torch", "precision": "fp16", "device": "NVIDIA H200",
        "options": {"channels_last": True, "cuda_graph": True, "inner": 20},
    }  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="has no CUDA device"):
        fb.feedback_from_table(gpu)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "NVIDIA H200" if i == 1 else "?")
    assert fb.feedback_from_table(gpu) == {
        "backend": "torch", "threads": None,
        "runner_options": {
            "device": "cuda:1", "precision": "fp16", "channels_last": True, "cuda_graph": True,
        },
    }  # fmt: skip
    for change, fragment in [
        ({"device": "NVIDIA H100"}, r"this machine's GPU \(NVIDIA H200\)"),
        ({"precision": "int8"}, "fp32, fp16 or bf16"),
    ]:
        other = Table()
        other.fingerprint = {**gpu.fingerprint, **change}
        with pytest.raises(UserError, match=fragment):
            fb.feedback_from_table(other)
    monkeypatch.undo()

    # prune_classifier(feedback=True) times every step on the backend the table names.
    seen = []
    real = fb.MeasuredLatency

    class Recording(real):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(
        fb, "feedback_from_table", lambda t: {"backend": "onnxruntime", "threads": 1}
    )
    monkeypatch.setattr("halp_trt.prune.MeasuredLatency", Recording)
    sys.path.insert(0, str(setup))
    try:
        import importlib

        small = importlib.import_module("small").small
        prune = ht.PruneConfig(target="0.9x", steps=2, bundle=2)
        train = ht.TrainConfig(epochs=1, batch_size=256, device="cpu")
        with (
            LatencyTable.open(setup / "small.db") as table,
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            result = prune_classifier(small(), "digits", table, prune, train, progress=False,
                                      say=lambda *_: None, feedback=True)  # fmt: skip
    finally:
        sys.path.remove(str(setup))
        sys.modules.pop("small", None)
    assert seen == [{"backend": "onnxruntime", "threads": 1}]
    assert result.log["feedback"]["backend"] == "onnxruntime"
    # Every step was timed: measured, or, on a machine too busy to measure it (as a loaded
    # CI runner can be), said so in a warning naming the step, its plan left as predicted.
    busy = {
        int(m.group(1))
        for w in caught
        if (m := re.search(r"latency feedback at step (\d+): .* too busy", str(w.message)))
    }
    steps = result.log["steps"]
    assert steps  # a short run prunes in one step
    for s in steps:
        assert (s["measured_ratio"] is None) == (s["step"] in busy), (s, busy)
        assert s["measured_ratio"] is None or s["measured_ratio"] > 0
    # Each step's measurement comes with its interval, in the steps and the feedback log.
    widths = result.log["feedback"]["steps_measured_halfwidth"]
    assert widths == [s["measured_halfwidth"] for s in steps]
    assert all(0 <= w <= fb.FEEDBACK_TRUST for w in widths if w is not None)


def test_prune_and_run_share_their_training_options_and_name_every_criterion():
    from halp_trt.cli import build_parser
    from halp_trt.cli import run as run_cli
    from halp_trt.importance import get_importance, list_importances

    built_in = [
        n for n in list_importances() if get_importance(n).__module__.startswith("halp_trt")
    ]
    assert {"taylor-weights", "taylor-abs", "taylor-abs-mean", "taylor-l2", "sp-lamp"} <= set(
        built_in
    )
    sub = next(a for a in build_parser()._actions if a.choices and "prune" in a.choices)
    for command in ("prune", "run"):
        action = next(a for a in sub.choices[command]._actions if a.dest == "importance")
        named = set(re.findall(r"[a-z0-9-]+", action.help))
        assert action.default == "auto" and "auto" in named
        assert not set(built_in) - named, f"{command} --help does not name them"
    args = sub.choices["run"].parse_args(
        [
            "--model",
            "m",
            "--data",
            "digits",
            "--input-shape",
            "1,3,8,8",
            "--target",
            "0.5x",
            "--out",
            "o",
            "--weight-decay",
            "0.001",
            "--importance",
            "taylor-abs-mean",
            "--min-keep",
            "0.2",
            "--calibration-batches",
            "8",
        ]
    )
    cfg = run_cli.config(args)
    assert cfg.train.weight_decay == 0.001
    assert (cfg.prune.importance, cfg.prune.min_keep) == ("taylor-abs-mean", 0.2)
    assert (cfg.prune.calibration_batches, cfg.prune.schedule) == (8, "oneshot")


@pytest.mark.parametrize("importance", ["taylor-abs", "sensitivity"])
def test_calibration_batches_prune_once_before_training(halp_cli, setup, tmp_path, importance):
    out = tmp_path / "out"
    result = halp_cli(*common(setup, out, "--calibration-batches", "3", "--importance", importance))
    assert result.returncode == 0, result.stderr
    assert "one step before training, scored on 3 minibatches" in result.stdout
    log = json.loads((out / "log.json").read_text())
    assert [(s["step"], s["iteration"], s["minibatches"]) for s in log["steps"]] == [(1, 0, 3)]
    assert log["prune_config"]["calibration_batches"] == 3
    assert log["prune_config"]["schedule"] == "oneshot"
    plan = PrunePlan.load(out / "plan.json")
    assert plan.schedule["name"] == "oneshot" and plan.predicted_ms <= plan.target_ms


def test_the_pruners_share_of_the_time_reads_as_a_share_or_a_multiple():
    from halp_trt.train.prune_job import overhead_phrase

    assert overhead_phrase(0.132) == "pruning machinery 13.2% on top of its iterations' training"
    # Feedback timing a small model's plans dominates its training: a multiple, not 3395.7%.
    assert overhead_phrase(33.957) == "pruning machinery 34.0x its iterations' training time"
