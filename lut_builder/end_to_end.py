"""End-to-end latency of whole models, in the unit of a latency table.

What a table's prediction is compared with: the calibration of the network latency model
(:func:`~lut_builder.latency_model.calibrate_overhead`), ``halp-trt verify --lut`` and the
fidelity benchmarks all time whole models through :func:`measure_end_to_end`.
"""

from __future__ import annotations

from typing import Any

from .backends.base import make_reference
from .table import LatencyTable
from .timing import Timing, time_interleaved, time_relative


def measure_end_to_end(
    table: LatencyTable,
    runners: list[Any],
    *,
    warmup: int = 10,
    runs: int = 100,
    min_time_s: float | None = 2.0,
) -> list[Timing]:
    """End-to-end latency of whole models in the table's unit, interleaved round-robin.

    Each model is run once untimed right before each timed run: several models taking
    turns would otherwise evict each other's weights from the caches, and be timed
    colder than a deployed model that runs alone (on this 2 MB-L2 CPU that made an
    interleaved ResNet-56 about 10% slower than the same model run on its own).

    When the table was measured against a reference workload, every run is timed against
    reference runs around it, gated like the table's points, and scaled by the table's
    unit (so a
    prediction from the table and a measurement compare like for like on a machine whose
    speed changes); otherwise plain interleaved timings.

    Args:
        table: the latency table (its ``reference``, if any, is used).
        runners: :class:`~lut_builder.backends.Runner` objects on one device.
        warmup, runs, min_time_s: the timing loop (rounds).

    Returns:
        One :class:`Timing` per runner (milliseconds).
    """
    clock = runners[0].clock
    sync = runners[0].sync
    loop = {"warmup": warmup, "rounds": runs, "min_time_s": min_time_s, "clock": clock}
    ref = table.reference
    if ref is None:
        samples = time_interleaved(runners, sync=sync, warm=True, **loop)
        return [Timing.from_samples(s) for s in samples]
    rel = time_relative(
        runners,
        make_reference(ref["kind"]),
        sync=sync,
        gate=ref.get("gate"),
        reference_floor_ms=ref["unit_ms"],
        warm=True,
        **loop,
    )
    unit = ref["unit_ms"]
    return [Timing.from_samples([r * unit for r in rel.accepted(i)]) for i in range(len(runners))]
