"""`halp-trt run` and `halp-trt report`: stages, resume, failures, the report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from halp_trt.pipeline import STAGES, RunState, pick_backend

from ..conftest import assert_outputs_declared, assert_user_error

BASE = ["run", "--model", "halp_trt.models:resnet20", "--data", "digits", "--target", "0.5x"]


def test_auto_backend_on_this_machine_says_why():
    import torch

    backend, why = pick_backend("auto")
    if not torch.cuda.is_available():
        assert backend == "onnxruntime" and "no CUDA GPU" in why
    assert pick_backend("torch") == ("torch", "as asked")


def test_state_invalidation_removes_later_outputs(tmp_path):
    for name in ("lut.db", "original.pt", "plan.json"):
        (tmp_path / name).write_text("x")
    state = RunState(args={}, backend="onnxruntime")
    state.stages = {
        "lut": {"outputs": ["lut.db"]},
        "baseline": {"outputs": ["original.pt"]},
        "prune": {"outputs": ["plan.json"]},
    }
    assert state.done("prune", tmp_path)
    state.invalidate_from("baseline", tmp_path)
    assert list(state.stages) == ["lut"]
    assert (tmp_path / "lut.db").exists()
    assert not (tmp_path / "original.pt").exists() and not (tmp_path / "plan.json").exists()
    state.save(tmp_path)
    assert RunState.load(tmp_path).stages == {"lut": {"outputs": ["lut.db"]}}


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--data", "npz:missing.npz"], "missing.npz"),
        (["--target", "half"], "--target must be like 0.5x"),
        (["--input-shape", "1,3,32"], "N,C,H,W"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--lut", "nope.db"], "--lut 'nope.db' does not exist"),
    ],
)
def test_bad_input_fails_before_any_stage(halp_cli, tmp_path, extra, fragment):
    args = [*BASE, "--input-shape", "1,3,32,32", "--out", "run", *extra]
    r = halp_cli(*args)
    assert_user_error(r, fragment)
    assert not (tmp_path / "run").exists()


def test_out_with_an_earlier_run_needs_resume(halp_cli, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps({"args": {}, "stages": {}}))
    r = halp_cli(*BASE, "--input-shape", "1,3,32,32", "--out", "run")
    assert_user_error(r, "add --resume")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file").write_text("x")
    r = halp_cli(*BASE, "--input-shape", "1,3,32,32", "--out", "other")
    assert_user_error(r, "not an empty directory")


@pytest.mark.slow
def test_run_fails_in_a_stage_then_resumes_to_a_report(halp_cli, tmp_path):
    small = [
        "--input-shape",
        "8,3,16,16",
        "--pretrain-epochs",
        "1",
        "--epochs",
        "2",
        "--steps",
        "2",
        "--verify-rounds",
        "5",
        "--no-progress",
        "--out",
        "run",
    ]
    args = ["run", "--model", "halp_trt.models:resnet20", "--data", "digits", *small]
    r = halp_cli(*args, "--target", "0.01x")
    assert_user_error(r, "stage prune failed", "kept in run: lut.db, original.pt", "--resume")
    assert "[lut] latency model checked on 4 random-width copies" in r.stdout
    state = json.loads((tmp_path / "run" / "run.json").read_text())
    assert list(state["stages"]) == ["lut", "baseline"]
    assert not (tmp_path / "run" / "pruned").exists()

    r = halp_cli(*args, "--target", "0.8x", "--resume", timeout=900)
    assert r.returncode == 0, r.stderr
    assert "[lut] done already" in r.stdout and "[baseline] done already" in r.stdout
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["backend"] == "onnxruntime"
    for key in ("latency_ms", "accuracy", "macs", "params"):
        assert report["baseline"][key] is not None and report["pruned"][key] is not None
    assert report["pruned"]["macs"] < report["baseline"]["macs"]
    assert report["speedup"] > 1.0
    assert report["artifacts"]["engine"] is None
    for rel in report["artifacts"].values():
        assert rel is None or (tmp_path / "run" / rel).exists()
    stages = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]
    assert set(stages) == set(STAGES)
    assert_outputs_declared(tmp_path / "run")
    md = (tmp_path / "run" / "report.md").read_text()
    assert "Measured speed-up" in md
    assert len(list((tmp_path / "run" / "plots").glob("*.png"))) == 4

    (tmp_path / "run" / "report.md").unlink()
    r = halp_cli("report", "run")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "report.md").exists()


def test_report_of_a_directory_without_one(halp_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_user_error(halp_cli("report", "empty"), "does not exist")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text("{not json")
    assert_user_error(halp_cli("report", "bad"), "not valid JSON")


def test_render_skips_plots_without_data(tmp_path):
    from halp_trt.report import render

    plots = render({"baseline": {}, "pruned": {}, "model": "m"}, tmp_path)
    assert plots == {}
    md = Path(tmp_path / "report.md").read_text()
    assert "not available for this run" in md


def test_predicted_vs_measured_plot_draws_a_relative_target_on_the_measured_original(
    tmp_path, monkeypatch
):
    """A 0.5x target is judged on the measured ratio, so its line is half the measured
    original, not the table's milliseconds (which differ from a wall clock's)."""
    import matplotlib.axes

    from halp_trt.prune.schedule import target_fraction
    from halp_trt.report import render

    assert target_fraction("0.5x") == 0.5 and target_fraction("3ms") is None
    assert target_fraction("abcx") is None and target_fraction(None) is None
    lines = []
    monkeypatch.setattr(
        matplotlib.axes.Axes, "axhline", lambda self, y, **kw: lines.append(("h", y))
    )
    monkeypatch.setattr(
        matplotlib.axes.Axes, "axvline", lambda self, x, **kw: lines.append(("v", x))
    )
    report = {
        "model": "m",
        "target": {"spec": "0.5x", "ms": 5.5},
        "baseline": {"latency_ms": 18.0, "predicted_ms": 11.0},
        "pruned": {"latency_ms": 8.5, "predicted_ms": 5.4},
    }
    plots = render(report, tmp_path)
    assert (tmp_path / plots["predicted_vs_measured"]).exists()
    assert lines == [("h", 9.0), ("v", 5.5)]
    lines.clear()
    render({**report, "target": {"spec": "6ms", "ms": 6.0}}, tmp_path)
    assert lines == [("h", 6.0)]


def _run_config(tmp_path, window=0.5, bn_batches=100, min_interval=40, short_run="calibrate"):
    from halp_trt.config import PruneConfig, RunConfig, TrainConfig

    return RunConfig(
        model="m", data="digits", input_shape="1,3,8,8", out=str(tmp_path), resume=True,
        prune=PruneConfig(
            "0.5x", prune_window=window, min_interval=min_interval, short_run=short_run
        ),
        backend="onnxruntime",
        train=TrainConfig(bn_batches=bn_batches),
    )  # fmt: skip


def _resumed(tmp_path, config, args):
    """Resume a run whose lut, baseline and prune stages are done, ``args`` in its
    run.json: the stages kept, and the run.json written."""
    from halp_trt.pipeline import Pipeline

    for name in ("lut.db", "original.pt", "plan.json"):
        (tmp_path / name).write_text("x")
    state = RunState(args=args, backend="onnxruntime")
    state.stages = {
        "lut": {"outputs": ["lut.db"]},
        "baseline": {"outputs": ["original.pt"]},
        "prune": {"outputs": ["plan.json"]},
    }
    state.save(tmp_path)
    pipeline = Pipeline(config)
    pipeline._open_state()
    return list(pipeline.state.stages), json.loads((tmp_path / "run.json").read_text())


def test_resume_prunes_again_when_the_window_changes(tmp_path):
    from halp_trt.pipeline import pinned_settings

    pinned = pinned_settings(_run_config(tmp_path))
    assert pinned["prune_window"] == 0.5
    # a run.json from before the window was pinned: it ran at the default, nothing redone
    before = {k: v for k, v in pinned.items() if k != "prune_window"}
    stages, saved = _resumed(tmp_path, _run_config(tmp_path), before)
    assert stages == ["lut", "baseline", "prune"] and saved["args"]["prune_window"] == 0.5
    # another window: pruning and everything after it is done again
    stages, saved = _resumed(tmp_path, _run_config(tmp_path, window=0.25), pinned)
    assert stages == ["lut", "baseline"] and saved["args"]["prune_window"] == 0.25
    assert not (tmp_path / "plan.json").exists() and (tmp_path / "original.pt").exists()


def _finished_run(tmp_path):
    """A run directory whose stages up to export are done (at a 0.5 window), and a
    Pipeline resuming it at a 0.25 window (prune and later to be redone) that skips
    the preflight; returns the pipeline and every file's bytes."""
    from halp_trt.pipeline import Pipeline, pinned_settings

    outputs = {"lut": ["lut.db"], "baseline": ["original.pt"], "prune": ["pruned/plan.json"]}
    outputs["export"] = ["original.onnx", "pruned.onnx"]
    (tmp_path / "pruned").mkdir()
    for name in (name for names in outputs.values() for name in names):
        (tmp_path / name).write_text(f"{name} of the first run")
    state = RunState(args=pinned_settings(_run_config(tmp_path)), backend="onnxruntime")
    state.stages = {stage: {"outputs": names} for stage, names in outputs.items()}
    state.save(tmp_path)
    pipeline = Pipeline(_run_config(tmp_path, window=0.25), say=lambda line: None)
    pipeline.preflight = lambda: None
    return pipeline, _files(tmp_path)


