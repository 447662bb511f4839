"""Tests of lut_builder.timing: summaries and the timing loops (no device needed)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lut_builder.timing import (
    Timing,
    median_interval,
    time_blocks,
    time_callable,
    time_chunked,
    time_interleaved,
)


def test_from_samples_matches_numpy_quantiles():
    xs = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 7.0]
    t = Timing.from_samples(xs)
    assert t.n == 7
    assert t.median_ms == pytest.approx(np.median(xs))
    assert t.p10_ms == pytest.approx(np.quantile(xs, 0.1))
    assert t.p90_ms == pytest.approx(np.quantile(xs, 0.9))
    assert t.mean_ms == pytest.approx(np.mean(xs))
    assert t.std_ms == pytest.approx(np.std(xs))


def test_timing_round_trips_dict():
    t = Timing.from_samples([1.0, 2.0, 3.0])
    assert Timing.from_dict(t.to_dict()) == t
    assert t.spread == pytest.approx((t.p90_ms - t.p10_ms) / 2.0)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [-1.0]])
def test_from_samples_rejects_bad_samples(bad):
    with pytest.raises(ValueError):
        Timing.from_samples(bad)


def test_time_callable_counts_warmup_runs_and_syncs():
    calls, syncs = [], []
    t = time_callable(lambda: calls.append(1), warmup=3, runs=7, sync=lambda: syncs.append(1))
    assert len(calls) == 10
    assert t.n == 7
    assert len(syncs) >= 2 * 7  # around each timed call


def test_time_callable_min_time_extends_runs():
    t = time_callable(lambda: time.sleep(0.001), warmup=0, runs=2, min_time_s=0.03)
    assert t.n > 2
    assert t.median_ms >= 1.0
    capped = time_callable(lambda: None, warmup=0, runs=2, min_time_s=10.0, max_runs=5)
    assert capped.n == 5


def test_time_callable_rejects_bad_counts():
    with pytest.raises(ValueError):
        time_callable(lambda: None, runs=0)


def test_time_interleaved_round_robin_order():
    order = []
    samples = time_interleaved(
        [lambda: order.append("a"), lambda: order.append("b")], warmup=1, rounds=3
    )
    assert order == ["a", "b"] * 4
    assert [len(s) for s in samples] == [3, 3]


def test_time_interleaved_separates_slow_from_fast():
    samples = time_interleaved([lambda: time.sleep(0.004), lambda: None], warmup=0, rounds=5)
    assert np.median(samples[0]) > np.median(samples[1]) + 2.0


def test_time_interleaved_min_time_adds_rounds():
    samples = time_interleaved(
        [lambda: time.sleep(0.001), lambda: None], warmup=0, rounds=2, min_time_s=0.02
    )
    assert len(samples[0]) == len(samples[1]) > 2
    capped = time_interleaved([lambda: None], warmup=0, rounds=2, min_time_s=10, max_rounds=4)
    assert len(capped[0]) == 4


def test_time_relative_brackets_each_run_with_the_reference():
    from lut_builder.timing import time_relative

    order = []
    rel = time_relative(
        [lambda: (order.append("f"), time.sleep(0.004)), lambda: order.append("g")],
        lambda: (order.append("r"), time.sleep(0.002)),
        warmup=0,
        rounds=4,
    )
    assert order[:9] == ["r", "r", "f", "r", "r", "g", "r", "r", "r"]
    assert rel.rounds == 4 and all(all(o) for o in rel.ok)
    assert 1.3 < np.median(rel.accepted(0)) < 3.5  # 4 ms against 2 ms
    assert np.median(rel.accepted(1)) < 0.2
    assert np.median(rel.time_ms[0]) >= 4.0
    assert len(rel.paired(0, 1)) == 4


def test_time_relative_gate_drops_runs_made_while_the_machine_was_slow():
    from lut_builder.timing import time_relative

    state = {"n": 0}

    def reference():
        # Every third reference run is slow, as if another process shared the core.
        state["n"] += 1
        time.sleep(0.006 if state["n"] % 3 == 0 else 0.001)

    rel = time_relative([lambda: time.sleep(0.001)], reference, warmup=0, rounds=5, gate=1.5)
    assert not all(rel.ok[0]) and sum(rel.ok[0]) >= 5
    assert 0.6 < np.median(rel.accepted(0)) < 1.6  # slow-reference runs are not counted
    assert rel.reference_floor_ms < 2.0


def test_median_interval_is_the_order_statistics_around_the_median():
    xs = list(range(1, 31))  # n = 30: ranks floor(15 - 5.37) = 9 and ceil(16 + 5.37) = 22
    assert median_interval(xs[::-1]) == (9, 22)
    assert median_interval([4.0]) == (4.0, 4.0)
    with pytest.raises(ValueError, match="no samples"):
        median_interval([])


def test_median_interval_covers_the_median_95_percent_of_the_time_on_skewed_data():
    # Distribution-free: on exponential samples (median ln 2), as skewed as timings with
    # preempted runs, the interval holds the true median in at least about 95% of draws
    # (more with few samples: the ranks are rounded outwards), and not far more once
    # there are as many samples as a measurement takes.
    rng = np.random.default_rng(0)
    for n, most in ((10, 1.0), (30, 0.99), (120, 0.975)):
        hits = sum(
            lo <= np.log(2) <= hi
            for lo, hi in (median_interval(rng.exponential(size=n)) for _ in range(2000))
        )
        assert 0.94 <= hits / 2000 <= most, (n, hits)


class _Runner:
    """A callable runner with ``sync``, taking ``ms`` a call; records the call order."""

    def __init__(self, name, ms, log):
        self.name, self.ms, self.log = name, ms, log

    def __call__(self):
        self.log.append(self.name)
        time.sleep(self.ms / 1e3)

    def sync(self):
        return None


def test_time_chunked_alternates_chunks_and_gives_one_median_per_round():
    log: list[str] = []
    # Sleeps of milliseconds: a loaded machine oversleeps by tenths of one.
    fast, slow = _Runner("a", 1.0, log), _Runner("b", 5.0, log)
    (ta, tb), inner = time_chunked([fast, slow], warmup=1, rounds=4, min_block_ms=15, chunk_ms=10)
    assert len(ta) == len(tb) == 4
    assert all(b > a for a, b in zip(ta, tb))  # per-inference times: 5 ms against 1
    assert min(tb) >= 4.5 and min(ta) >= 0.9
    assert inner[0] > inner[1] >= 3  # more calls of the fast one fill the same chunk
    # Chunks alternate A B, then B A: both runners sample the same moments.
    timed = "".join(log)
    assert "ab" in timed and "ba" in timed


class _Cold(_Runner):
    """A runner that takes ``cold`` ms on its first call after another runner ran (its
    weights out of the caches), ``ms`` back to back."""

    def __init__(self, name, ms, cold, log):
        super().__init__(name, ms, log)
        self.cold = cold

    def __call__(self):
        slow = bool(self.log) and self.log[-1] != self.name
        self.log.append(self.name)
        time.sleep((self.cold if slow else self.ms) / 1e3)


def test_time_blocks_times_each_runner_back_to_back_in_turn():
    log: list[str] = []
    # Sleeps of milliseconds, so that a loaded machine's oversleeping (a few tenths of a
    # millisecond) moves the counts and figures by little.
    a, b = _Cold("a", 2.0, 24.0, log), _Cold("b", 8.0, 24.0, log)
    (ta, tb), runs = time_blocks([a, b], rounds=4, block_ms=32, warm_runs=0, clock="wall")
    assert len(ta) == len(tb) == 4
    # One block a round each, at least block_ms long: 16 inferences of a, 4 of b.
    # (A sleep never ends early, so 32 / 2 is the most; a busy machine's slower calls
    # give fewer.)
    assert 16 >= runs[0] > runs[1] >= 3
    # The figure is what each costs back to back: at least its sleep, and well under the
    # cold first call's 24 ms, which the block's median outvotes.
    assert all(1.9 <= t < 12.0 for t in ta) and all(7.9 <= t < 16.0 for t in tb)
    # Blocks turn: after each runner's rough per-call timing (a, b), a b | b a | a b | b a.
    turns = "".join(k for i, k in enumerate(log) if i == 0 or log[i - 1] != k)
    assert turns == "abababa"
    # The floor of runs holds for a runner slower than the block.
    _, runs = time_blocks([b], rounds=1, block_ms=0.1, min_runs=3, clock="wall")
    assert runs == [3]


def test_time_blocks_rejects_bad_counts():
    r = _Runner("a", 0.0, [])
    for kw in ({"rounds": 0}, {"min_runs": 0}, {"warm_runs": -1}, {"block_ms": -1.0}):
        with pytest.raises(ValueError):
            time_blocks([r], **{"rounds": 2, "block_ms": 1.0, **kw})
    with pytest.raises(ValueError, match="nothing to time"):
        time_blocks([], rounds=1, block_ms=1.0)
    with pytest.raises(ValueError, match="unknown clock"):
        time_blocks([r], rounds=1, block_ms=1.0, clock="sundial")


def test_time_chunked_rejects_bad_counts():
    r = _Runner("a", 0.0, [])
    for kw in ({"rounds": 0}, {"warmup": -1}, {"min_block_ms": -1.0}, {"chunk_ms": 0.0}):
        args = {"warmup": 0, "rounds": 2, "min_block_ms": 1.0, **kw}
        with pytest.raises(ValueError):
            time_chunked([r], **args)
    with pytest.raises(ValueError, match="nothing to time"):
        time_chunked([], warmup=0, rounds=1, min_block_ms=1.0)
