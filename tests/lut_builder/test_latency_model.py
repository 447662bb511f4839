"""Tests of lut_builder.latency_model: the network latency model and its fit."""

from __future__ import annotations

import pytest

from lut_builder.latency_model import fit_calibration, predict_latency
from lut_builder.table import Grid

from .table.common import SIG, cost, make_table


def test_predict_latency_sums_lookups_and_overhead(tmp_path):
    with make_table(tmp_path / "t.lut", Grid([16, 32], [16, 32])) as table:
        layers = [(SIG, 16, 16), (SIG, 32, 16), (SIG, 30, 30)]
        want = cost(16, 16) + cost(32, 16) + cost(32, 32)
        assert predict_latency(table, layers) == pytest.approx(want)
        table.set_overhead(-0.25)
        assert predict_latency(table, layers) == pytest.approx(want - 0.25)
        assert predict_latency(table, layers, overhead=False) == pytest.approx(want)
        table.set_overhead(-0.25, scale=1.5)
        assert table.scale == 1.5 and table.summary()["scale"] == 1.5
        assert predict_latency(table, layers) == pytest.approx(1.5 * want - 0.25)
        assert predict_latency(table, layers, overhead=False) == pytest.approx(want)
        for bad in ({"scale": 0.0}, {"scale": float("nan")}):
            with pytest.raises(ValueError, match="bad calibration"):
                table.set_overhead(0.1, **bad)
        assert table.scale == 1.5  # a rejected calibration leaves the stored one


def test_fit_calibration_additive_affine_and_implausible():
    one = fit_calibration([(2.0, 2.5)])
    assert (one.kind, one.scale, one.overhead_ms) == ("additive", 1.0, 0.5)
    # Points on an exact line: the line is recovered.
    line = fit_calibration([(s, 1.2 * s - 0.3) for s in (4.0, 3.0, 2.0)])
    assert line.kind == "affine"
    assert line.scale == pytest.approx(1.2) and line.overhead_ms == pytest.approx(-0.3)
    assert line.predict(2.5) == pytest.approx(2.7)
    # Layer sums too close together: no slope is fitted.
    close = fit_calibration([(4.0, 4.4), (3.9, 4.1)])
    assert close.kind == "additive" and close.overhead_ms == pytest.approx(0.4)
    assert "too close" in close.note
    # Layer sums close together but whole networks measured far apart (INT8 layers at
    # batch 1 cost nearly the same at every width): the slope is still fitted.
    flat = fit_calibration([(s, 1.7 * s - 0.6) for s in (0.97, 0.90, 0.84)])
    assert flat.kind == "affine" and flat.note == ""
    assert flat.scale == pytest.approx(1.7) and flat.overhead_ms == pytest.approx(-0.6)
    # A slope outside [0.5, 2] is noise, not a latency model.
    wild = fit_calibration([(4.0, 10.0), (2.0, 1.0)])
    assert wild.kind == "additive" and wild.overhead_ms == pytest.approx(6.0)
    assert "implausible" in wild.note
    for bad in ([], [(0.0, 1.0)], [(1.0, float("inf"))]):
        with pytest.raises(ValueError):
            fit_calibration(bad)


# --- calibration measured in blocks -----------------------------------------------------


class _Machine:
    """A virtual machine clock: each run advances it by the runner's cost, times the
    machine's slowness at that moment (``slow`` times for the first ``slow_calls`` runs),
    times ``cold`` for a runner's first two runs in a row (its state still another's: a
    model run in turn with others runs slower than one served back to back)."""

    def __init__(self, slow_calls: int = 0, slow: float = 1.0, cold: float = 1.0) -> None:
        self.now, self.calls = 0.0, 0
        self.slow_calls, self.slow, self.cold = slow_calls, slow, cold
        self.last, self.streak = None, 0

    def clock(self) -> float:
        return self.now

    def runner(self, ms: float):
        from lut_builder.backends import Runner

        machine = self

        class Fake(Runner):
            name = "fake"
            clock = staticmethod(machine.clock)

            def __call__(self) -> None:
                factor = machine.slow if machine.calls < machine.slow_calls else 1.0
                machine.streak = machine.streak + 1 if machine.last is self else 1
                machine.last = self
                if machine.streak <= 2:
                    factor *= machine.cold
                machine.calls += 1
                machine.now += ms * factor / 1e3

        return Fake()