def _files(root):
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_a_failed_resume_leaves_the_previous_results_and_run_json_as_they_were(tmp_path):
    from halp_trt.errors import UserError
    from halp_trt.pipeline import PREVIOUS_DIR, StageError

    pipeline, before = _finished_run(tmp_path)

    def prune():
        # the outputs it replaces are set aside while it runs, not deleted
        assert not (tmp_path / "pruned/plan.json").exists()
        assert (tmp_path / PREVIOUS_DIR / "pruned/plan.json").exists()
        (tmp_path / "pruned").mkdir()  # the emptied directory went at the start
        (tmp_path / "pruned/plan.json").write_text("half written")
        (tmp_path / "pruned/log.json").write_text("a file the first run never had")
        (tmp_path / ".pruned.partial-1").mkdir()
        # the user's, put in the directory while the stage ran: not the stage's to delete
        (tmp_path / "notes.txt").write_text("the user's")
        (tmp_path / "pruned-copy").mkdir()
        (tmp_path / "pruned-copy" / "plan.json").write_text("the user's copy")
        (tmp_path / ".original.onnx.x1").write_text("another stage's name")
        raise UserError("latency target 0.01x is infeasible")

    pipeline._stage_prune = prune
    with pytest.raises(StageError, match="stage prune failed: .* infeasible; kept in .*pruned.onnx"):  # fmt: skip
        pipeline.run()
    files = _files(tmp_path)
    users = {"notes.txt", "pruned-copy/plan.json", ".original.onnx.x1"}
    assert set(files) == set(before) | users
    assert {k: v for k, v in files.items() if k not in users} == before
    assert not (tmp_path / PREVIOUS_DIR).exists()
    assert not (tmp_path / ".pruned.partial-1").exists()


