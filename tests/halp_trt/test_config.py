"""Typed configs (validation naming the field, JSON round trip), schedule fitting,
criterion objects and re-applying a saved plan."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

import halp_trt as ht
from halp_trt.config import ConfigError, PruneConfig, RunConfig, TrainConfig
from halp_trt.errors import PruningError
from halp_trt.importance import Importance, ImportanceError, resolve_importance
from halp_trt.models import CifarResNet
from halp_trt.prune import fit_schedule
from halp_trt.prune.schedule import MIN_INTERVAL, ScheduleFit

from .test_prune_support import batches, small_resnet, small_resnet_table, train_iterations


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return small_resnet_table(tmp_path_factory)


def run_config(**changes):
    base = dict(
        model="halp_trt.models:resnet20",
        data="digits",
        input_shape="16,3,16,16",
        out="runs/x",
        prune=PruneConfig(target="0.5x"),
    )
    return RunConfig(**{**base, **changes})


# -- the public API ---------------------------------------------------------------------


def test_top_level_names_resolve_and_import_is_light():
    import subprocess
    import sys

    assert set(ht.__all__) == {"__version__", *ht._EXPORTS}
    for name in ht.__all__:
        assert getattr(ht, name) is not None, name
    code = "import sys, halp_trt; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "import halp_trt must not load torch"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ht.nope  # noqa: B018


# -- validation: one error naming the field ---------------------------------------------


@pytest.mark.parametrize(
    "cls,kwargs,message",
    [
        (PruneConfig, {"target": "fast"}, "PruneConfig.target must be like 0.5x"),
        (PruneConfig, {"target": "1.5x"}, "PruneConfig.target must be below 1x (1x and above prune nothing), not '1.5x'"),
        (PruneConfig, {"target": "1x"}, "PruneConfig.target must be below 1x"),
        (PruneConfig, {"target": "0.5x", "steps": 0}, "PruneConfig.steps must be an integer >= 1, not 0"),
        (PruneConfig, {"target": "0.5x", "steps": 2.5}, "PruneConfig.steps must be an integer"),
        (PruneConfig, {"target": "0.5x", "schedule": "cubic"}, "PruneConfig.schedule must be one of exp, linear, oneshot"),
        (PruneConfig, {"target": "0.5x", "importance": "random"}, "PruneConfig.importance is not usable"),
        (PruneConfig, {"target": "0.5x", "cost_model": "both"}, "PruneConfig.cost_model must be one of None, one-sided, joint"),
        (PruneConfig, {"target": "0.5x", "interval": 4, "interval_epochs": 1.0}, "interval_epochs cannot be given with interval"),
        (PruneConfig, {"target": "0.5x", "bundle": 0}, "PruneConfig.bundle must be an integer >= 1"),
        (PruneConfig, {"target": "0.5x", "prune_window": 0}, "PruneConfig.prune_window must be a fraction of the training in (0, 1]"),
        (PruneConfig, {"target": "0.5x", "prune_window": 1.5}, "PruneConfig.prune_window must be a fraction"),
        (PruneConfig, {"target": "0.5x", "prune_window": True}, "PruneConfig.prune_window must be a fraction"),
        (PruneConfig, {"target": "0.5x", "min_keep": 1.0}, "PruneConfig.min_keep must be a number >= 0.0 and < 1.0"),
        (PruneConfig, {"target": "0.5x", "calibration_batches": 8}, "PruneConfig.calibration_batches prunes once, before training: it needs the oneshot schedule"),
        (PruneConfig, {"target": "0.5x", "schedule": "oneshot", "calibration_batches": -1}, "PruneConfig.calibration_batches must be an integer >= 0"),
        (TrainConfig, {"lr": float("nan")}, "TrainConfig.lr must be a number > 0.0"),
        (TrainConfig, {"momentum": 1.0}, "TrainConfig.momentum must be a number >= 0.0 and < 1.0"),
        (RunConfig, {"backend": "cuda"}, "RunConfig.backend must be one of auto, tensorrt, torch, onnxruntime"),
        (RunConfig, {"input_shape": "1,3,32"}, "RunConfig.input_shape must be N,C,H,W"),
        (RunConfig, {"input_shape": (1, 3, 0, 4)}, "RunConfig.input_shape must be N,C,H,W"),
        (RunConfig, {"train": TrainConfig(epochs=0)}, "TrainConfig.epochs must be at least 1"),
        (RunConfig, {"verify_rounds": 0}, "RunConfig.verify_rounds must be an integer >= 1"),
        (RunConfig, {"feedback": "yes"}, "RunConfig.feedback must be one of True, False"),
        (RunConfig, {"model": ""}, "RunConfig.model must be a non-empty string"),
        (RunConfig, {"weights": ""}, "RunConfig.weights must be None or the path of a state_dict file"),
        (RunConfig, {"weights": 3}, "RunConfig.weights must be None or the path"),
    ],
)  # fmt: skip
def test_a_bad_value_is_one_error_naming_the_field(cls, kwargs, message):
    with pytest.raises(ConfigError) as info:
        run_config(**kwargs) if cls is RunConfig else cls(**kwargs)
    text = str(info.value)
    assert message in text and "\n" not in text
    assert info.value.cli_message().startswith(f"--{info.value.field.replace('_', '-')} ")


def test_json_round_trip(tmp_path):
    cfg = run_config(
        prune=PruneConfig(target="3ms", importance="sp-lamp", steps=4, frozen_layers=["fc"]),
        train=TrainConfig(epochs=2, lr=0.1),
        lut="t.db",
    )
    assert cfg.input_shape == (16, 3, 16, 16) and cfg.prune.frozen_layers == ("fc",)
    again = RunConfig.from_json(cfg.to_json())
    assert again == cfg
    path = tmp_path / "run.json"
    cfg.to_json(path)
    assert RunConfig.from_json(path) == cfg
    assert json.loads(path.read_text())["prune"]["importance"] == "sp-lamp"
    with pytest.raises(ConfigError, match="RunConfig.epochs is not a field"):
        RunConfig.from_dict({**cfg.to_dict(), "epochs": 3})
    with pytest.raises(ConfigError, match="PruneConfig.steps must be an integer >= 1"):
        RunConfig.from_dict({**cfg.to_dict(), "prune": {"target": "0.5x", "steps": -1}})
    with pytest.raises(ht.UserError, match="malformed"):
        RunConfig.from_json("{not json")
    assert cfg.replace(verify_rounds=5).verify_rounds == 5
    with pytest.raises(ConfigError, match="verify_rounds"):
        cfg.replace(verify_rounds=0)


# -- the schedule fitted to the run -----------------------------------------------------


def test_default_schedule_spreads_steps_over_the_first_half():
    fit = fit_schedule(30, 2400)
    assert (fit.steps, fit.interval, fit.note) == (30, 40, "")
    assert fit_schedule(30, 2400, schedule="oneshot").steps == 1


def test_oneshot_prunes_where_the_first_step_would_and_fine_tunes_the_rest():
    # Not at the end of the window: the final widths keep the rest of the run.
    one = fit_schedule(30, 2400, schedule="oneshot")
    assert (one.steps, one.interval, one.note) == (1, 40, "")
    assert fit_schedule(5, 46, schedule="oneshot").interval == 4
    assert fit_schedule(5, 46, schedule="oneshot", interval=1).interval == 1
    assert fit_schedule(5, 3, schedule="oneshot").interval == 1  # shorter than the steps


def test_prune_window_sets_the_share_of_training_the_steps_take():
    assert PruneConfig(target="0.5x", steps=5).fit_schedule(1000).interval == 100
    short = PruneConfig(target="0.5x", steps=5, prune_window=0.25).fit_schedule(1000)
    assert (short.steps, short.interval) == (5, 50)
    whole = PruneConfig(target="0.5x", steps=5, prune_window=1.0).fit_schedule(1000)
    assert whole.interval == 200 and whole.steps * whole.interval <= 1000
    # an explicit interval wins over the window
    assert (
        PruneConfig(target="0.5x", steps=5, interval=7, prune_window=0.25)
        .fit_schedule(1000)
        .interval
        == 7
    )
    # the command lines pass it on
    from halp_trt.cli import prune as prune_cli
    from halp_trt.cli import run as run_cli

    argv = ["--model", "m", "--data", "digits", "--target", "0.5x", "--prune-window", "0.25"]
    argv += ["--min-interval", "7"]
    for cli, extra, read in (
        (prune_cli, ["--lut", "t.lut"], lambda a: prune_cli.configs(a)[0]),
        (run_cli, ["--input-shape", "1,3,8,8", "--out", "o"], lambda a: run_cli.config(a).prune),
    ):
        args = cli.add_parser(argparse.ArgumentParser().add_subparsers()).parse_args(
            [*argv, *extra]
        )
        assert (read(args).prune_window, read(args).min_interval) == (0.25, 7)


def test_a_run_too_short_for_two_steps_prunes_before_training():
    from halp_trt.prune.schedule import SHORT_RUN_BATCHES

    cfg = PruneConfig(target="0.5x", steps=5)
    # 132 iterations: a window of 66, room for one step 40 apart, at iteration 13
    short, note = cfg.for_run(132, 22)
    assert (short.schedule, short.calibration_batches) == ("oneshot", SHORT_RUN_BATCHES)
    assert short.target == "0.5x" and short.importance == cfg.importance
    assert "132 training iterations leave room for one pruning step" in note
    assert "at iteration 13" in note and "--short-run train" in note
    # an epoch of fewer minibatches than that: all of them
    assert cfg.for_run(132, 5)[0].calibration_batches == 5
    # room for two steps (160 iterations: two 40 apart in the first 80): HALP's loop
    assert cfg.fit_schedule(160).steps == 2
    assert cfg.for_run(160, 20) == (cfg, "")
    # kept as configured: asked for, or placed by hand, or one step asked
    for kept in (
        cfg.replace(short_run="train"),
        cfg.replace(interval=13),
        cfg.replace(interval_epochs=0.5),
        cfg.replace(start=4),
        cfg.replace(steps=1),
        cfg.replace(schedule="oneshot"),
        cfg.replace(schedule="oneshot", calibration_batches=4),
    ):
        assert kept.for_run(132, 22) == (kept, "")
    with pytest.raises(ConfigError, match="PruneConfig.short_run must be one of calibrate, train"):
        PruneConfig(target="0.5x", short_run="yes")
    # the command lines pass it on (default calibrate)
    from halp_trt.cli import prune as prune_cli
    from halp_trt.cli import run as run_cli

    argv = ["--model", "m", "--data", "digits", "--target", "0.5x"]
    for cli, extra, read in (
        (prune_cli, ["--lut", "t.lut"], lambda a: prune_cli.configs(a)[0]),
        (run_cli, ["--input-shape", "1,3,8,8", "--out", "o"], lambda a: run_cli.config(a).prune),
    ):
        parser = cli.add_parser(argparse.ArgumentParser().add_subparsers())
        assert read(parser.parse_args([*argv, *extra])).short_run == "calibrate"
        chosen = parser.parse_args([*argv, *extra, "--short-run", "train"])
        assert read(chosen).short_run == "train"


def test_a_short_run_gets_fewer_steps_and_a_note():
    fit = fit_schedule(30, 20, min_interval=1)
    assert fit.steps == 10 and fit.interval == 1
    assert "20 training iterations are too few for 30 pruning steps" in fit.note
    assert fit.steps * fit.interval <= 20


def test_spread_steps_stay_halps_interval_apart_down_to_one_shot():
    # bench/pareto.py's 2-epoch runs: 46 iterations, a window of 23, 5 steps 4 apart
    # before; now one step where the first would have been, with a note
    fit = fit_schedule(5, 46)
    assert (fit.steps, fit.interval) == (1, 4)
    assert fit.note.endswith("at least 40 apart: pruning in one step, at iteration 4")
    assert fit_schedule(5, 46, start=10).note.endswith("in one step, at iteration 13")
    assert fit_schedule(5, 46, min_interval=1) == fit_schedule(5, 46, min_interval=4)
    assert fit_schedule(5, 46, min_interval=1).steps == 5
    # fewer steps spread over the whole window, each at least 40 apart
    two = fit_schedule(5, 200)
    assert (two.steps, two.interval) == (2, 50) and "pruning in 2 steps" in two.note
    short = fit_schedule(30, 2398)  # a window of 1199: 29 steps fit 40 apart
    assert (short.steps, short.interval) == (29, 41)
    assert short.steps * short.interval <= 1199
    assert fit_schedule(30, 2400) == fit_schedule(30, 2400, min_interval=40)  # just fits
    assert PruneConfig(target="0.5x", steps=5).min_interval == MIN_INTERVAL == 40
    assert PruneConfig(target="0.5x", steps=5).fit_schedule(46).steps == 1
    assert PruneConfig(target="0.5x", steps=5, min_interval=1).fit_schedule(46).steps == 5
    # an explicit interval is the user's: kept
    assert fit_schedule(5, 100, interval=10) == ScheduleFit(steps=5, interval=10)
    assert PruneConfig(target="0.5x", steps=5, interval=4).fit_schedule(46).steps == 5
    with pytest.raises(PruningError, match="minimum interval"):
        fit_schedule(5, 46, min_interval=0)
    with pytest.raises(ConfigError, match="PruneConfig.min_interval"):
        PruneConfig(target="0.5x", min_interval=0)


def test_interval_in_iterations_or_epochs():
    assert fit_schedule(5, 1000, interval=40) == fit_schedule(5, 1000, interval=40, start=0)
    assert fit_schedule(5, 1000, interval=40).steps == 5
    by_epochs = fit_schedule(5, 1000, interval_epochs=0.5, iterations_per_epoch=100)
    assert (by_epochs.steps, by_epochs.interval) == (5, 50)
    short = fit_schedule(5, 100, interval=30)
    assert short.steps == 3 and "pruning in 3 steps" in short.note
    with pytest.raises(PruningError, match="does not fit"):
        fit_schedule(5, 100, interval=101)
    with pytest.raises(ConfigError, match="PruneConfig.interval does not fit the run"):
        PruneConfig(target="0.5x", interval=500).fit_schedule(100)


def test_pruner_from_config_uses_the_fitted_schedule(table):
    torch.manual_seed(0)
    model, x = small_resnet(), torch.randn(1, 3, 16, 16)
    notes = []
    cfg = PruneConfig(target="0.6x", steps=30, min_interval=1)
    pruner = ht.Pruner.from_config(model, x, table, cfg, total_iterations=12, say=notes.append)
    assert (pruner.steps, pruner.interval) == (6, 1) and len(notes) == 1
    default = cfg.replace(min_interval=MIN_INTERVAL)
    pruner = ht.Pruner.from_config(model, x, table, default, total_iterations=12, say=print)
    assert (pruner.steps, pruner.interval) == (1, 1)
    with pytest.raises(ConfigError, match="interval must be given"):
        ht.Pruner.from_config(model, x, table, cfg)
    fixed = ht.Pruner.from_config(model, x, table, cfg.replace(steps=3, interval=2))
    assert (fixed.steps, fixed.interval) == (3, 2)
    assert fixed.min_keep == ht.prune.pruner.AUTO_ABOVE_MIN_KEEP == 0.5  # auto at 0.6x
    no_floor = ht.Pruner.from_config(model, x, table, cfg.replace(interval=2, min_keep=0.0))
    assert no_floor.min_keep == 0.0


# -- criterion objects ------------------------------------------------------------------


class ByIndex(Importance):
    """Scores channels by their index: the last channels are the most important."""

    def scores(self):
        return {g.id: np.arange(g.size, dtype=np.float64) for g in self.groups}


def test_importance_by_name_class_factory_or_module_attr(table):
    assert resolve_importance("taylor")[1] == "taylor"
    factory, name = resolve_importance(ByIndex)
    assert factory is ByIndex and name == f"{__name__}:ByIndex"
    assert resolve_importance(name)[0] is ByIndex
    assert resolve_importance(lambda g: ByIndex(g))[1].endswith("<lambda>")
    torch.manual_seed(0)
    model, x = small_resnet(), torch.randn(1, 3, 16, 16)
    with pytest.raises(ImportanceError, match="is an instance"):
        resolve_importance(ByIndex(ht.ChannelGraph(model, x)))
    with pytest.raises(ImportanceError, match="does not import"):
        resolve_importance("no_such_module:Crit")
    pruner = ht.Pruner(model, x, table, "0.6x", importance=ByIndex, steps=1, interval=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    train_iterations(model, opt, pruner, batches(1))
    _, plan = pruner.finalize()
    assert plan.importance == name
    for gid, kept in plan.keep.items():  # top-k by index: the last channels stay
        size = plan.sizes[gid]
        assert list(kept) == list(range(size - len(kept), size))
    with pytest.raises(ImportanceError, match="not an Importance"):
        ht.Pruner(small_resnet(), x, table, "0.6x", importance=lambda g: object())


# -- re-applying a saved plan -----------------------------------------------------------


def test_apply_plan_to_a_fresh_copy_matches_the_pruned_model(table, tmp_path):
    torch.manual_seed(0)
    model, x = small_resnet(), torch.randn(1, 3, 16, 16)
    pruner = ht.Pruner(model, x, table, "0.6x", importance="l2", steps=2, interval=1)
    train_iterations(model, torch.optim.SGD(model.parameters(), lr=0.05), pruner, batches(2))
    masked = {k: v.clone() for k, v in model.state_dict().items()}  # a dense checkpoint
    slim, plan = pruner.finalize(str(tmp_path / "plan.json"))
    slim.eval()
    probe = torch.randn(4, 3, 16, 16)
    # From the masked checkpoint (dense shapes): the same slim network.
    fresh = small_resnet()
    fresh.load_state_dict(masked)
    applied = ht.apply_plan(fresh, tmp_path / "plan.json", x).eval()
    with torch.no_grad():
        torch.testing.assert_close(applied(probe), slim(probe), rtol=1e-4, atol=1e-5)
    # From the architecture alone, then the slim weights: they fit exactly.
    bare = ht.apply_plan(small_resnet(), plan, x)
    bare.load_state_dict(slim.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(bare.eval()(probe), slim(probe))


def test_apply_plan_refuses_another_architecture(table, tmp_path):
    torch.manual_seed(0)
    model, x = small_resnet(), torch.randn(1, 3, 16, 16)
    pruner = ht.Pruner(model, x, table, "0.6x", importance="l2", steps=1, interval=1)
    train_iterations(model, torch.optim.SGD(model.parameters(), lr=0.0), pruner, batches(1))
    pruner.finalize(str(tmp_path / "plan.json"))
    other = CifarResNet(8, 10, 3, width=24)
    before = {k: v.shape for k, v in other.state_dict().items()}
    with pytest.raises(PruningError, match="the plan is for another model"):
        ht.apply_plan(other, tmp_path / "plan.json", x)
    assert {k: v.shape for k, v in other.state_dict().items()} == before
    with pytest.raises(ht.UserError):
        ht.apply_plan(small_resnet(), tmp_path / "missing.json", x)


def test_run_refuses_a_schedule_longer_than_the_run_before_any_stage(tmp_path):
    cfg = run_config(
        out=str(tmp_path / "run"),
        prune=PruneConfig(target="0.5x", interval=100_000),
        train=TrainConfig(epochs=1),
    )
    with pytest.raises(ConfigError, match="PruneConfig.interval does not fit the run"):
        ht.run(cfg)
    assert not (tmp_path / "run").exists()


def test_every_entry_point_defaults_to_the_same_importance():
    import argparse
    import inspect

    from halp_trt.cli import prune as cli_prune
    from halp_trt.cli import run as cli_run
    from halp_trt.importance import DEFAULT_IMPORTANCE, choose_importance, get_importance
    from halp_trt.integrations.lightning import HALPCallback
    from halp_trt.prune.schedule import DEFAULT_SPREAD

    for fraction in (0.3, 0.9):  # what it names at either end of the targets
        assert get_importance(choose_importance(DEFAULT_IMPORTANCE, fraction)).needs_gradients
    assert ht.PruneConfig(target="0.5x").importance == DEFAULT_IMPORTANCE
    assert inspect.signature(ht.Pruner).parameters["importance"].default == DEFAULT_IMPORTANCE
    assert inspect.signature(HALPCallback).parameters["importance"].default == DEFAULT_IMPORTANCE
    for cli in (cli_prune, cli_run):
        sub = argparse.ArgumentParser().add_subparsers()
        parser = cli.add_parser(sub)
        action = next(a for a in parser._actions if a.dest == "importance")
        assert action.default == DEFAULT_IMPORTANCE
        # the pruning window too: the commands' literal is the schedule's default
        window = next(a for a in parser._actions if a.dest == "prune_window")
        assert window.default == DEFAULT_SPREAD == ht.PruneConfig(target="0.5x").prune_window


def test_threads_are_bounded_by_the_cpus_the_process_may_use(monkeypatch, tmp_path):
    """RunConfig and verify refuse more threads than the process may use (taken from
    the table when not given), as the command line does."""
    import torch.nn as nn

    from halp_trt.verify import verify_models
    from lut_builder import parallelism
    from lut_builder.errors import UserError

    from ..lut_builder.test_threads import ORT_1, make_table

    monkeypatch.setattr(parallelism, "usable_cpus", lambda: 2)
    import halp_trt.config.run as run_module

    monkeypatch.setattr(run_module, "usable_cpus", lambda: 2)
    assert run_config(threads=2).threads == 2
    with pytest.raises(ConfigError, match="threads.*at most 2, the CPUs this process may use"):
        run_config(threads=3)
    net = nn.Sequential(nn.Conv2d(3, 4, 3))
    quick = dict(backend="onnxruntime", input_shape=(1, 3, 8, 8), rounds=3, warmup=0)
    with pytest.raises(UserError, match="threads must be at most 2"):
        verify_models(net, net, threads=3, **quick)
    fingerprint = {**ORT_1, "options": {"threads": 4, "clock": "wall"}}
    refused = r"the table's thread count \(4, timed unless threads are given\) must be at most 2"
    with make_table(tmp_path / "t4.lut", fingerprint) as table, pytest.raises(UserError, match=refused):  # fmt: skip
        verify_models(net, net, table=table, **quick)
