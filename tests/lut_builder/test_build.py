"""Tests of lut_builder.build: grid planning, building, resuming and sharding in-process."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lut_builder.backends import get_backend
from lut_builder.build import axis_values, build_table, fixed_widths, plan_grids
from lut_builder.commands.build import parse_shard
from lut_builder.errors import UserError
from lut_builder.latency_model import (
    CHECK_HOOK,
    VARIANTS_HOOK,
    calibrate_overhead,
    calibration_copies,
    check_copies,
    predict_latency,
    variants_hook,
)
from lut_builder.signatures import model_layers
from lut_builder.table import LatencyTable
from lut_builder.timing import Timing

from .table.common import content, snapshot


class Net(nn.Module):
    """Stem, two same-signature convs, a grouped and a depthwise conv, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.a = nn.Conv2d(32, 48, 3, padding=1)
        self.b = nn.Conv2d(48, 32, 3, padding=1)
        self.g = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.b(torch.relu(self.a(torch.relu(self.stem(x)))))
        x = self.dw(self.g(x))
        return self.fc(x.mean((2, 3)))


def _net():
    torch.manual_seed(0)
    return Net().eval(), torch.randn(1, 3, 8, 8)


def test_axis_values():
    assert axis_values(48, 16) == [16, 32, 48]
    assert axis_values(60, 16) == [16, 32, 48, 60]
    assert axis_values(3, 16) == [3]
    with pytest.raises(ValueError):
        axis_values(0, 8)


def test_fixed_widths_finds_input_and_output_layers():
    model, x = _net()
    reads, writes = fixed_widths(model, x)
    assert reads == {"stem"} and writes == {"fc"}


def test_plan_grids_full():
    model, x = _net()
    layers = model_layers(model, x)
    reads, writes = fixed_widths(model, x)
    grids = plan_grids(layers, step=16, strategy="full", fixed_in=reads, fixed_out=writes)
    by_layer = {name: grids[info.signature] for name, info in layers.items()}
    # stem, a and b share a signature: the union of their axes, stem's c_in=3 included.
    assert by_layer["stem"] is by_layer["a"] is by_layer["b"]
    assert by_layer["a"].c_in == (3, 16, 32, 48) and by_layer["a"].c_out == (16, 32, 48)
    # Grouped (4 groups): multiples of lcm(16, 4) = 16; depthwise: a diagonal.
    assert by_layer["g"].c_in == (16, 32)
    assert by_layer["dw"].diagonal and by_layer["dw"].points() == [(16, 16), (32, 32)]
    # The classifier's outputs are the model's: never varied.
    assert by_layer["fc"].c_out == (10,) and by_layer["fc"].c_in == (16, 32)


def test_plan_grids_sparse_is_smaller_and_keeps_full_widths():
    from lut_builder.signatures import LayerInfo, LayerSignature

    sig = LayerSignature("conv2d", kernel=3, padding=1, in_hw=7)
    layers = {"x": LayerInfo("x", sig, 512, 504)}
    full = plan_grids(layers, step=8, strategy="full")[sig]
    sparse = plan_grids(layers, step=8, strategy="sparse", coarse=6)[sig]
    assert len(full.points()) == 64 * 63
    assert len(sparse.points()) < len(full.points()) / 15
    assert 512 in sparse.coarse_in and 504 in sparse.coarse_out and 8 in sparse.coarse_in
    assert sparse.lines_in == (512,) and sparse.lines_out == (504,)
    assert {(512, c) for c in full.c_out} <= set(sparse.points())


def test_plan_grids_sparse_probes_lie_off_the_coarse_grid_and_the_lines():
    from lut_builder.signatures import LayerInfo, LayerSignature

    sig = LayerSignature("conv2d", kernel=3, padding=1, in_hw=7)
    layers = {"x": LayerInfo("x", sig, 512, 504)}
    sparse = plan_grids(layers, step=8, strategy="sparse", coarse=6)[sig]
    assert len(sparse.probes) == 4 and set(sparse.probes) <= set(sparse.points())
    for a, b in sparse.probes:
        assert a not in sparse.lines_in and b not in sparse.lines_out
        assert not (a in sparse.coarse_in and b in sparse.coarse_out)
    # In the wide half, where pruned layers stay, but for one; stored and read back.
    assert sum(a > 256 and b > 252 for a, b in sparse.probes) == 3
    assert type(sparse).from_dict(sparse.to_dict()) == sparse
    # A full grid has no point left to probe.
    assert plan_grids(layers, step=8, strategy="full")[sig].probes == ()