@pytest.mark.parametrize(
    "stage, rel, written",
    [
        ("prune", "pruned", True),
        ("prune", "pruned/model.pt", True),
        ("prune", ".pruned.partial-x1", True),
        ("prune", ".pruned.partial-x1/model.pt", True),
        ("prune", "pruned-copy", False),
        ("prune", "prunedx/model.pt", False),
        ("prune", ".pruned", False),
        ("prune", "original.onnx", False),
        ("export", ".original.onnx.x1", True),
        ("export", ".original_fp32.onnx.x1", True),
        ("export", "original.onnx.bak", False),
        ("verify", ".verify.ab12.tmp.json", True),
        ("verify", ".verify_fp32.ab12.tmp.json", True),
        ("report", ".report-x1/plots/steps.png", True),
        ("report", "plots/channels.png", True),
        ("report", "report.html", False),
        ("engine", "pruned.engine.json", True),
        ("engine", ".hidden", False),
    ],
)
def test_a_failed_stage_deletes_only_its_own_names(stage, rel, written):
    from halp_trt.pipeline import _written_by

    assert _written_by(rel, stage) is written


def test_a_resume_drops_the_previous_results_once_the_redone_stage_succeeded(tmp_path):
    from halp_trt.pipeline import PREVIOUS_DIR, StageError

    pipeline, _ = _finished_run(tmp_path)

    def prune():
        (tmp_path / "pruned").mkdir()
        (tmp_path / "pruned/plan.json").write_text("new plan")
        return ["pruned/plan.json"], {}

    def export():
        (tmp_path / "original.onnx").write_text("written before the parity check failed")
        (tmp_path / "timing.cache").write_text("a cache the next try starts from")
        (tmp_path / "lut.db-journal").write_text("the table's journal")
        raise RuntimeError("parity")

    pipeline._stage_prune, pipeline._stage_export = prune, export
    with pytest.raises(StageError, match="stage export failed: parity"):
        pipeline.run()
    files = _files(tmp_path)
    assert files["pruned/plan.json"] == b"new plan" and "pruned.onnx" not in files
    # what the failed stage wrote is gone, what a resume continues from is kept
    assert "original.onnx" not in files and "timing.cache" in files
    assert "lut.db-journal" in files
    state = json.loads(files["run.json"])
    assert list(state["stages"]) == ["lut", "baseline", "prune"]
    assert state["args"]["prune_window"] == 0.25 and not (tmp_path / PREVIOUS_DIR).exists()


