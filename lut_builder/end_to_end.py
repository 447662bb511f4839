"""End-to-end latency of whole models, in the unit of a latency table.

What a table's prediction is compared with: the calibration of the network latency model
(:func:`~lut_builder.latency_model.calibrate_overhead`), ``halp-trt verify --lut`` and the
fidelity benchmarks all time whole models through :func:`measure_end_to_end`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .backends.base import make_reference
from .table import LatencyTable
from .timing import (
    SERVED_BLOCK_MS,
    SERVED_BLOCK_RUNS,
    SERVED_WARM_RUNS,
    Timing,
    time_blocks,
    time_interleaved,
    time_relative,
)

#: How whole models can be timed (:func:`measure_end_to_end`).
REGIMES = ("served", "round-robin")
#: How a table's calibration times whole models, unless told otherwise; a stored
#: calibration without a ``regime`` was timed round-robin (the only regime before).
DEFAULT_REGIME = "served"
#: A calibration's rounds in each regime, all its blocks together (:class:`BlockSampler`).
RUNS = {"served": 24, "round-robin": 100}


def stored_regime(details: Any) -> str:
    """How a stored calibration (a table's ``overhead`` details) or check timed its whole
    models; one stored without a ``regime`` (or none at all) was timed round-robin, the
    only regime before."""
    regime = details.get("regime") if isinstance(details, Mapping) else None
    return regime if regime in REGIMES else "round-robin"


def _check_regime(regime: str) -> None:
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {', '.join(REGIMES)}, not {regime!r}")


def measure_end_to_end(
    table: LatencyTable,
    runners: list[Any],
    *,
    warmup: int = 10,
    runs: int = 100,
    min_time_s: float | None = 2.0,
    regime: str = DEFAULT_REGIME,
    block_ms: float = SERVED_BLOCK_MS,
) -> list[Timing]:
    """End-to-end latency of whole models in the table's unit, interleaved.

    ``regime`` says how each model's figure in a round is taken:

    - ``"served"``: as a model is deployed, one inference after another: a block of
      back-to-back inferences lasting at least ``block_ms`` after a few untimed ones,
      its median (``runs`` counts rounds, i.e. blocks of each model);
    - ``"round-robin"``: one inference, right after an untimed one (several models
      taking turns would otherwise evict each other's weights from the caches, and be
      timed colder than a deployed model: on a 2 MB-L2 CPU that made an interleaved
      ResNet-56 about 10% slower than the same model run on its own).

    The two differ where a model's state outlives one inference: at batch 1 on a Zen 3
    (ONNX Runtime, one thread) MobileNetV2s pruned to 0.3 of the dense latency timed
    0.25-0.27 of it round-robin and 0.29-0.31 served (bench/calibration_regime.py), and a
    table calibrated round-robin predicted served speed-ups 13-16% wrong.

    When the table was measured against a reference workload, every run is timed against
    reference runs around it, gated like the table's points, and scaled by the table's
    unit (so a
    prediction from the table and a measurement compare like for like on a machine whose
    speed changes); otherwise plain interleaved timings.

    Args:
        table: the latency table (its ``reference``, if any, is used).
        runners: :class:`~lut_builder.backends.Runner` objects on one device.
        warmup, runs, min_time_s: the timing loop (rounds).
        regime: ``"served"`` or ``"round-robin"``.
        block_ms: a served block's length.

    Returns:
        One :class:`Timing` per runner (milliseconds).

    Raises:
        ValueError: an unknown regime.
    """
    _check_regime(regime)
    served = regime == "served"
    clock = runners[0].clock
    sync = runners[0].sync
    loop = {"warmup": warmup, "rounds": runs, "min_time_s": min_time_s, "clock": clock}
    ref = table.reference
    if ref is None and served:
        # No reference to gate on: blocks in turn (warm-up inside each block).
        times, _ = time_blocks(
            runners, rounds=runs, block_ms=block_ms, warm_runs=SERVED_WARM_RUNS,
            min_runs=SERVED_BLOCK_RUNS, clock=clock,
        )  # fmt: skip
        return [Timing.from_samples(t) for t in times]
    if ref is None:
        samples = time_interleaved(runners, sync=sync, warm=True, **loop)
        return [Timing.from_samples(s) for s in samples]
    rel = time_relative(
        runners,
        make_reference(ref["kind"]),
        sync=sync,
        gate=ref.get("gate"),
        reference_floor_ms=ref["unit_ms"],
        warm=not served,
        block_ms=block_ms if served else None,
        **loop,
    )
    unit = ref["unit_ms"]
    return [Timing.from_samples([r * unit for r in rel.accepted(i)]) for i in range(len(runners))]


@dataclass(frozen=True)
class BlockTimings:
    """Whole-model timings taken in blocks (see :class:`BlockSampler`).

    Attributes:
        blocks: ``blocks[b][i]``: runner ``i``'s median in block ``b`` (milliseconds).
        n: ``n[b]``: timed runs of each runner in block ``b``.
    """

    blocks: list[list[float]]
    n: list[int]
    #: The first runner's backend name and clock.
    runner: str = ""
    clock: str = ""
    #: How each model was timed (:data:`REGIMES`).
    regime: str = DEFAULT_REGIME

    def medians(self) -> list[float]:
        """Per runner, the median over blocks of its block medians (milliseconds)."""
        return [statistics.median(b[i] for b in self.blocks) for i in range(len(self.blocks[0]))]

    def block_medians(self, i: int) -> list[float]:
        """Runner ``i``'s median in each block, in order."""
        return [b[i] for b in self.blocks]

    def spread(self, i: int) -> float:
        """How much runner ``i``'s block medians disagree: (max - min) / median."""
        meds = self.block_medians(i)
        mid = statistics.median(meds)
        return (max(meds) - min(meds)) / mid if mid > 0 else 0.0

    def summary(self, i: int) -> Timing:
        """Runner ``i``'s block medians as a :class:`Timing` (``n`` = blocks)."""
        return Timing.from_samples(self.block_medians(i))


class BlockSampler:
    """Whole-model latencies measured in blocks, whenever the caller asks for one.

    Why: on a shared machine a whole model's speed relative to the table's reference
    workload moves with the load. Measured on a 2-core machine shared with other jobs,
    eight consecutive 2-second measurements of a MobileNetV2 (8x3x32x32, ONNX Runtime, one
    thread, in the table's unit) ranged over 1.77-1.97 ms, and a table built and
    calibrated in one such stretch was 10% off the same model measured minutes later. So a
    build takes its calibration's runs in blocks spread over the whole time it measures
    (:func:`lut_builder.build_table` asks for one block at a time, between points) and
    each model's latency is the median of its block medians: every stretch of the build
    weighs alike, and a block in an unusual state is left out.

    Blocks are kept as multiples of the table's unit at the time they are measured, so a
    table whose unit is lowered later in its build (a faster reference run) converts them
    all to its final unit.

    Args:
        table: the latency table (its ``reference``, if any, normalises every run).
        runners: :class:`~lut_builder.backends.Runner` objects on one device; the
            caller's to close.
        blocks: how many blocks the runs are split into (>= 1).
        warmup: untimed rounds before the first block.
        runs, min_time_s: the totals, split evenly between the blocks (each block at
            least one round); ``runs`` None: :data:`RUNS` of the regime (a served round
            times each model over many inferences, a round-robin round over one).
        regime: how each model is timed (:func:`measure_end_to_end`).

    Raises:
        ValueError: ``blocks`` < 1 or an unknown regime.
    """

    def __init__(
        self,
        table: LatencyTable,
        runners: list[Any],
        *,
        blocks: int = 8,
        warmup: int = 10,
        runs: int | None = None,
        min_time_s: float | None = 2.0,
        regime: str = DEFAULT_REGIME,
    ) -> None:
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise ValueError(f"blocks must be a positive integer, not {blocks!r}")
        _check_regime(regime)
        self.table, self.runners, self.blocks = table, runners, blocks
        self.regime = regime
        self.warmup = warmup
        runs = RUNS[regime] if runs is None else runs
        self.per_runs = max(1, math.ceil(runs / blocks))
        self.per_time = None if min_time_s is None else min_time_s / blocks
        self._units: list[list[float]] = []  # per block, per runner: multiples of the unit
        self._n: list[int] = []

    @property
    def taken(self) -> int:
        """Blocks measured so far."""
        return len(self._units)

    def sample(self) -> None:
        """Measure one block (the warm-up before the first)."""
        timings = measure_end_to_end(
            self.table,
            self.runners,
            warmup=self.warmup if not self._units else 0,
            runs=self.per_runs,
            min_time_s=self.per_time,
            regime=self.regime,
        )
        unit = self.table.unit_ms
        self._units.append([t.median_ms / unit for t in timings])
        self._n.append(timings[0].n)

    def due(self, fraction_done: float) -> bool:
        """Whether a block is due when ``fraction_done`` of the work it is spread over is
        done: blocks are taken at 1/blocks, 2/blocks... of the way (the last at the end)."""
        return self.taken < self.blocks - 1 and fraction_done >= (self.taken + 1) / self.blocks

    def finish(self) -> BlockTimings:
        """Take the blocks still missing, then return them all in the table's unit now."""
        while self.taken < self.blocks:
            self.sample()
        unit = self.table.unit_ms
        first = self.runners[0]
        clock = first.clock if isinstance(first.clock, str) else "custom"
        blocks = [[r * unit for r in b] for b in self._units]
        return BlockTimings(blocks, list(self._n), first.name, clock, self.regime)