def test_plan_grids_rejects_bad_arguments():
    model, x = _net()
    layers = model_layers(model, x)
    with pytest.raises(UserError, match="strategy"):
        plan_grids(layers, step=8, strategy="dense")
    with pytest.raises(UserError, match="positive"):
        plan_grids(layers, step=0)


@pytest.mark.parametrize("text", ["1", "2/2", "a/b", "0/0", "-1/2"])
def test_parse_shard_errors(text):
    with pytest.raises(UserError, match="shard"):
        parse_shard(text)


def test_build_resume_and_lookups_match_backend(tmp_path):
    model, x = _net()
    backend = get_backend("analytic", alignment=16)
    path = tmp_path / "t.lut"
    first = build_table(path, model, x, backend, strategy="full")
    assert first.complete and first.measured == first.planned > 0
    again = build_table(path, model, x, backend, strategy="full")
    assert again.measured == 0 and again.complete  # resumed: nothing missing
    layers = model_layers(model, x)
    with LatencyTable.open(path, expect={"backend": "analytic", "batch": 1}) as table:
        assert table.fingerprint["is_measurement"] is False
        for info in layers.values():
            want = backend.measure(info.signature, info.c_in, info.c_out).median_ms
            assert table.lookup(info.signature, info.c_in, info.c_out) == pytest.approx(want)
        assert table.info["builds"][0]["points"] == first.measured


def test_build_shards_complete_together(tmp_path):
    model, x = _net()
    backend = get_backend("analytic", alignment=8)
    path = tmp_path / "t.lut"
    calls = []
    a = build_table(path, model, x, backend, shard=(0, 2), calibrate=calls.append)
    assert not a.complete and a.measured < a.planned and calls == []
    b = build_table(path, model, x, backend, shard=(1, 2), calibrate=calls.append)
    assert b.complete and a.measured + b.measured == b.planned
    assert len(calls) == 1  # the process that completed the table calibrates


def test_a_table_records_how_its_points_were_timed(tmp_path, monkeypatch, capsys):
    # Each process that measures points records its timing loop; the table has one where
    # they all agree, none where they differ (or where nothing was measured).
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3)).eval()
    x = torch.randn(1, 3, 8, 8)

    def ort(runs):
        return get_backend("onnxruntime", runs=runs, min_time_s=0.0, warmup=1, alignment=16)

    same, mixed = tmp_path / "same.lut", tmp_path / "mixed.lut"
    for path, loops in ((same, (3, 3)), (mixed, (3, 4))):
        for k, runs in enumerate(loops):
            backend = ort(runs)
            build_table(path, model, x, backend, shard=(k, 2), calibration="none")
            backend.close()
    loop = {"warmup": 1, "runs": 3, "min_time_s": 0.0}
    with LatencyTable.open(same) as table:
        assert table.timing_loop == loop
        assert [e["runs"] for e in table.info["timing_loops"]] == [3, 3]
    with LatencyTable.open(mixed) as table:
        assert table.timing_loop is None
        assert [e["runs"] for e in table.info["timing_loops"]] == [3, 4]
    # `lut-builder show` says how the points were timed, and when not alike.
    from lut_builder.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    assert main(["show", str(mixed)]) == 0
    out = capsys.readouterr().out
    assert "each point timed with warmup 1, runs 3, min_time_s 0.0; warmup 1, runs 4" in out
    assert "(2 different loops)" in out
    # A complete table built again measures nothing and records nothing.
    backend = ort(5)
    assert build_table(same, model, x, backend, calibration="none").measured == 0
    backend.close()
    with LatencyTable.open(same) as table:
        assert table.timing_loop == loop and len(table.info["timing_loops"]) == 2
    # A model, not a measurement, has no loop.
    path = tmp_path / "macs.lut"
    build_table(path, model, x, get_backend("analytic", alignment=16))
    with LatencyTable.open(path) as table:
        assert table.timing_loop is None and "timing_loops" not in table.info