def test_a_resume_killed_in_the_redone_stage_is_put_back_at_the_next_start(tmp_path):
    from halp_trt.pipeline import PREVIOUS_DIR, Pipeline

    pipeline, before = _finished_run(tmp_path)
    pipeline._open_state()  # sets prune and export aside; then the process is killed
    (tmp_path / "pruned").mkdir()
    (tmp_path / "pruned/plan.json").write_text("half written")
    assert (tmp_path / PREVIOUS_DIR).is_dir() and "pruned.onnx" not in _files(tmp_path)
    again = Pipeline(_run_config(tmp_path), say=lambda line: None)
    again._open_state()
    assert list(again.state.stages) == ["lut", "baseline", "prune", "export"]
    assert _files(tmp_path) == before and not (tmp_path / PREVIOUS_DIR).exists()


def test_a_resume_deletes_what_a_killed_stage_left_and_nothing_else(tmp_path):
    """SIGKILL runs no cleanup: the next start deletes the entries a stage still to run
    writes that no completed stage lists (it would write them again), keeps the table's
    points, the timing cache and the user's files."""
    from halp_trt.pipeline import Pipeline

    pipeline, before = _finished_run(tmp_path)
    state = json.loads((tmp_path / "run.json").read_text())
    del state["stages"]["export"]  # killed in export: run.json was not updated
    (tmp_path / "run.json").write_text(json.dumps(state))
    (tmp_path / "pruned.onnx").unlink()
    (tmp_path / "original.onnx").write_text("half written")
    (tmp_path / ".pruned.onnx.x1").mkdir()
    (tmp_path / ".pruned.onnx.x1" / "model.onnx").write_text("staged")
    (tmp_path / ".verify.ab12.tmp.json").write_text("a later stage's temporary file")
    (tmp_path / "timing.cache").write_text("a cache the next try starts from")
    (tmp_path / "lut.db-journal").write_text("the table's journal")
    (tmp_path / "notes.txt").write_text("the user's")
    again = Pipeline(_run_config(tmp_path), say=lambda line: None)
    again._open_state()
    files = _files(tmp_path)
    assert list(again.state.stages) == ["lut", "baseline", "prune"]
    for rel in ("original.onnx", ".pruned.onnx.x1/model.onnx", ".verify.ab12.tmp.json"):
        assert rel not in files
    assert not (tmp_path / ".pruned.onnx.x1").exists()
    for rel in ("timing.cache", "lut.db-journal", "notes.txt", "pruned/plan.json", "lut.db"):
        assert rel in files
    assert files["pruned/plan.json"] == before["pruned/plan.json"]


def test_a_resume_refuses_an_input_that_is_an_output_it_redoes(tmp_path):
    """`--model R/pruned/...` to a resume that prunes again (through a link too): one line
    naming the flag and the stage, before anything is set aside; a file in the run
    directory that is none of the outputs redone is a fine input."""
    from halp_trt.errors import UserError

    pipeline, before = _finished_run(tmp_path)
    link = tmp_path.parent / f"{tmp_path.name}-link"
    link.symlink_to(tmp_path)
    for model in (str(tmp_path / "pruned/plan.json"), f"{link}/pruned/../pruned/plan.json"):
        pipeline.config.model = model
        with pytest.raises(UserError, match=r"--model .* is pruned/plan.json, an output of this run's prune stage, which this resume runs again: copy it out of"):  # fmt: skip
            pipeline.run()
        assert _files(tmp_path) == before
    pipeline.config.model = "m"
    pipeline.config.data = f"npz:{tmp_path / 'original.onnx'}"
    with pytest.raises(UserError, match=r"--data .* is original.onnx, an output of this run's export stage"):  # fmt: skip
        pipeline.run()
    assert _files(tmp_path) == before
    # an input in the run directory that is none of its outputs: the resume goes on
    pipeline.config.data = f"npz:{tmp_path / 'more-digits.npz'}"
    pipeline._stage_baseline = lambda: (_ for _ in ()).throw(RuntimeError("got to baseline"))
    with pytest.raises(Exception, match="got to baseline"):
        pipeline.run()