def test_blocks_split_the_runs_and_the_latency_is_the_median_of_blocks():
    from types import SimpleNamespace

    from lut_builder.end_to_end import BlockSampler

    def measure_in_blocks(table, runners, **loop):
        return BlockSampler(table, runners, regime="round-robin", **loop).finish()

    table = SimpleNamespace(reference=None, unit_ms=1.0)  # plain interleaved timings
    # Warm-up: 3 rounds of 2 runners; each block: 2 rounds of 2 runners, each timed run
    # after an untimed one. The first block runs 1.5x slow.
    machine = _Machine(slow_calls=3 * 2 + 2 * 2 * 2, slow=1.5)
    runners = [machine.runner(1.0), machine.runner(2.0)]
    timed = measure_in_blocks(table, runners, blocks=4, warmup=3, runs=8, min_time_s=None)
    assert machine.calls == 3 * 2 + 4 * 2 * 2 * 2  # the warm-up before the first block only
    assert len(timed.blocks) == 4 and timed.n == [2, 2, 2, 2]
    assert timed.block_medians(0) == pytest.approx([1.5, 1.0, 1.0, 1.0])
    assert timed.medians() == pytest.approx([1.0, 2.0])
    assert timed.spread(0) == pytest.approx(0.5) and timed.spread(1) == pytest.approx(0.5)
    assert timed.summary(1).n == 4 and timed.summary(1).median_ms == pytest.approx(2.0)
    # Totals are split: 9 runs over 4 blocks is 3 rounds a block.
    three = measure_in_blocks(table, runners, blocks=4, warmup=0, runs=9, min_time_s=None)
    assert three.n == [3, 3, 3, 3] and three.runner == "fake" and three.clock == "custom"
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="blocks"):
            measure_in_blocks(table, runners, blocks=bad)


def test_block_sampler_spreads_blocks_over_the_work_and_follows_the_unit():
    """Blocks are due at 1/4, 2/4, 3/4 of the work, the last one at the end; a block
    measured before the table's unit changed is converted to the final unit."""
    from types import SimpleNamespace

    from lut_builder.end_to_end import BlockSampler

    table = SimpleNamespace(reference=None, unit_ms=1.0)
    machine = _Machine()
    sampler = BlockSampler(table, [machine.runner(1.0)], blocks=4, warmup=0, runs=4)
    taken_at = []
    for k in range(1, 101):  # 100 points of work
        if sampler.due(k / 100):
            sampler.sample()
            taken_at.append(k)
        if k == 30:
            table.unit_ms = 0.5  # e.g. a faster reference run: the unit halves
    assert taken_at == [25, 50, 75] and sampler.taken == 3
    timed = sampler.finish()
    assert sampler.taken == 4 and not sampler.due(1.0)
    # Measured 1.0 ms while the unit was 1.0 ms: one unit, 0.5 ms in the final unit.
    assert timed.block_medians(0) == pytest.approx([0.5, 1.0, 1.0, 1.0])


def test_served_blocks_time_models_as_deployed_and_round_robin_does_not():
    """A model whose first two runs in a row cost 1.5x (another model's state still in
    the caches): served, its figure is its steady cost, whatever ran before; round-robin
    (one timed run after one untimed), the cold cost. Each served round runs the warm-up
    and then enough timed runs to fill the block."""
    from types import SimpleNamespace

    from lut_builder.end_to_end import BlockSampler
    from lut_builder.timing import SERVED_WARM_RUNS

    table = SimpleNamespace(reference=None, unit_ms=1.0)
    machine = _Machine(cold=1.5)
    runners = [machine.runner(1.0), machine.runner(2.0)]
    served = BlockSampler(table, runners, blocks=2, warmup=0, runs=4, regime="served")
    timed = served.finish()
    assert timed.regime == "served" and timed.n == [2, 2]
    assert timed.medians() == pytest.approx([1.0, 2.0])
    # One round of 20 ms blocks: 20 timed runs of the 1 ms model, 10 of the 2 ms one,
    # each after the warm-up, once each model's per-call time is estimated (3 untimed
    # runs, then runs until 5 ms have passed: 5 of the 1 ms model, 3 of the 2 ms one).
    before = machine.calls
    BlockSampler(table, runners, blocks=1, warmup=0, runs=1, regime="served").finish()
    estimate = (3 + 5) + (3 + 3)
    assert machine.calls - before == estimate + 2 * SERVED_WARM_RUNS + 20 + 10
    rr = BlockSampler(table, runners, blocks=2, warmup=0, runs=4, regime="round-robin")
    cold = rr.finish()
    assert cold.regime == "round-robin" and cold.medians() == pytest.approx([1.5, 3.0])
    with pytest.raises(ValueError, match="regime"):
        BlockSampler(table, runners, regime="alone")