def test_build_refuses_another_models_plan(tmp_path):
    model, x = _net()
    backend = get_backend("analytic", alignment=16)
    path = tmp_path / "t.lut"
    build_table(path, model, x, backend)
    with pytest.raises(UserError, match="another target.*step"):
        build_table(path, model, x, backend, step=8)
    wider = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.Conv2d(64, 8, 3, padding=1))
    with pytest.raises(UserError, match="another grid"):
        build_table(path, wider.eval(), x, backend)


def test_a_refused_build_leaves_the_table_as_it_was(tmp_path):
    """Another model into a complete table: refused before anything is written, so the
    table stays complete and rebuilding its own model measures nothing."""
    model, x = _net()
    backend = get_backend("analytic", alignment=16)
    path = tmp_path / "t.lut"
    build_table(path, model, x, backend)
    before, dump = snapshot(tmp_path), content(path)
    # A new signature (1x1), then Net's 3x3 on another grid: registered one by one,
    # the new one went in (and the table became incomplete) before the refusal.
    wider = nn.Sequential(
        nn.Conv2d(3, 32, 1), nn.Conv2d(32, 96, 3, padding=1), nn.Conv2d(96, 8, 3, padding=1)
    ).eval()
    with pytest.raises(UserError, match="another grid"):
        build_table(path, wider, x, backend)
    # No signature in common: this one was simply added to the table.
    with pytest.raises(UserError, match="signatures not in this build"):
        build_table(path, model, torch.randn(1, 3, 16, 16), backend)
    assert snapshot(tmp_path) == before
    assert content(path) == dump
    with LatencyTable.open(path) as table:
        assert table.complete
    assert build_table(path, model, x, backend).measured == 0