@pytest.mark.parametrize(
    "setting, default, before_it, redone, kept",
    [
        # before the minimum interval, steps were as close as the window made them:
        # pruning and all after it is redone
        ("min_interval", 40, 1, ["lut", "baseline"], "original.pt"),
        # before the BatchNorm re-estimate, no model had one: training is redone
        ("bn_batches", 100, 0, ["lut"], "lut.db"),
        # before short runs pruned before training, they pruned while training
        ("short_run", "calibrate", "train", ["lut", "baseline"], "original.pt"),
    ],
)
def test_resume_redoes_what_a_setting_pinned_later_changes(
    tmp_path, setting, default, before_it, redone, kept
):
    from halp_trt.pipeline import pinned_settings

    pinned = pinned_settings(_run_config(tmp_path))
    assert pinned[setting] == default
    # a run.json from before the setting was pinned ran as if set to before_it
    before = {k: v for k, v in pinned.items() if k != setting}
    stages, _ = _resumed(tmp_path, _run_config(tmp_path, **{setting: before_it}), before)
    assert stages == ["lut", "baseline", "prune"]
    stages, saved = _resumed(tmp_path, _run_config(tmp_path), before)
    assert stages == redone and saved["args"][setting] == default
    first_redone = {"lut": "lut.db", "baseline": "original.pt", "prune": "plan.json"}[
        ["lut", "baseline", "prune"][len(redone)]
    ]
    assert not (tmp_path / first_redone).exists() and (tmp_path / kept).exists()


@pytest.mark.parametrize(
    "logged, change, redone",
    [
        (2, {}, False),  # two steps while training: room for them, pruned alike
        (1, {}, True),  # one step: a short run, now pruned before training
        (None, {}, True),  # no readable log: pruned again
        (1, {"steps": 1}, False),  # one step asked for: kept as configured
        (1, {"calibration_batches": 8, "schedule": "oneshot"}, False),  # calibration asked
    ],
)
def test_resume_of_a_run_from_before_short_run_prunes_again_only_if_it_was_short(
    tmp_path, logged, change, redone
):
    from halp_trt.pipeline import pinned_settings

    config = _run_config(tmp_path)
    config = config.replace(prune=config.prune.replace(**change))
    before = {k: v for k, v in pinned_settings(config).items() if k != "short_run"}
    if logged is not None:
        (tmp_path / "pruned").mkdir()
        steps = [{"step": i + 1} for i in range(logged)]
        (tmp_path / "pruned" / "log.json").write_text(json.dumps({"steps": steps}))
    stages, saved = _resumed(tmp_path, config, before)
    assert stages == (["lut", "baseline"] if redone else ["lut", "baseline", "prune"])
    assert saved["args"]["short_run"] == "calibrate"


@pytest.mark.parametrize("device, expect", [(None, "cuda"), ("cuda:1", "cuda:1"), ("cpu", "cuda")])
def test_torch_backend_on_a_gpu_machine_is_the_gpus(monkeypatch, tmp_path, device, expect):
    # The torch backend's own default device is the CPU: on a GPU machine the run must
    # measure (and check a given table against) the GPU, not build a CPU table.
    import torch

    from halp_trt.config import PruneConfig, RunConfig, TrainConfig
    from halp_trt.pipeline import Pipeline

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config = RunConfig(
        model="halp_trt.models:resnet20", data="digits", input_shape="4,3,16,16",
        out=str(tmp_path / "run"), backend="torch", precision="fp16",
        prune=PruneConfig(target="0.5x"), train=TrainConfig(device=device),
    )  # fmt: skip
    pipeline = Pipeline(config)
    # Before the run's state is open (preflight) and after.
    assert pipeline._backend_options() == {"precision": "fp16", "device": expect}
    pipeline.state = RunState(args={}, backend="torch")
    assert pipeline._backend_options() == {"precision": "fp16", "device": expect}
    # Feedback times each plan on that GPU, as the table's layers were timed...
    assert pipeline._feedback() == {
        "backend": "torch", "threads": None,
        "runner_options": {"precision": "fp16", "device": expect},
    }  # fmt: skip
    # ... unless turned off.
    assert Pipeline(dataclasses.replace(config, feedback=False))._feedback() is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pipeline._backend_options() == {"precision": "fp16", "threads": config.threads}
    # On the CPU, feedback only at FP32.
    assert pipeline._feedback() is None
    cpu32 = Pipeline(dataclasses.replace(config, precision="fp32"))
    cpu32.state = RunState(args={}, backend="torch")
    assert cpu32._feedback() == {"backend": "torch", "threads": config.threads}
