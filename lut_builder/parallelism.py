"""Whether a CPU table's extra threads ran in parallel while it was measured.

A table measured at N CPU threads models a deployment whose N threads run at once. On a
shared machine they may not: a virtual machine's second vCPU can be a hyperthread that
another tenant keeps busy, or another job can hold the cores. The table then prices N
threads at what one gives, and a model pruned against it misses a budget measured on
the deployment's idle cores by far: on a 2-vCPU machine whose second thread was taken,
the demo's model ran 10.6-10.8 ms at two threads against 9.3-11.5 ms at one, and a
2-thread table predicted its pruned plans 1.7x too fast. (Much of what was seen there
came from ONNX Runtime's spinning threads, since turned off at several threads: see
:func:`lut_builder.backends.onnxruntime.session.session_options`.)

Before an ONNX Runtime table is measured at N > 1 threads, and again after its points
are measured, :func:`check_parallelism` times the model itself at one thread and at N,
interleaved; the build stores the speed-up in the table (``info["parallel_checks"]``,
shown by ``lut-builder show``) and warns when it is below :data:`MIN_SPEEDUP`. Only ONNX
Runtime is checked: its sessions keep their own thread pools, where torch's thread count
is one per process and cannot time two at once.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import UserError
from .timing import median_interval, time_chunked

#: Where a cgroup v2 CPU quota is read (``"max 100000"`` or ``"QUOTA PERIOD"``).
CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"


def usable_cpus() -> int:
    """The CPUs this process may run threads on: its affinity mask (``taskset``, a
    container's CPU set) where the platform has one, else the machine's CPU count, and
    no more than a cgroup v2 CPU quota allows (``docker --cpus 2`` on a larger host),
    rounded up. At least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        with open(CGROUP_CPU_MAX, encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max" and int(period) > 0 and int(quota) > 0:
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota here (or unreadable): the mask decides
    return max(cpus, 1)


def check_thread_count(threads: Any, what: str = "threads") -> int:
    """``threads`` if it is an integer from 1 to :func:`usable_cpus`, else a
    :class:`~lut_builder.errors.UserError` naming ``what``: more threads than CPUs only
    oversubscribe them (the timings then describe contention, not the deployment), and a
    huge count crashes or hangs the runtimes instead of failing."""
    problem = thread_count_problem(threads)
    if problem:
        raise UserError(f"{what} {problem}")
    return threads


def thread_count_problem(threads: Any) -> str | None:
    """What is wrong with ``threads`` as a thread count (``"must be ..."``), or None:
    the one bound behind :func:`check_thread_count` and the command lines' ``--threads``."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        return f"must be an integer >= 1, not {threads!r}"
    cpus = usable_cpus()
    if threads > cpus:
        return f"must be at most {cpus}, the CPUs this process may use, not {threads}"
    return None


#: The speed-up over one thread below which N threads are said not to run in parallel.
#: On a 2-vCPU machine with nothing else running the check gave 1.11-1.75x for the demo's
#: ResNet-20 (2x width, batch 16, 16x16; 1.81x and 1.75x in one table build) and
#: 1.07-1.38x for the MobileNetV2 (batch 8, 16x16), and 0.996-1.10x for both with one
#: core kept busy by another process: a warning for a small model may mean only that it
#: gains little from a second thread.
MIN_SPEEDUP = 1.2


@dataclass(frozen=True)
class ParallelCheck:
    """The model's speed-up at ``threads`` CPU threads over one, timed interleaved."""

    threads: int
    #: Median over rounds of (time at one thread) / (time at ``threads``).
    speedup: float
    #: The 95% interval of that median (order statistics).
    low: float
    high: float
    rounds: int

    @property
    def parallel(self) -> bool:
        return self.speedup >= MIN_SPEEDUP

    def to_dict(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "speedup": self.speedup,
            "interval": [self.low, self.high],
            "rounds": self.rounds,
            "parallel": self.parallel,
        }

    def warning(self) -> str | None:
        """One line for the user when the threads did not run in parallel, else None."""
        if self.parallel:
            return None
        return (
            f"at {self.threads} threads the model ran only {self.speedup:.2f}x as fast as at "
            f"one (95% interval {self.low:.2f}-{self.high:.2f}): its threads are not running "
            "in parallel now (busy cores or a shared vCPU), or the model is too small to "
            f"gain from them; this table prices {self.threads} threads at what they give on "
            "this machine now, not on idle cores"
        )


def check_parallelism(
    make: Callable[[int], Any], threads: int, *, rounds: int = 15, min_block_ms: float = 20.0
) -> ParallelCheck:
    """Time one model at one thread and at ``threads``, interleaved (chunked wall clock,
    :func:`~lut_builder.timing.time_chunked`), and return the speed-up.

    Args:
        make: ``make(n)`` returns a runner of the model at ``n`` threads (a callable with
            ``sync`` and ``close``).
        threads: the thread count the table is measured at (> 1).
        rounds: timed rounds (after two untimed ones).
        min_block_ms: each runner's time per round.

    Raises:
        ValueError: ``threads`` < 2 or ``rounds`` < 1.
    """
    if threads < 2:
        raise ValueError("the check compares several threads with one: threads must be >= 2")
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    runners: list[Any] = []
    try:
        for n in (1, threads):
            runners.append(make(n))
        (one, many), _ = time_chunked(runners, warmup=2, rounds=rounds, min_block_ms=min_block_ms)
    finally:
        for r in runners:
            r.close()
    ratios = [a / b for a, b in zip(one, many)]
    low, high = median_interval(ratios)
    return ParallelCheck(threads, statistics.median(ratios), low, high, len(ratios))
