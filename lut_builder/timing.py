"""Timing primitives shared by the per-layer backends and whole-model runners.

Everything reports milliseconds. A measurement is a warm-up followed by many timed
runs; the median is the figure used everywhere (robust to the odd preempted run on a
shared machine), and the spread (p10/p90, mean, std) is kept so a table can say how
much it trusts each point.

Clocks: ``"wall"`` (``time.perf_counter``) is the latency a user sees and the only right
clock for GPUs and multi-threaded CPU inference. ``"thread"`` (the calling thread's CPU
time, ``time.thread_time``) is what a *single-threaded* CPU inference costs a core that
nothing else uses: on a 2-core machine shared with other processes, wall time of a
ResNet-56 run under load was 2.2x its unloaded value (7.2 vs 3.2 ms median, p90 8.0 ms),
while its thread time stayed at 3.2 ms (p10-p90 3.0-3.5 ms). Preemption by other
processes does not count against thread time; cache and memory-bandwidth interference
still does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Timing:
    """Summary of repeated timings of one thing, in milliseconds.

    Attributes:
        median_ms: the median run; the latency figure.
        p10_ms, p90_ms: 10th and 90th percentiles (linear interpolation).
        mean_ms, std_ms: mean and population standard deviation.
        n: how many timed runs the summary covers.
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    n: int

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("a Timing needs at least one run")
        if not (self.p10_ms <= self.median_ms <= self.p90_ms):
            raise ValueError("p10 <= median <= p90 must hold")

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> Timing:
        """Summarise raw per-run times (milliseconds).

        Raises:
            ValueError: no samples, or a sample that is not a finite non-negative number.
        """
        xs = sorted(float(s) for s in samples_ms)
        if not xs:
            raise ValueError("no samples to summarise")
        if any(not math.isfinite(x) or x < 0 for x in xs):
            raise ValueError("samples must be finite and non-negative")
        n = len(xs)
        mean = sum(xs) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / n)
        return cls(
            median_ms=_quantile(xs, 0.5),
            p10_ms=_quantile(xs, 0.1),
            p90_ms=_quantile(xs, 0.9),
            mean_ms=mean,
            std_ms=std,
            n=n,
        )

    @property
    def spread(self) -> float:
        """Relative dispersion (p90 - p10) / median; 0 for a zero median."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Timing:
        """Inverse of :meth:`to_dict`."""
        return cls(
            **{k: d[k] for k in ("median_ms", "p10_ms", "p90_ms", "mean_ms", "std_ms")},
            n=int(d["n"]),
        )


def _quantile(sorted_xs: Sequence[float], q: float) -> float:
    """Quantile of already sorted data with linear interpolation (numpy's default)."""
    pos = (len(sorted_xs) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


CLOCKS: dict[str, Callable[[], float]] = {
    "wall": time.perf_counter,
    "thread": time.thread_time,
}


def get_clock(clock: str | Callable[[], float]) -> Callable[[], float]:
    """A clock function (seconds) by name (``"wall"``, ``"thread"``) or as given.

    Raises:
        ValueError: an unknown clock name.
    """
    if callable(clock):
        return clock
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; known: {', '.join(CLOCKS)}")
    return CLOCKS[clock]


def time_callable(
    fn: Callable[[], Any],
    *,
    warmup: int = 10,
    runs: int = 50,
    min_time_s: float | None = None,
    sync: Callable[[], Any] | None = None,
    max_runs: int | None = None,
    clock: str | Callable[[], float] = "wall",
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then timed calls.

    Each timed call is bracketed by ``sync()`` (for asynchronous devices such as CUDA,
    so the clock measures the work and not its launch). At least ``runs`` calls are
    timed; when ``min_time_s`` is given, timing continues until the timed calls add up
    to that many seconds (so a fast layer gets enough samples for a stable median),
    bounded by ``max_runs`` (default ``100 * runs``).

    Args:
        fn: the work to time; its return value is ignored.
        warmup: untimed calls first (caches, allocator, lazy initialisation).
        runs: minimum number of timed calls, >= 1.
        min_time_s: minimum total timed duration in seconds, or None.
        sync: called before starting and before stopping the clock, or None.
        max_runs: upper bound on timed calls when ``min_time_s`` asks for more.
        clock: ``"wall"`` (default), ``"thread"`` (see the module notes) or a function
            returning seconds; ``min_time_s`` is counted on the same clock.

    Returns:
        A :class:`Timing` over the timed calls.

    Raises:
        ValueError: ``runs`` < 1, ``warmup`` < 0 or an unknown clock.
    """
    if runs < 1 or warmup < 0:
        raise ValueError("runs must be >= 1 and warmup >= 0")
    clock_fn = get_clock(clock)
    limit = max_runs if max_runs is not None else 100 * runs
    limit = max(limit, runs)
    sync = sync or _noop
    for _ in range(warmup):
        fn()
    sync()
    samples: list[float] = []
    total = 0.0
    while len(samples) < runs or (
        min_time_s is not None and total < min_time_s and len(samples) < limit
    ):
        sync()
        t0 = clock_fn()
        fn()
        sync()
        dt = clock_fn() - t0
        total += dt
        samples.append(dt * 1e3)
    return Timing.from_samples(samples)


def time_interleaved(
    fns: Sequence[Callable[[], Any]],
    *,
    warmup: int = 5,
    rounds: int = 30,
    sync: Callable[[], Any] | None = None,
    min_time_s: float | None = None,
    max_rounds: int | None = None,
    clock: str | Callable[[], float] = "wall",
    warm: bool = False,
) -> list[list[float]]:
    """Time several callables round-robin so that machine noise hits them all alike.

    Each round calls every function once, in order, timing each call. Comparing two
    models this way (and taking the median of per-round ratios) cancels slow drifts
    such as another process starting on a shared machine, which separate blocks of
    runs would attribute to whichever model ran at the time.

    Args:
        fns: the callables to compare.
        warmup: untimed rounds first.
        rounds: minimum number of timed rounds, >= 1.
        sync: called around each timed call (CUDA), or None.
        min_time_s: keep adding rounds until the timed calls add up to this many
            seconds, or None.
        max_rounds: upper bound on rounds when ``min_time_s`` asks for more
            (default ``100 * rounds``).
        clock: as for :func:`time_callable`.
        warm: run each callable once untimed right before each timed run (steady
            state even when large models evict each other from the caches).

    Returns:
        ``samples[i]`` = the list of ``rounds`` times of ``fns[i]``, in milliseconds.

    Raises:
        ValueError: no callables, ``rounds`` < 1, ``warmup`` < 0 or an unknown clock.
    """
    if not fns:
        raise ValueError("nothing to time")
    if rounds < 1 or warmup < 0:
        raise ValueError("rounds must be >= 1 and warmup >= 0")
    sync = sync or _noop
    for _ in range(warmup):
        for fn in fns:
            fn()
    clock_fn = get_clock(clock)
    sync()
    samples: list[list[float]] = [[] for _ in fns]
    limit = max(max_rounds if max_rounds is not None else 100 * rounds, rounds)
    total = 0.0
    done = 0
    while done < rounds or (min_time_s is not None and total < min_time_s and done < limit):
        for i, fn in enumerate(fns):
            if warm:
                fn()
            sync()
            t0 = clock_fn()
            fn()
            sync()
            dt = clock_fn() - t0
            total += dt
            samples[i].append(dt * 1e3)
        done += 1
    return samples


def per_call_ms(
    fn: Callable[[], Any],
    sync: Callable[[], Any],
    clock_fn: Callable[[], float] = time.perf_counter,
) -> float:
    """A rough per-call time (milliseconds) of ``fn`` on ``clock_fn`` (the wall clock by
    default), after a few untimed calls."""
    for _ in range(3):
        fn()
    sync()
    t0 = clock_fn()
    calls = 0
    while True:
        fn()
        calls += 1
        sync()
        elapsed = (clock_fn() - t0) * 1e3
        if elapsed >= 5 or calls >= 1000:
            return max(elapsed / calls, 1e-6)


def time_chunk(fn: Callable[[], Any], sync: Callable[[], Any], calls: int) -> float:
    """Per-call wall milliseconds of ``calls`` back-to-back calls, after one untimed call
    that brings the model's weights back into the caches another model used."""
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - t0) * 1e3 / calls


def time_chunked(
    runners: Sequence[Any],
    *,
    warmup: int,
    rounds: int,
    min_block_ms: float,
    chunk_ms: float = 3.0,
) -> tuple[list[list[float]], list[int]]:
    """Interleaved per-inference wall times of whole-model runners, in chunks.

    Every round times each runner in short chunks of back-to-back inferences (about
    ``chunk_ms`` each, after one untimed inference), alternating between the runners
    chunk by chunk (A B B A ...), until each has run for ``min_block_ms``; a runner's
    figure for the round is its median chunk. The runners sample the same few hundred
    milliseconds of the machine, and a chunk that another process preempted does not
    decide the round: the wall clock's answer to noise, where a single call per sample
    (:func:`time_interleaved`) takes every preemption in full. ``runners`` are callables
    with a ``sync`` method (:mod:`lut_builder.backends` runners).

    Returns:
        ``(times, inferences)``: ``times[i]`` the per-round milliseconds per inference of
        runner ``i``, ``inferences[i]`` the timed inferences of runner ``i`` per round.

    Raises:
        ValueError: no runners, ``rounds`` < 1, ``warmup`` < 0, a negative block time or
            a chunk time that is not positive.
    """
    if not runners:
        raise ValueError("nothing to time")
    if rounds < 1 or warmup < 0 or min_block_ms < 0 or chunk_ms <= 0:
        raise ValueError("rounds >= 1, warmup >= 0, min_block_ms >= 0 and chunk_ms > 0")
    per_call = [per_call_ms(r, r.sync) for r in runners]
    calls = [max(1, min(10_000, math.ceil(chunk_ms / t))) for t in per_call]
    chunk_time = max(c * t for c, t in zip(calls, per_call))
    chunks = max(3, min(1000, math.ceil(min_block_ms / chunk_time)))
    order = list(range(len(runners)))
    times: list[list[float]] = [[] for _ in runners]
    for n in range(warmup + rounds):
        got: list[list[float]] = [[] for _ in runners]
        for j in range(chunks):
            for i in order if (n + j) % 2 == 0 else order[::-1]:
                got[i].append(time_chunk(runners[i], runners[i].sync, calls[i]))
        if n >= warmup:
            for i, g in enumerate(got):
                times[i].append(_quantile(sorted(g), 0.5))
    return times, [c * chunks for c in calls]


#: A served block's untimed calls before its timed ones (:func:`time_relative`).
SERVED_WARM_RUNS = 3
#: The fewest timed calls in a served block.
SERVED_BLOCK_RUNS = 5
#: How long a served block lasts at least (milliseconds): what a whole model's latency is
#: measured over when it is timed as deployed, one inference after another.
SERVED_BLOCK_MS = 20.0


def time_blocks(
    runners: Sequence[Any],
    *,
    rounds: int,
    block_ms: float,
    warm_runs: int = 3,
    min_runs: int = 3,
    clock: str | Callable[[], float] = "thread",
) -> tuple[list[list[float]], list[int]]:
    """Interleaved per-inference times of whole-model runners, in blocks: each served as
    it is deployed, one inference after another.

    Every round runs each runner in turn for one block: ``warm_runs`` untimed inferences,
    then at least ``min_runs`` timed ones lasting at least ``block_ms`` together (the
    count fixed per runner beforehand from a rough per-call time); the runner's figure
    for the round is the median of its block. The order of the runners turns round by
    round (A B, B A, ...), so neither always runs first. A model timed one inference at a
    time between another model's inferences (:func:`time_interleaved`) runs slower than
    it does back to back: on a Zen 5 CPU, ONNX Runtime, one thread, a MobileNetV2 copy at
    0.3 of its widths timed 0.20-0.21 of the dense model one inference each, 0.17-0.18 in
    blocks of 20 (bench/timing_methods.py). ``runners`` are callables with a ``sync``
    method (:mod:`lut_builder.backends` runners).

    Returns:
        ``(times, runs)``: ``times[i]`` the per-round median milliseconds of runner
        ``i``, ``runs[i]`` its timed inferences per block.

    Raises:
        ValueError: no runners, ``rounds`` or ``min_runs`` < 1, ``warm_runs`` < 0, a
            negative block time or an unknown clock.
    """
    if not runners:
        raise ValueError("nothing to time")
    if rounds < 1 or min_runs < 1 or warm_runs < 0 or block_ms < 0:
        raise ValueError("rounds >= 1, min_runs >= 1, warm_runs >= 0 and block_ms >= 0")
    clock_fn = get_clock(clock)
    per_call = [per_call_ms(r, r.sync, clock_fn) for r in runners]
    runs = [max(min_runs, min(10_000, math.ceil(block_ms / t))) for t in per_call]
    order = list(range(len(runners)))
    times: list[list[float]] = [[] for _ in runners]
    for n in range(rounds):
        for i in order if n % 2 == 0 else order[::-1]:
            fn, sync = runners[i], runners[i].sync
            for _ in range(warm_runs):
                fn()
            samples = []
            for _ in range(runs[i]):
                sync()
                t0 = clock_fn()
                fn()
                sync()
                samples.append((clock_fn() - t0) * 1e3)
            times[i].append(_quantile(sorted(samples), 0.5))
    return times, runs


def median_interval(samples: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """A distribution-free confidence interval of the median (95% for ``z`` = 1.96):
    the order statistics ``n/2 -+ z*sqrt(n)/2`` of the samples, which assume nothing of
    their distribution (a preempted run is just a large sample), only that they are
    independent draws.

    Raises:
        ValueError: no samples.
    """
    xs = sorted(float(s) for s in samples)
    n = len(xs)
    if not n:
        raise ValueError("no samples")
    half = z * math.sqrt(n) / 2
    lo = max(1, math.floor(n / 2 - half))
    hi = min(n, math.ceil(n / 2 + 1 + half))
    return xs[lo - 1], xs[hi - 1]


def _noop() -> None:
    return None


@dataclass
class RelativeTiming:
    """Runs of several callables, each bracketed by runs of a reference workload.

    Attributes:
        ratio: ``ratio[i][k]``: round k's run of callable i divided by the mean of the
            reference runs just before and just after it.
        time_ms: ``time_ms[i][k]``: the raw time of that run.
        ok: ``ok[i][k]``: whether that run passed the gate (both reference runs around
            it within ``gate`` times the fastest reference run).
        reference_floor_ms: the fastest reference run seen (or the floor given).
    """

    ratio: list[list[float]]
    time_ms: list[list[float]]
    ok: list[list[bool]]
    reference_floor_ms: float

    @property
    def rounds(self) -> int:
        return len(self.ratio[0])

    def accepted(self, i: int) -> list[float]:
        """Accepted ratios of callable ``i`` (all of them if fewer than 3 passed)."""
        a = [r for r, ok in zip(self.ratio[i], self.ok[i]) if ok]
        return a if len(a) >= 3 else list(self.ratio[i])

    def paired(self, i: int, j: int) -> list[tuple[float, float]]:
        """Ratios of callables ``i`` and ``j`` from the rounds where both were accepted
        (all rounds if fewer than 3 were)."""
        both = [
            (a, b)
            for a, b, oa, ob in zip(self.ratio[i], self.ratio[j], self.ok[i], self.ok[j])
            if oa and ob
        ]
        return both if len(both) >= 3 else list(zip(self.ratio[i], self.ratio[j]))


def time_relative(
    fns: Sequence[Callable[[], Any]],
    reference: Callable[[], Any],
    *,
    warmup: int = 5,
    rounds: int = 30,
    sync: Callable[[], Any] | None = None,
    min_time_s: float | None = None,
    max_time_s: float | None = None,
    clock: str | Callable[[], float] = "wall",
    gate: float | None = None,
    reference_floor_ms: float | None = None,
    warm: bool = False,
    block_ms: float | None = None,
    block_runs: int = SERVED_BLOCK_RUNS,
) -> RelativeTiming:
    """Time callables against a reference workload run just before and after each.

    A shared machine changes speed from moment to moment: on this 2-vCPU machine a
    ResNet-56 inference took 2.9 ms or 4.4 ms of thread CPU time depending on whether
    the sibling vCPU was busy, for seconds at a time. Two things cancel that:

    - **normalisation**: each run divided by the reference runs around it (the ratio
      moved about 5% where raw times moved 50%); multiply by the reference's latency in
      a fixed state to get milliseconds;
    - **gating** (``gate``): only runs whose bracketing reference runs were both within
      ``gate`` times the fastest reference run count, i.e. runs made while the machine
      was in its fast (unshared) state, the state a dedicated machine is always in.

    Each round runs ``reference, fns[0], reference, fns[1], ..., fns[-1], reference``,
    where each reference is run twice and only the second run timed: measured right
    after a large model it would otherwise pay for reloading its weights into cache
    (a ResNet-56 run slowed the reference run after it by several percent). Rounds go on until every callable has ``rounds`` accepted runs and the timed runs
    (references included) add up to ``min_time_s``; with a gate, at most ``max_time_s``
    of wall time is spent waiting for accepted runs.

    Args:
        fns: the callables to time.
        reference: the reference workload (fixed for the life of a latency table).
        warmup, sync, clock: as for :func:`time_interleaved`.
        rounds: accepted runs wanted per callable.
        min_time_s: timed duration wanted, or None.
        max_time_s: wall-clock limit while waiting for accepted runs (default: ten
            times ``min_time_s`` plus 5 s).
        gate: acceptance threshold relative to the fastest reference run, e.g. 1.15;
            None accepts every run.
        reference_floor_ms: a known fastest reference time (from a table) to gate
            against while no faster run has been seen.
        warm: run each callable once untimed right before its timed run, so it is timed
            in the steady state of a deployed model (its weights in cache) even when
            several large models take turns and evict each other.
        block_ms: None: each callable's figure for a round is one call. A number: the
            callable is served, as a model is deployed: :data:`SERVED_WARM_RUNS` untimed
            calls, then at least ``block_runs`` calls lasting at least ``block_ms``
            together, back to back, each timed; the round's figure is their median (the
            count fixed per callable beforehand from a rough per-call time, as
            :func:`time_blocks` does). The two give different speed-ups: at batch 1 on
            a Zen 3 (ONNX Runtime, one thread) MobileNetV2s pruned to 0.3 of the dense
            model's latency timed 0.25-0.27 of it call by call, 0.29-0.31 served.
        block_runs: the fewest timed calls in a served block.

    Returns:
        A :class:`RelativeTiming`.

    Raises:
        ValueError: no callables, ``rounds`` < 1, ``warmup`` < 0 or an unknown clock.
    """
    if not fns:
        raise ValueError("nothing to time")
    if rounds < 1 or warmup < 0:
        raise ValueError("rounds must be >= 1 and warmup >= 0")
    if block_ms is not None and not (block_ms >= 0 and block_runs >= 1):
        raise ValueError("block_ms must be >= 0 and block_runs >= 1")
    clock_fn = get_clock(clock)
    sync = sync or _noop
    for _ in range(warmup):
        reference()
        for fn in fns:
            fn()
            reference()
    sync()

    def timed(fn: Callable[[], Any]) -> float:
        sync()
        t0 = clock_fn()
        fn()
        sync()
        return (clock_fn() - t0) * 1e3

    # Served: per callable, the timed calls of a block; its figure is their median, its
    # cost (counted towards ``min_time_s``) their sum.
    runs = None
    if block_ms is not None:
        runs = [
            max(block_runs, min(10_000, math.ceil(block_ms / per_call_ms(fn, sync, clock_fn))))
            for fn in fns
        ]

    def figure(i: int) -> tuple[float, float]:
        fn = fns[i]
        if runs is None:
            if warm:
                fn()
            t = timed(fn)
            return t, t
        for _ in range(SERVED_WARM_RUNS):
            fn()
        samples = sorted(timed(fn) for _ in range(runs[i]))
        return _quantile(samples, 0.5), sum(samples)

    def timed_reference() -> float:
        # An untimed run first: the timed one then finds its weights in cache whatever
        # ran before it (a big model evicts them, and would bias the ratio).
        reference()
        return timed(reference)

    floor = reference_floor_ms if reference_floor_ms else math.inf
    times: list[list[float]] = [[] for _ in fns]
    refs: list[list[tuple[float, float]]] = [[] for _ in fns]  # (before, after) per run
    spent_ms = 0.0
    limit = max_time_s if max_time_s is not None else 10 * (min_time_s or 0.0) + 5.0
    wall0 = time.perf_counter()
    n = 0
    while True:
        before = timed_reference()
        spent_ms += before
        for i in range(len(fns)):
            t, cost = figure(i)
            after = timed_reference()
            spent_ms += cost + after
            times[i].append(t)
            refs[i].append((before, after))
            before = after
        n += 1
        floor = min(floor, min(min(b, a) for r in refs for b, a in r[-1:]))
        enough_time = min_time_s is None or spent_ms >= 1e3 * min_time_s
        if n >= rounds and enough_time:
            if gate is None:
                break
            # Counting accepted runs costs O(rounds); do it every few rounds only.
            if n % 8 == 0 or n == rounds:
                if min(_count_ok(r, floor, gate) for r in refs) >= rounds:
                    break
                if time.perf_counter() - wall0 > limit:
                    break
        if gate is None and n >= 100 * rounds:
            break
    ok = [[gate is None or max(b, a) <= gate * floor for b, a in r] for r in refs]
    ratio = [[t / ((b + a) / 2) for t, (b, a) in zip(ts, r)] for ts, r in zip(times, refs)]
    return RelativeTiming(ratio, times, ok, floor)


def _count_ok(refs: list[tuple[float, float]], floor: float, gate: float) -> int:
    limit = gate * floor
    return sum(1 for b, a in refs if b <= limit and a <= limit)