def test_onnxruntime_build_and_calibrated_overhead(tmp_path):
    """A small real build on ONNX Runtime: the model's prediction equals its calibration."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3)).eval()
    x = torch.randn(1, 3, 8, 8)
    # The step is pinned: unpinned it is the CPU's block (8 with AVX2, 16 with AVX-512).
    backend = get_backend("onnxruntime", runs=3, min_time_s=0.0, warmup=1, alignment=16)
    path = tmp_path / "t.lut"
    res = build_table(path, model, x, backend, calibration="none")
    assert res.complete and res.measured == 2
    with LatencyTable.open(path, writable=True) as table:
        assert (
            table.reference["kind"].startswith("onnxruntime/")
            and table.reference["unit_ms"] == table.unit_ms > 0
        )
        over = calibrate_overhead(table, "onnxruntime", model, x, runs=5, min_time_s=0.0)
        assert table.overhead_ms == over
        layers = [(i.signature, i.c_in, i.c_out) for i in model_layers(model, x).values()]
        pred = predict_latency(table, layers)
        assert pred == pytest.approx(table.overhead["measured_ms"])
        assert table.overhead["normalized"] is True


def test_onnxruntime_affine_calibration_on_narrowed_copies(tmp_path):
    """Calibrating with 3/4- and 1/2-width copies fits scale and overhead on all three
    measurements; each prediction is the fitted line at its layer sum."""
    from halp_trt.graph import uniform_width

    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 8, 3),
    ).eval()  # fmt: skip
    x = torch.randn(1, 3, 16, 16)
    backend = get_backend("onnxruntime", runs=3, min_time_s=0.0, warmup=1, alignment=16)
    path = tmp_path / "t.lut"
    build_table(path, model, x, backend, calibration="none")
    with LatencyTable.open(path, writable=True) as table:
        assert table.alignment == 16
        variants = [uniform_width(model, x, f, table.alignment) for f in (0.75, 0.5)]
        assert [v[0].out_channels for v in variants] == [48, 32]
        over = calibrate_overhead(
            table, "onnxruntime", model, x, variants=variants, runs=5, min_time_s=0.0
        )
        details = table.overhead
        assert table.overhead_ms == over
        assert details["model"] in ("affine", "additive")
        points = details["points"]
        assert len(points) == 3
        assert points[0]["layers_ms"] > points[1]["layers_ms"] > points[2]["layers_ms"]
        for pt, m in zip(points, (model, *variants)):
            layers = [(i.signature, i.c_in, i.c_out) for i in model_layers(m, x).values()]
            assert predict_latency(table, layers, overhead=False) == pytest.approx(pt["layers_ms"])
            assert predict_latency(table, layers) == pytest.approx(
                table.scale * pt["layers_ms"] + over
            )
        with pytest.raises(ValueError, match="runner factory"):
            from lut_builder.backends import make_runner

            with make_runner("onnxruntime", model, x) as runner:
                calibrate_overhead(table, runner, model, x, variants=variants, store=False)


# --- build_table's own calibration ------------------------------------------------------

FAST_ORT = {"runs": 3, "min_time_s": 0.0, "warmup": 1, "alignment": 16}


def _conv_net():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 8, 3),
    ).eval()  # fmt: skip
    return model, torch.randn(1, 3, 8, 8)


def _hooks(monkeypatch, *hooks, checks=()):
    """Make ``hooks`` the installed lut_builder.calibration_variants entry points and
    ``checks`` the lut_builder.check_variants ones."""
    import types
    from importlib import metadata

    def points(fns, what):
        return [
            types.SimpleNamespace(name=f"hook{i}", value=f"plugin{i}:{what}", load=lambda fn=fn: fn)
            for i, fn in enumerate(fns)
        ]

    found = {VARIANTS_HOOK: points(hooks, "variants"), CHECK_HOOK: points(checks, "check")}
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: found.get(group, []))


def test_build_by_backend_name_calibrates_additive(tmp_path, monkeypatch):
    _hooks(monkeypatch)  # nothing installed: an additive calibration is asked for anyway
    model, x = _conv_net()
    res = build_table(
        tmp_path / "t.lut", model, x, "onnxruntime", calibration="additive",
        backend_options=FAST_ORT, runner_options={"threads": 1},
    )  # fmt: skip
    assert res.complete and res.measured > 0
    assert res.calibration == "additive" and res.scale == 1.0 and res.calibration_note == ""
    with LatencyTable.open(tmp_path / "t.lut") as table:
        assert table.fingerprint["backend"] == "onnxruntime"
        assert table.overhead_ms == res.overhead_ms is not None
        assert len(table.overhead["points"]) == 1 and table.overhead["runner"] == "onnxruntime"
    assert res.to_dict()["calibration"] == "additive"


def test_an_unsharded_build_spreads_its_calibration_over_the_points(tmp_path, monkeypatch):
    """The calibration's blocks are measured between points, one after each eighth of
    them, the last at the end; the calibration is fitted on all of them."""
    from lut_builder.end_to_end import BlockSampler

    _hooks(monkeypatch)
    seen = []  # points in the table when each block was measured
    sample = BlockSampler.sample

    def spy(self):
        seen.append(self.table.count_points())
        sample(self)

    monkeypatch.setattr(BlockSampler, "sample", spy)
    model, x = _conv_net()
    # The points' values do not matter here: a fixed timing, real whole-model runs.
    backend = get_backend("onnxruntime", normalize=False, **FAST_ORT)
    backend.measure = lambda sig, c_in, c_out: Timing.from_samples([0.01])
    res = build_table(tmp_path / "t.lut", model, x, backend, calibration="additive")
    assert res.measured == 8 and res.calibration == "additive"
    assert seen == [1, 2, 3, 4, 5, 6, 7, 8]  # a block after each point, the last at the end
    with LatencyTable.open(tmp_path / "t.lut") as table:
        details = table.overhead
        assert details["blocks"] == 8 and len(details["block_medians_ms"]) == 1
        blocks = sorted(details["block_medians_ms"][0])
        assert details["measured_ms"] == pytest.approx((blocks[3] + blocks[4]) / 2)


def test_affine_calibration_uses_the_installed_variants_hook(tmp_path, monkeypatch):
    from halp_trt.graph import uniform_width

    calls = []

    def hook(model, example_input, alignment):
        calls.append((model, example_input, alignment))
        return [uniform_width(model, example_input, f, alignment) for f in (0.75, 0.5)]

    _hooks(monkeypatch, hook)
    model, x = _conv_net()
    res = build_table(tmp_path / "t.lut", model, x, "onnxruntime", backend_options=FAST_ORT)
    assert len(calls) == 1 and calls[0][0] is model and calls[0][1] is x
    with LatencyTable.open(tmp_path / "t.lut") as table:
        assert calls[0][2] == table.alignment
        assert len(table.overhead["points"]) == 3  # the model and its two copies
        assert table.overhead["model"] == res.calibration in ("affine", "additive")
        assert "calibration_variants" not in table.overhead["note"]


def test_affine_calibration_without_a_hook_is_additive_and_says_why(tmp_path, monkeypatch):
    _hooks(monkeypatch)
    model, x = _conv_net()
    res = build_table(tmp_path / "t.lut", model, x, "onnxruntime", backend_options=FAST_ORT)
    assert res.calibration == "additive" and res.scale == 1.0
    assert "no lut_builder.calibration_variants entry point" in res.calibration_note
    with LatencyTable.open(tmp_path / "t.lut") as table:
        assert table.overhead["note"] == res.calibration_note
        assert len(table.overhead["points"]) == 1


def test_variants_given_by_the_caller_win_over_the_hook(monkeypatch):
    _hooks(monkeypatch, lambda *a: pytest.fail("the hook must not be asked"))
    model, x = _conv_net()
    copies = [model, model]
    assert calibration_copies(copies, model, x, 8) == (copies, "")
    made = calibration_copies(lambda m, xx, a: [m] * (a // 4), model, x, 8)
    assert made == ([model, model], "")
    none, why = calibration_copies(lambda *a: [], model, x, 8)
    assert none == [] and "no narrowed copies" in why


def test_a_broken_hook_leaves_the_calibration_additive(monkeypatch):
    from importlib import metadata

    ep = metadata.EntryPoint("broken", "no_such_module_anywhere:fn", VARIANTS_HOOK)
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [ep])
    hook, why = variants_hook()
    assert hook is None and "cannot be loaded" in why and "ModuleNotFoundError" in why


def test_halp_trt_installs_the_variants_hook():
    """pyproject.toml's entry point, as installed (re-run `make install` after editing it)."""
    from importlib import metadata

    from halp_trt.graph import calibration_variants

    values = [ep.value for ep in metadata.entry_points(group=VARIANTS_HOOK)]
    assert "halp_trt.graph:calibration_variants" in values
    hook, why = variants_hook()
    assert hook is calibration_variants and why == ""