def test_time_relative_serves_each_callable_in_a_block_against_the_reference():
    """Served against a reference: each callable's round figure is the median of its
    block (a slow first timed run does not move it) over the reference runs around it."""
    from lut_builder.timing import SERVED_WARM_RUNS, time_relative

    machine = _Machine()
    model, reference = machine.runner(2.0), machine.runner(1.0)

    slow = []

    def hiccup():  # the first timed run of each block is 10x slow
        model()
        if machine.streak == SERVED_WARM_RUNS + 1:
            machine.now += 18.0 / 1e3
            slow.append(machine.now)

    rel = time_relative([hiccup], reference, warmup=0, rounds=3, clock=machine.clock, block_ms=20.0)
    assert rel.rounds == 3
    assert rel.ratio[0] == pytest.approx([2.0, 2.0, 2.0])
    assert len(slow) == 1 + 3  # the per-call estimate's run, then one in each block
    assert rel.time_ms[0] == pytest.approx([2.0, 2.0, 2.0])
    for bad in ({"block_ms": -1.0}, {"block_ms": 5.0, "block_runs": 0}):
        with pytest.raises(ValueError, match="block"):
            time_relative([hiccup], reference, rounds=1, clock=machine.clock, **bad)


def test_calibration_fits_the_median_of_blocks_and_stores_their_spread(tmp_path):
    """An affine calibration on two models whose true latency is 1.2 x layers + 0.1 ms:
    recovered although the machine ran slow for its first block; the blocks are kept."""
    import torch
    from torch import nn

    from lut_builder.latency_model import calibrate_overhead
    from lut_builder.signatures import model_layers

    def net(mid: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(16, mid, 3, padding=1), nn.ReLU(), nn.Conv2d(mid, 16, 3, padding=1)
        ).eval()

    model, narrow, x = net(32), net(16), torch.randn(1, 16, 8, 8)
    with make_table(tmp_path / "t.lut", Grid([16, 32], [16, 32]), alignment=16) as table:

        def layers(m):
            return [(i.signature, i.c_in, i.c_out) for i in model_layers(m, x).values()]

        sums = [predict_latency(table, layers(m), overhead=False) for m in (model, narrow)]
        true = {id(m): 1.2 * s + 0.1 for m, s in zip((model, narrow), sums)}
        # Warm-up 2 rounds, then 4 blocks of 2 rounds; the first block runs 1.4x slow.
        machine = _Machine(slow_calls=2 * 2 + 2 * 2 * 2, slow=1.4)
        over = calibrate_overhead(
            table, lambda m: machine.runner(true[id(m)]), model, x, variants=[narrow],
            warmup=2, runs=8, min_time_s=0.0, blocks=4, regime="round-robin",
        )  # fmt: skip
        assert table.scale == pytest.approx(1.2) and over == pytest.approx(0.1)
        details = table.overhead
        assert details["model"] == "affine" and details["blocks"] == 4
        assert details["measured_ms"] == pytest.approx(true[id(model)])
        meds = details["block_medians_ms"]
        assert len(meds) == 2 and all(len(m) == 4 for m in meds)
        assert meds[0][0] == pytest.approx(1.4 * true[id(model)])
        assert details["block_spread"] == pytest.approx(0.4)
        assert details["timing"]["n"] == 4
        assert details["regime"] == "round-robin"


def test_check_latency_model_errors_and_speedup_errors():
    """Each copy's prediction against its measurement, and its predicted speed-up over
    the unpruned model's against the measured one; the verdict from the speed-ups."""
    from lut_builder.latency_model import CHECK_LIMITS, Calibration, check_latency_model

    cal = Calibration(0.1, 1.2, "affine")
    base = (1.0, 1.3)  # predicted exactly: 1.2 * 1.0 + 0.1
    exact = check_latency_model(cal, base, [(0.5, 0.7), (0.25, 0.4)])
    assert exact["copies"] == 2 and exact["within"] is True
    assert exact["error_max"] == pytest.approx(0.0, abs=1e-12)
    assert exact["speedup_error_max"] == pytest.approx(0.0, abs=1e-12)
    # A copy measured 10% slower than predicted; the unpruned model measured 4% fast.
    off = check_latency_model(cal, (1.0, 1.25), [(0.5, 0.77), (0.5, 0.7)])
    first, second = off["points"]
    assert first["predicted_ms"] == pytest.approx(0.7)
    assert first["error"] == pytest.approx(0.7 / 0.77 - 1)
    assert first["speedup_error"] == pytest.approx((0.7 / 1.3) / (0.77 / 1.25) - 1)
    assert second["speedup_error"] == pytest.approx((0.7 / 1.3) / (0.7 / 1.25) - 1)
    assert off["speedup_error_max"] == pytest.approx(abs(first["speedup_error"]))
    assert off["speedup_error_median"] == pytest.approx(
        (abs(first["speedup_error"]) + abs(second["speedup_error"])) / 2
    )
    assert off["speedup_error_max"] > CHECK_LIMITS[1] and off["within"] is False
    for bad in ([], [(0.5, 0.0)], [(float("nan"), 0.5)]):
        with pytest.raises(ValueError):
            check_latency_model(cal, base, bad)


