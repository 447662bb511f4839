"""verify: speed-up statistics, the uniform baseline, interleaved timing and the CLI."""

from __future__ import annotations

import inspect
import json
import types
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn as nn

from halp_trt.graph import ChannelGraph
from halp_trt.models import create_model
from halp_trt.solver.plan import Plan
from halp_trt.verify import speedup_stats, uniform_keep, uniform_prune, verify_models
from halp_trt.verify.compare import plan_comparison, quantile
from lut_builder.errors import UserError

from ..conftest import assert_user_error, needs_cpus


def wide_and_narrow() -> tuple[nn.Module, nn.Module]:
    """Two models whose cost differs by ~50x: any timing tells them apart."""

    def net(c: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU()
        ).eval()

    return net(96), net(8)


def test_speedup_stats_median_iqr_spread_and_ci():
    original = [2.0, 2.2, 2.0, 4.0, 2.1]
    pruned = [1.0, 1.0, 1.0, 1.0, 1.05]  # ratios 2, 2.2, 2, 4, 2
    s = speedup_stats(original, pruned)
    assert s.median == pytest.approx(2.0)
    assert (s.q25, s.q75) == (pytest.approx(2.0), pytest.approx(2.2))
    assert s.spread == pytest.approx(0.1)
    assert s.ci95[0] <= s.median <= s.ci95[1]
    assert s.ratio_of_medians == pytest.approx(2.1 / 1.0)
    for a, b in (([], []), ([1.0], [1.0, 2.0]), ([1.0], [0.0])):
        with pytest.raises(ValueError):
            speedup_stats(a, b)


def test_quantile_interpolates_like_numpy():
    assert quantile([4, 1, 3, 2], 0.5) == 2.5
    assert quantile([1, 2, 3, 4, 5], 0.25) == 2