def _uniform_hook(model, example_input, alignment):
    from halp_trt.graph import uniform_width

    return [uniform_width(model, example_input, f, alignment) for f in (0.75, 0.5)]


def test_the_build_checks_its_latency_model_on_random_width_copies(tmp_path, monkeypatch):
    """The check copies are measured in the calibration's blocks with the model and its
    uniform copies, not fitted on: the fit has three points, the check two copies, each
    predicted by the fitted model."""
    from halp_trt.graph import check_variants
    from lut_builder.end_to_end import BlockSampler

    calls, runners = [], []
    init = BlockSampler.__init__

    def spy(self, table, rs, **kw):
        runners.append((len(rs), kw.get("regime")))
        init(self, table, rs, **kw)

    def hook(model, example_input, alignment, count):
        calls.append((alignment, count))
        return check_variants(model, example_input, alignment, count)

    monkeypatch.setattr(BlockSampler, "__init__", spy)
    _hooks(monkeypatch, _uniform_hook, checks=[hook])
    model, x = _conv_net()
    res = build_table(
        tmp_path / "t.lut", model, x, "onnxruntime", backend_options=FAST_ORT, check=2
    )
    assert runners == [(1 + 2 + 2, "served")]  # timed as models are served, by default
    assert res.check is not None and res.check["copies"] == 2 and res.check_note == ""
    with LatencyTable.open(tmp_path / "t.lut") as table:
        assert calls == [(table.step, 2)]
        details = table.overhead
        assert len(details["points"]) == 3 and details["check"] == res.check
        assert details["regime"] == res.check["regime"] == "served"
        assert res.to_dict()["check"] == res.check
        for pt in details["check"]["points"]:
            assert pt["predicted_ms"] == pytest.approx(
                table.scale * pt["layers_ms"] + table.overhead_ms
            )
            assert pt["error"] == pytest.approx(pt["predicted_ms"] / pt["measured_ms"] - 1)
        # Copies of their own widths: the layer sums are not the model's or the fit's.
        fitted = {round(p["layers_ms"], 12) for p in details["points"]}
        assert not fitted & {round(p["layers_ms"], 12) for p in details["check"]["points"]}