def test_describe_check_warns_only_beyond_the_limits():
    from lut_builder.latency_model import Calibration, check_latency_model, describe_check

    cal = Calibration(0.0, 1.0, "additive")
    good = describe_check(check_latency_model(cal, (1.0, 1.0), [(0.5, 0.51), (0.4, 0.4)]))
    assert "2 random-width copies" in good and "1.0% median" in good
    assert "beyond" not in good
    bad = describe_check(check_latency_model(cal, (1.0, 1.0), [(0.5, 0.6)]))
    assert "16.7% median" in bad and "beyond 5% / 10%" in bad and "--feedback" in bad
    # The regime the copies were timed in; a check stored without one was round-robin.
    assert "copies (timed round-robin)" in good
    served = {**check_latency_model(cal, (1.0, 1.0), [(0.5, 0.5)]), "regime": "served"}
    assert "copies (served)" in describe_check(served)
    # Any mapping the check is read back as (describe_check takes a Mapping).
    from types import MappingProxyType

    assert "copies (served)" in describe_check(MappingProxyType(served))


def test_the_check_says_how_precisely_its_blocks_measured_the_speedups():
    # Paired block by block: a copy that runs at half the unpruned model's latency in
    # every block is measured exactly however the blocks' level moves; one whose ratio
    # moves between blocks has the standard error of its per-block logarithms.
    import math
    import statistics

    from lut_builder.latency_model import Calibration, check_latency_model, describe_check

    cal = Calibration(0.0, 1.0, "additive")
    base = [1.0, 1.2, 0.9, 1.1]
    steady = [b / 2 for b in base]
    moving = [0.5, 0.66, 0.45, 0.5]
    check = check_latency_model(cal, (1.0, 1.0), [(0.5, 0.5), (0.5, 0.52)], [base, steady, moving])
    first, second = check["points"]
    assert first["speedup_se"] == pytest.approx(0.0, abs=1e-12)
    want = statistics.stdev(math.log(b / m) for b, m in zip(base, moving)) / 2
    assert second["speedup_se"] == pytest.approx(want) and want > 0
    assert check["speedup_se_median"] == pytest.approx(want / 2)
    assert f"measured to ±{want:.1%}" in describe_check(check)
    # A miss beyond the limits but within the check's own scatter says so; one far
    # beyond it does not.
    noisy = [[1.0, 1.0, 1.0, 1.0], [0.6, 0.4, 0.6, 0.4]]
    near = check_latency_model(cal, (1.0, 1.0), [(0.5, 0.47)], noisy)
    assert near["within"] is False and "may not confirm it" in describe_check(near)
    far = check_latency_model(cal, (1.0, 1.0), [(0.5, 0.8)], [[1, 1], [0.8, 0.8]])
    assert far["within"] is False and "may not confirm" not in describe_check(far)
    # Each limit passed is judged by its own scatter: a median within its limit and a
    # largest miss far past its own, precisely measured copy's is a miss.
    copies = [(0.5, 0.5), (0.5, 0.5), (0.5, 0.4)]
    blocks = [[1.0, 1.0], [0.6, 0.4], [0.6, 0.4], [0.4, 0.4]]
    tail = check_latency_model(cal, (1.0, 1.0), copies, blocks)
    assert tail["speedup_error_median"] == 0 and tail["speedup_error_max"] == pytest.approx(0.25)
    assert tail["speedup_se_median"] > 0.1 and tail["points"][2]["speedup_se"] == 0
    assert tail["within"] is False and "may not confirm" not in describe_check(tail)
    # One block: no precision to state; blocks that do not match the models: refused.
    one = check_latency_model(cal, (1.0, 1.0), [(0.5, 0.5)], [[1.0], [0.5]])
    assert "speedup_se_median" not in one and "measured to" not in describe_check(one)
    for bad in ([[1.0, 1.0]], [[1.0, 1.0], [0.5]], [[1.0, 0.0], [0.5, 0.5]]):
        with pytest.raises(ValueError):
            check_latency_model(cal, (1.0, 1.0), [(0.5, 0.5)], bad)
