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
            sync()
            t0 = clock_fn()
            fn()
            sync()
            dt = clock_fn() - t0
            total += dt
            samples[i].append(dt * 1e3)
        done += 1
    return samples


def _noop() -> None:
    return None


def time_relative(
    fns: Sequence[Callable[[], Any]],
    reference: Callable[[], Any],
    *,
    warmup: int = 5,
    rounds: int = 30,
    sync: Callable[[], Any] | None = None,
    min_time_s: float | None = None,
    max_rounds: int | None = None,
    clock: str | Callable[[], float] = "wall",
) -> tuple[list[list[float]], list[list[float]]]:
    """Time callables against a reference workload run just before each of them.

    A shared machine changes speed from second to second (on this 2-vCPU machine a
    ResNet-56 inference took 2.9 ms or 4.4 ms of thread CPU time depending on whether the
    sibling vCPU was busy). Dividing each run by a reference run made moments before
    cancels most of that: the ratio moved by about 5% where raw times moved by 50%.
    Multiply a ratio by the reference's latency in a fixed state to get milliseconds.

    Each round runs, for every function in order, ``reference()`` then ``fn()``.

    Args:
        fns: the callables to time.
        reference: the reference workload (fixed for the life of a latency table).
        warmup, rounds, sync, min_time_s, max_rounds, clock: as for
            :func:`time_interleaved` (``min_time_s`` counts both).

    Returns:
        ``(ratios, times)``: ``ratios[i]`` per round ``fns[i]``'s time divided by its
        reference's time; ``times[i]`` its raw times in milliseconds.

    Raises:
        ValueError: as :func:`time_interleaved`.
    """
    pairs: list[Callable[[], Any]] = []
    for fn in fns:
        pairs += [reference, fn]
    samples = time_interleaved(
        pairs,
        warmup=warmup,
        rounds=rounds,
        sync=sync,
        min_time_s=min_time_s,
        max_rounds=max_rounds,
        clock=clock,
    )
    ratios = []
    for i in range(len(fns)):
        ref, own = samples[2 * i], samples[2 * i + 1]
        ratios.append([t / r if r > 0 else math.inf for t, r in zip(own, ref)])
    return ratios, samples[1::2]