def test_uniform_keep_counts_alignment_and_bounds():
    model = create_model("resnet20")
    graph = ChannelGraph(model, torch.randn(1, 3, 32, 32))
    keep = uniform_keep(graph, 0.5)
    sizes = {g.id: g.size for g in graph.prunable}
    assert set(keep) == set(sizes)
    assert all(len(keep[g]) == -(-sizes[g] // 2) for g in keep)
    aligned = uniform_keep(graph, 0.3, multiple=8)
    assert all(len(k) % 8 == 0 or len(k) == sizes[g] for g, k in aligned.items())
    with pytest.raises(ValueError):
        uniform_keep(graph, 0.0)


def test_uniform_prune_leaves_the_original_alone():
    model = create_model("resnet20").eval()
    before = sum(p.numel() for p in model.parameters())
    slim = uniform_prune(model, torch.randn(1, 3, 32, 32), 0.5)
    assert sum(p.numel() for p in model.parameters()) == before
    assert sum(p.numel() for p in slim.parameters()) < 0.4 * before
    assert slim(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_verify_torch_tells_a_wide_model_from_a_narrow_one():
    wide, narrow = wide_and_narrow()
    r = verify_models(
        wide, narrow, backend="torch", input_shape=(2, 3, 32, 32), rounds=5, warmup=1,
        min_block_ms=5, threads=1,
    )  # fmt: skip
    assert r.speedup.median > 3
    assert r.original.median_ms > r.pruned.median_ms > 0
    assert r.pruned.throughput == pytest.approx(2e3 / r.pruned.median_ms)
    assert r.original.rounds == r.pruned.rounds == 5 and r.original.inner >= 3
    d = r.to_dict()
    assert d["speedup"]["median"] == r.speedup.median and d["input_shape"] == [2, 3, 32, 32]
    # The layout and graph replay the torch runners chose are recorded with the timing.
    assert d["options"] == {"threads": 1, "channels_last": False, "cuda_graph": False}


def test_verify_onnxruntime_on_a_pruned_resnet():
    model = create_model("resnet20").eval()
    slim = uniform_prune(model, torch.randn(1, 3, 32, 32), 0.25, multiple=8)
    r = verify_models(
        model, slim, backend="onnxruntime", input_shape=(1, 3, 32, 32), rounds=7, warmup=1,
        min_block_ms=10,
    )  # fmt: skip
    # About 1.6x on a quiet machine; the margin absorbs a busy one.
    assert r.speedup.median > 1.15
    assert r.speedup.ci95[0] <= r.speedup.median <= r.speedup.ci95[1]


def test_verify_refuses_bad_requests():
    wide, narrow = wide_and_narrow()
    with pytest.raises(UserError, match="unknown backend"):
        verify_models(wide, narrow, backend="tvm", input_shape=(1, 3, 8, 8))
    with pytest.raises(UserError, match="3 rounds"):
        verify_models(wide, narrow, backend="torch", input_shape=(1, 3, 8, 8), rounds=1)
    with pytest.raises(UserError, match="fails on an input"):
        verify_models(wide, narrow, backend="torch", input_shape=(1, 5, 8, 8), rounds=3)


def narrow_plan(**change) -> Plan:
    """A plan whose widths are wide_and_narrow()'s narrow model's."""
    fields = dict(
        keep={0: tuple(range(8))}, sizes={0: 96}, widths={"0": (3, 8), "2": (8, 8)},
        predicted_ms=1.0, budget_ms=1.5, value=1.0, total_value=2.0, cost_model="one-sided",
        model_ms=1.0,
    )  # fmt: skip
    return Plan(**{**fields, **change})


def test_verify_refuses_a_plan_that_is_not_the_pruned_models():
    from halp_trt.solver.plan import PlanError
    from halp_trt.verify.compare import check_plan

    wide, narrow = wide_and_narrow()
    check_plan(narrow_plan(), narrow)
    check_plan(narrow_plan(), "narrow.onnx")  # a file: its figures only
    with pytest.raises(PlanError, match=r"its layer 0 is 3 -> 8 channels, the pruned model has 3 -> 96"):  # fmt: skip
        verify_models(wide, wide, backend="torch", input_shape=(1, 3, 8, 8), plan=narrow_plan())
    with pytest.raises(PlanError, match="layer fc is 8 -> 10 channels, the pruned model has no"):
        check_plan(narrow_plan(widths={"0": (3, 8), "fc": (8, 10)}), narrow)
    for name in ("predicted_ms", "budget_ms"):
        with pytest.raises(PlanError, match=f"{name} must be a positive number, not -1.0"):
            check_plan(narrow_plan(**{name: -1.0}), narrow)
    run_plan = types.SimpleNamespace(
        predicted_ms=1.0, budget_ms=1.5, target_ms=1.5, base_ms=0.0, widths={}
    )
    with pytest.raises(PlanError, match="base_ms must be a positive number, not 0.0"):
        check_plan(run_plan, narrow)


def test_a_runs_plan_with_invalid_pruning_facts_is_not_read_as_a_solver_plan(tmp_path):
    from halp_trt.prune.apply import load_plan
    from halp_trt.prune.plan_file import PrunePlan
    from halp_trt.solver.plan import PlanError

    plan = narrow_plan()
    fields = {f: getattr(plan, f) for f in plan.__dataclass_fields__}
    run_plan = PrunePlan(**fields, target="0.5x", target_ms=1.5, base_ms=3.0)
    run_plan.save(tmp_path / "plan.json")
    assert isinstance(load_plan(tmp_path / "plan.json"), PrunePlan)
    plan.save(tmp_path / "solver.json")
    assert type(load_plan(tmp_path / "solver.json")) is Plan
    d = json.loads((tmp_path / "plan.json").read_text())
    d["pruning"]["base_ms"] = -1
    (tmp_path / "plan.json").write_text(json.dumps(d))
    with pytest.raises(PlanError, match="base_ms must be a positive number"):
        load_plan(tmp_path / "plan.json")


def fake_report(pruned_ms: float, original_ms: float, speedup: float) -> types.SimpleNamespace:
    """What plan_comparison reads of a VerifyReport."""
    return types.SimpleNamespace(
        pruned=types.SimpleNamespace(median_ms=pruned_ms),
        original=types.SimpleNamespace(median_ms=original_ms),
        speedup=types.SimpleNamespace(median=speedup),
    )


def test_plan_comparison_reports_error_budget_and_predicted_speedup():
    report = fake_report(pruned_ms=2.0, original_ms=4.0, speedup=1.9)
    plan = types.SimpleNamespace(predicted_ms=2.2, budget_ms=2.5, base_ms=4.4)
    p = plan_comparison(plan, report)
    assert p["error"] == pytest.approx(0.1) and p["within_budget"] is True
    assert p["predicted_speedup"] == pytest.approx(2.0) and p["measured_speedup"] == 1.9
    missed = plan_comparison(types.SimpleNamespace(predicted_ms=1.0, budget_ms=1.5), report)
    assert missed["within_budget"] is False and "predicted_speedup" not in missed
    assert missed["budget_check"] == "absolute"
    # "0.5x": judged on the measured ratio (1 / 1.9 = 0.526), not on table milliseconds.
    rel = types.SimpleNamespace(predicted_ms=1.0, budget_ms=1.1, base_ms=2.0, target="0.55x")
    p = plan_comparison(rel, report)
    assert p["budget_check"] == "relative" and p["within_budget"] is True
    assert p["budget_ratio"] == pytest.approx(0.55) and p["measured_ratio"] == pytest.approx(
        1 / 1.9
    )
    rel.target, rel.budget_ms = "0.5x", 1.0
    assert plan_comparison(rel, report)["within_budget"] is False


def test_plan_comparison_in_the_table_unit():
    report = fake_report(pruned_ms=3.0, original_ms=6.0, speedup=2.0)
    plan = types.SimpleNamespace(predicted_ms=2.2, budget_ms=2.5, base_ms=4.4)
    assert "table_unit" not in plan_comparison(plan, report)
    unit = plan_comparison(plan, report, (4.0, 2.0))["table_unit"]
    assert unit["pruned_ms"] == 2.0 and unit["original_ms"] == 4.0
    assert unit["error"] == pytest.approx(0.1) and unit["base_error"] == pytest.approx(0.1)


@needs_cpus(2)
def test_verify_onnxruntime_in_the_table_unit(tmp_path):
    """With the plan's table (measured against a reference workload), both models are
    also timed in the table's unit, where a model's prediction is close to its
    measurement whatever the machine's speed at the time."""
    from lut_builder import LatencyTable, calibrate_overhead, predict_latency
    from lut_builder.backends import get_backend
    from lut_builder.build import build_table
    from lut_builder.signatures import model_layers

    wide, narrow = wide_and_narrow()
    x = torch.randn(1, 3, 16, 16)
    backend = get_backend("onnxruntime", runs=5, min_time_s=0.0)
    build_table(tmp_path / "t.lut", wide, x, backend, calibration="none")
    with LatencyTable.open(tmp_path / "t.lut", writable=True) as table:
        calibrate_overhead(table, "onnxruntime", wide, x, runs=10, min_time_s=0.0)

        def predicted(m):
            layers = model_layers(m, x).values()
            return predict_latency(table, [(i.signature, i.c_in, i.c_out) for i in layers])

        # The latency model is fitted on the wide model alone: its line may reach the
        # narrow one at or below 0 ms, which verify refuses as a plan's prediction.
        plan = types.SimpleNamespace(
            predicted_ms=max(predicted(narrow), 1e-3), budget_ms=1e9, base_ms=predicted(wide)
        )
        r = verify_models(
            wide, narrow, backend="onnxruntime", input_shape=(1, 3, 16, 16), rounds=5,
            warmup=1, min_block_ms=5, plan=plan, table=table, threads=1,
        )  # fmt: skip
        unit = r.plan["table_unit"]
        assert unit["original_ms"] > 5 * unit["pruned_ms"] > 0
        # The calibration measured the wide model the same way: its prediction holds.
        assert abs(unit["base_error"]) < 0.3, unit
        # Two threads run on the wall clock, the table on the thread clock: not compared.
        r2 = verify_models(
            wide, narrow, backend="onnxruntime", input_shape=(1, 3, 16, 16), rounds=3,
            warmup=0, min_block_ms=5, plan=plan, table=table, threads=2,
        )  # fmt: skip
        assert "table_unit" not in r2.plan and any("clock" in n for n in r2.notes)
        assert r2.threads == 2 and r2.table_threads == 1
        assert any("measured at 1" in n for n in r2.notes)


def table_at(path, threads: int):
    """A latency table whose fingerprint says ONNX Runtime at ``threads`` threads."""
    from lut_builder.signatures import LayerSignature
    from lut_builder.table import Grid, LatencyTable
    from lut_builder.timing import Timing

    fp = {"backend": "onnxruntime", "device": "cpu", "options": {"threads": threads}}
    table = LatencyTable.create(path, fp, 8)
    sig = LayerSignature("conv2d", kernel=3, padding=1, in_hw=(8, 8))
    table.add_signature(sig, Grid([8], [8]))
    table.add_point(sig, 8, 8, Timing(1.0, 0.9, 1.1, 1.0, 0.05, 20))
    table.mark_complete()
    return table


@needs_cpus(2)
def test_verify_times_at_the_table_thread_count_unless_told(tmp_path):
    """A 2-thread table is timed at 2 threads by default; asked for 1, verify times at 1
    and says the table describes another deployment. The plan's table counts too."""
    wide, narrow = wide_and_narrow()
    quick = dict(backend="onnxruntime", input_shape=(1, 3, 8, 8), rounds=3, warmup=0)
    quick["min_block_ms"] = 2
    with table_at(tmp_path / "t2.lut", 2) as table:
        r = verify_models(wide, narrow, table=table, **quick)
        assert (r.threads, r.table_threads, r.options["threads"], r.notes) == (2, 2, 2, [])
        r = verify_models(wide, narrow, table=table, threads=1, **quick)
        assert (r.threads, r.table_threads) == (1, 2)
        assert r.notes == [
            "timed at 1 CPU thread, but the latency table was measured at 2: the plan "
            "describes a 2-thread deployment (build the table with --threads 1 to plan for 1)"
        ]
        assert r.to_dict()["table_threads"] == 2
        facts = {"fingerprint": dict(table.fingerprint)}
    plan = types.SimpleNamespace(predicted_ms=1.0, budget_ms=1e9, table=facts)
    r = verify_models(wide, narrow, plan=plan, **quick)
    assert (r.threads, r.table_threads) == (2, 2)
    r = verify_models(wide, narrow, **quick)  # nothing to go by: one thread
    assert (r.threads, r.table_threads, r.notes) == (1, None, [])


@needs_cpus(2)
def test_verify_times_one_thread_in_blocks_and_several_in_chunks(monkeypatch):
    """At one CPU thread both models are timed as the pruner's feedback times them: in
    blocks, by the thread's CPU time, the warm-up rounds dropped; with several threads
    in chunks by the wall clock. The report says which."""
    import lut_builder.timing as timing
    from halp_trt.prune import feedback
    from halp_trt.verify import compare

    calls: list[tuple[str, dict]] = []
    blocks, chunked = timing.time_blocks, timing.time_chunked

    def spy_blocks(runners, **kw):
        calls.append(("blocks", kw))
        return blocks(runners, **kw)

    def spy_chunked(runners, **kw):
        calls.append(("chunks", kw))
        return chunked(runners, **kw)

    monkeypatch.setattr(timing, "time_blocks", spy_blocks)
    monkeypatch.setattr(timing, "time_chunked", spy_chunked)
    wide, narrow = wide_and_narrow()
    quick = dict(backend="onnxruntime", input_shape=(1, 3, 8, 8), rounds=4, warmup=2)
    r = verify_models(wide, narrow, min_block_ms=3, threads=1, **quick)
    assert [c for c, _ in calls] == ["blocks"] and r.timing == "blocks"
    assert calls[0][1] == {
        "rounds": 6, "block_ms": 3, "warm_runs": 3, "min_runs": 5, "clock": "thread"
    }  # fmt: skip
    assert r.original.rounds == r.pruned.rounds == 4  # the two warm-up rounds dropped
    assert r.pruned.inner >= compare.BLOCK_MIN_RUNS and r.to_dict()["timing"] == "blocks"
    assert r.speedup.median > 3
    calls.clear()
    r = verify_models(wide, narrow, min_block_ms=3, threads=2, **quick)
    assert [c for c, _ in calls] == ["chunks"] and r.timing == "chunks"
    assert (calls[0][1]["warmup"], calls[0][1]["rounds"]) == (2, 4)
    # The blocks are the feedback's.
    feedback_warmup = inspect.signature(feedback.MeasuredLatency).parameters["warmup"].default
    assert (
        feedback_warmup,
        feedback.FEEDBACK_BLOCK_RUNS,
    ) == (compare.BLOCK_WARM_RUNS, compare.BLOCK_MIN_RUNS)


# --- CLI ------------------------------------------------------------------------------


@pytest.fixture
def saved_models(tmp_path):
    wide, narrow = wide_and_narrow()
    torch.save(wide, tmp_path / "wide.pt")
    torch.save(narrow, tmp_path / "narrow.pt")
    return tmp_path


def test_cli_verify_json_and_report_file(halp_cli, saved_models):
    r = halp_cli(
        "verify", "--original", "wide.pt", "--pruned", "narrow.pt", "--backend", "torch",
        "--input-shape", "1,3,32,32", "--batch", "2", "--rounds", "4", "--warmup", "1",
        "--block-ms", "5", "--json", "--out", "report.json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["input_shape"] == [2, 3, 32, 32] and d["backend"] == "torch"
    assert d["speedup"]["median"] > 1.5 and d["original"]["source"] == "wide.pt"
    assert json.loads((saved_models / "report.json").read_text()) == d


def test_cli_verify_says_how_long_a_long_timing_takes_before_it_starts(saved_models, monkeypatch, capsys):  # fmt: skip
    """Every round runs both models for at least --block-ms: a timing of a minute or
    more says its least duration first (--rounds has no bound)."""
    from halp_trt.cli import main
    from halp_trt.cli import verify as verify_cli

    assert [verify_cli._duration(s) for s in (59, 61, 7200, 3 * 86400)] == [
        "59 s", "1.0 minutes", "2.0 hours", "3.0 days"
    ]  # fmt: skip
    monkeypatch.chdir(saved_models)
    args = ["verify", "--original", "wide.pt", "--pruned", "narrow.pt", "--backend", "torch",
            "--input-shape", "1,3,8,8", "--rounds", "3", "--warmup", "1", "--block-ms", "5"]  # fmt: skip
    assert main(args) == 0
    assert "or more" not in capsys.readouterr().err  # 40 ms: nothing to say
    monkeypatch.setattr(verify_cli, "LONG_S", 0.04)
    assert main(args) == 0
    assert "verify: 1 + 3 rounds of both models, at least 5 ms each: 0 s or more" in capsys.readouterr().err  # fmt: skip


def test_cli_verify_onnx_files_and_a_missed_budget(halp_cli, saved_models):
    from lut_builder.onnx_export import export_onnx

    wide, narrow = wide_and_narrow()
    x = torch.randn(1, 3, 16, 16)
    export_onnx(wide, x, saved_models / "wide.onnx")
    export_onnx(narrow, x, saved_models / "narrow.onnx")
    plan = Plan(
        keep={0: (0,)}, sizes={0: 2}, widths={}, predicted_ms=1e-4, budget_ms=1e-4,
        value=1.0, total_value=2.0, cost_model="one-sided", model_ms=1e-4,
    )  # fmt: skip
    plan.save(saved_models / "plan.json")
    r = halp_cli(
        "verify", "--original", "wide.onnx", "--pruned", "narrow.onnx", "--backend",
        "onnxruntime", "--rounds", "3", "--warmup", "0", "--block-ms", "5", "--plan", "plan.json",
    )  # fmt: skip
    assert r.returncode == 1, r.stderr  # a 0.1 microsecond budget cannot be met
    assert "speed-up" in r.stdout and "MISSED" in r.stdout and "predicted" in r.stdout


@needs_cpus(2)
def test_cli_verify_says_when_it_times_at_another_thread_count(halp_cli, saved_models):
    plan = Plan(
        keep={0: (0,)}, sizes={0: 2}, widths={}, predicted_ms=1.0, budget_ms=1e9,
        value=1.0, total_value=2.0, cost_model="one-sided", model_ms=1.0,
    )  # fmt: skip
    plan.save(saved_models / "plan.json")
    table_at(saved_models / "t1.lut", 1).close()
    r = halp_cli(
        "verify", "--original", "wide.pt", "--pruned", "narrow.pt", "--backend", "onnxruntime",
        "--input-shape", "1,3,8,8", "--rounds", "3", "--warmup", "0", "--block-ms", "2",
        "--plan", "plan.json", "--lut", "t1.lut", "--threads", "2", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["threads"] == 2 and d["table_threads"] == 1 and d["options"]["threads"] == 2
    notes = [ln for ln in r.stderr.splitlines() if "note:" in ln]
    assert len(notes) == 1 and "timed at 2 CPU threads" in notes[0] and "measured at 1" in notes[0]


def test_cli_verify_refuses_a_plan_of_another_model_before_timing(halp_cli, saved_models):
    narrow_plan().save(saved_models / "plan.json")
    args = ["verify", "--original", "wide.pt", "--backend", "torch", "--input-shape", "1,3,8,8",
            "--rounds", "3", "--warmup", "0", "--block-ms", "2", "--plan", "plan.json"]  # fmt: skip
    r = halp_cli(*args, "--pruned", "wide.pt", "--out", "report.json")
    assert_user_error(r, "the plan is not the pruned model's: its layer 0 is 3 -> 8 channels")
    assert not (saved_models / "report.json").exists()
    narrow_plan(predicted_ms=-1.0).save(saved_models / "plan.json")
    r = halp_cli(*args, "--pruned", "narrow.pt")
    assert_user_error(r, "predicted_ms must be a positive number, not -1.0")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--original", "wide.pt", "--pruned", "narrow.pt", "--backend", "torch"], "--input-shape"),
        (["--original", "a.engine", "--pruned", "b.engine", "--backend", "torch"], "tensorrt"),
        (
            ["--original", "wide.pt", "--pruned", "narrow.pt", "--backend", "torch",
             "--input-shape", "1,3,8,8", "--record"],
            "engine sidecars",
        ),
        (
            ["--original", "wide.pt", "--pruned", "narrow.pt", "--backend", "torch",
             "--input-shape", "1,3,8,8", "--lut", "t.lut"],
            "--lut needs --plan",
        ),
        pytest.param(
            ["--original", "none.pt", "--pruned", "narrow.pt", "--backend", "torch",
             "--input-shape", "1,3,8,8"],
            "does not exist",
            marks=pytest.mark.slow,
        ),
    ],
)  # fmt: skip
def test_cli_verify_user_errors(halp_cli, saved_models, args, fragment):
    assert_user_error(halp_cli("verify", *args), fragment)


@pytest.mark.tensorrt
def test_cli_verify_engines_on_tensorrt_records_latency(halp_cli, saved_models):
    from halp_trt.export import BatchRange, EngineSidecar, build_engine, export_onnx

    wide, narrow = wide_and_narrow()
    for name, model in (("wide", wide), ("narrow", narrow)):
        onnx_path = saved_models / f"{name}.onnx"
        export_onnx(model, (1, 3, 32, 32), onnx_path, fp16=True, dynamic_batch=BatchRange(1, 4, 8))
        build_engine(onnx_path, saved_models / f"{name}.engine")
    r = halp_cli(
        "verify", "--original", "wide.engine", "--pruned", "narrow.engine", "--backend",
        "tensorrt", "--batch", "4", "--rounds", "5", "--block-ms", "10", "--record", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["input_shape"] == [4, 3, 32, 32] and d["speedup"]["median"] > 1.5
    recorded = EngineSidecar.read(saved_models / "narrow.engine.json").latency
    assert recorded["measured_ms"] == d["pruned"]["median_ms"] and recorded["measured_batch"] == 4


@pytest.mark.parametrize(
    "overhead, regime, runs",
    [
        ({"regime": "served"}, "served", 10),  # blocks: verify's own rounds
        ({"regime": "round-robin"}, "round-robin", 20),  # one inference: at least 20
        ({}, "round-robin", 20),  # a calibration stored before regimes: round-robin
        (None, "round-robin", 20),
    ],
)
def test_timing_in_the_table_unit_follows_the_tables_calibration(
    monkeypatch, overhead, regime, runs
):
    """The prediction and the measurement compare alike: both models are timed in the
    regime the table's calibration timed whole models in."""
    from types import SimpleNamespace

    import lut_builder
    from halp_trt.verify.compare import _time_in_table_unit

    seen = {}

    def fake(table, runners, **kw):
        seen.update(kw)
        return [SimpleNamespace(median_ms=2.0), SimpleNamespace(median_ms=1.0)]

    monkeypatch.setattr(lut_builder, "measure_end_to_end", fake)
    table = SimpleNamespace(
        reference={"kind": "k", "unit_ms": 1.0},
        fingerprint={"options": {"clock": "thread"}},
        overhead=overhead,
    )
    runners = [SimpleNamespace(clock="thread")] * 2
    assert _time_in_table_unit(table, runners, 5, 10) == ((2.0, 1.0), "")
    assert seen["regime"] == regime and seen["runs"] == runs


def test_options_as_the_backend_runs_anyway_are_accepted():
    """``verify`` refuses an option its backend would ignore, not one that asks for what
    it does anyway (the fault matrix has the refusals)."""
    import argparse

    from halp_trt.cli.verify import check_backend_options

    for backend in ("onnxruntime", "tensorrt", "torch"):
        check_backend_options(
            argparse.Namespace(backend=backend, device=None, precision="fp32", channels_last=None)
        )
    check_backend_options(
        argparse.Namespace(
            backend="onnxruntime", device="cpu", precision="fp32", channels_last=False
        )
    )
    with pytest.raises(UserError, match="--channels-last does not apply to --backend tensorrt"):
        check_backend_options(
            argparse.Namespace(backend="tensorrt", device="0", precision="fp16", channels_last=True)
        )


@pytest.mark.parametrize(
    "exporter", ["torchscript", pytest.param("dynamo", marks=pytest.mark.slow)]
)
def test_an_onnx_files_widths_are_its_modules_and_a_plan_of_another_is_refused(tmp_path, exporter):
    """Read from either exporter's file (BatchNorm folded or not, depthwise convs, the
    classifier), the widths of a pruned MobileNetV2 are every conv's and linear's of the
    module; its plan against the unpruned file is refused, naming a layer width the file
    lacks, before anything is timed."""
    from halp_trt.models import mobilenetv2_cifar
    from halp_trt.solver.plan import PlanError
    from halp_trt.verify.compare import check_plan, onnx_layer_widths
    from lut_builder.onnx_export import run_exporters

    x = torch.randn(1, 3, 16, 16)
    dense = mobilenetv2_cifar(num_classes=10).eval()
    slim = uniform_prune(dense, x, 0.5, multiple=8)
    widths = ChannelGraph(slim, x).widths({})
    for model, name in ((slim, "slim.onnx"), (dense, "dense.onnx")):
        run_exporters(model, x, tmp_path / name, exporter=exporter)
    found = onnx_layer_widths(tmp_path / "slim.onnx")
    for width, count in Counter(widths.values()).items():
        assert found[width] >= count, (width, found[width], count)
    plan = narrow_plan(widths=widths)
    check_plan(plan, str(tmp_path / "slim.onnx"))
    with pytest.raises(PlanError, match=r"the plan is not the pruned ONNX file's: it has \d+ layer\(s\) of \d+ -> \d+ channels .*dense.onnx has 0"):  # fmt: skip
        verify_models(dense, str(tmp_path / "dense.onnx"), backend="onnxruntime", input_shape=(1, 3, 16, 16), plan=plan)  # fmt: skip
    assert onnx_layer_widths(tmp_path / "missing.onnx") is None
    # A weight transposed in the graph is read through the transpose; one computed from
    # an activation cannot be read: nothing is compared.
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((4, 8), dtype=np.float32), "w")
    for op, inputs, widths in (("Transpose", ["w"], {(8, 4): 1, (4, 8): 1}), ("Mul", ["w", "s"], None)):  # fmt: skip
        graph = helper.make_graph(
            [helper.make_node(op, inputs, ["wt"]), helper.make_node("MatMul", ["x", "wt"], ["y"])],  # fmt: skip
            "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
                  helper.make_tensor_value_info("s", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w],
        )  # fmt: skip
        (tmp_path / "t.onnx").write_bytes(helper.make_model(graph).SerializeToString())
        assert onnx_layer_widths(tmp_path / "t.onnx") == (None if widths is None else Counter(widths))  # fmt: skip
        check_plan(narrow_plan(widths={"fc": (8, 4)}), str(tmp_path / "t.onnx"))