def test_no_check_asked_for_or_no_hook_says_so(tmp_path, monkeypatch):
    _hooks(monkeypatch, _uniform_hook, checks=[lambda *a: pytest.fail("not asked")])
    model, x = _conv_net()
    off = build_table(
        tmp_path / "a.lut", model, x, "onnxruntime", backend_options=FAST_ORT, check=0
    )
    assert off.check is None and off.check_note == "no check asked for"
    _hooks(monkeypatch, _uniform_hook)
    none = build_table(tmp_path / "b.lut", model, x, "onnxruntime", backend_options=FAST_ORT)
    assert none.check is None and "no lut_builder.check_variants entry point" in none.check_note
    assert "not checked" in none.check_note
    # The check's reason stays out of the calibration's note (which, on this tiny net timed
    # for real, may itself say the fit fell back to the additive model).
    assert "check" not in none.calibration_note
    with LatencyTable.open(tmp_path / "b.lut") as table:
        assert table.overhead["check"] is None
        assert table.overhead["check_note"] == none.check_note


def test_check_copies_from_the_caller_or_a_callable():
    model, x = _conv_net()
    assert check_copies([model], model, x, 8, 4) == ([model], "")
    assert check_copies(lambda m, xx, a, n: [m] * n, model, x, 8, 3) == ([model] * 3, "")
    none, why = check_copies(lambda *a: [], model, x, 8, 4)
    assert none == [] and "no random-width copies" in why
    assert check_copies([model], model, x, 8, 0) == ([], "no check asked for")


def test_halp_trt_installs_the_check_hook():
    from importlib import metadata

    from halp_trt.graph import check_variants

    values = [ep.value for ep in metadata.entry_points(group=CHECK_HOOK)]
    assert "halp_trt.graph:check_variants" in values
    hook, why = variants_hook(CHECK_HOOK)
    assert hook is check_variants and why == ""


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"check": -1}, "check must be a count"),
        ({"check": True}, "check must be a count"),
        ({"check_variants": 3}, "check_variants must be"),
        ({"regime": "alone"}, "unknown regime 'alone'"),
        ({"calibration": "quadratic"}, "unknown calibration 'quadratic'"),
        ({"step": 0}, "step must be a positive integer"),
        ({"strategy": "dense"}, "strategy"),
        ({"coarse": 1}, "coarse"),
        ({"shard": (2, 2)}, "shard must be"),
        ({"variants": 3}, "variants must be"),
        ({"runner_options": ["threads", 1]}, "runner_options must be"),
        ({"backend_options": {"threads": 1}, "backend": get_backend("analytic")}, "by name"),
        ({"backend": 42}, "backend must be"),
    ],
)
def test_bad_arguments_raise_before_the_table_file_exists(tmp_path, kwargs, fragment):
    model, x = _conv_net()
    kwargs = {"backend": "analytic", **kwargs}
    backend = kwargs.pop("backend")
    with pytest.raises(UserError, match=fragment):
        build_table(tmp_path / "t.lut", model, x, backend, **kwargs)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="directory"):
        build_table(tmp_path / "missing" / "t.lut", model, x, "analytic")
    with pytest.raises(UserError, match="is a directory"):
        build_table(tmp_path, model, x, "analytic")


def test_a_check_that_cannot_be_computed_leaves_the_calibration(tmp_path, monkeypatch):
    """The fit is stored even when the check of it fails; the note says why."""
    import lut_builder.latency_model as lm

    def broken(*a):
        raise ValueError("no copy to check the latency model on")

    monkeypatch.setattr(lm, "check_latency_model", broken)
    _hooks(monkeypatch, _uniform_hook, checks=[lambda m, x, a, n: [_uniform_hook(m, x, a)[1]]])
    model, x = _conv_net()
    res = build_table(tmp_path / "t.lut", model, x, "onnxruntime", backend_options=FAST_ORT)
    assert res.overhead_ms is not None and res.check is None
    assert (
        res.check_note
        == "the latency model could not be checked: no copy to check the latency model on"
    )
    with LatencyTable.open(tmp_path / "t.lut") as table:
        assert len(table.overhead["points"]) == 3 and table.overhead["check"] is None
