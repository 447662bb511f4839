"""Measured-latency feedback: the pruner checks its plans against the real backend.

A latency table predicts a network as the sum of its layers, each measured alone. Where
the solver pushes layers to extreme widths (one bundle of channels in a wide network),
that sum errs most, and the solver is drawn to exactly the points where the table is
too optimistic: on the MobileNetV2 of ``bench/pareto.py`` a plan predicted at 0.299x
of the dense model measured 0.345x, while Torch-Pruning's widths, predicted at 0.303x,
measured 0.312x (ONNX Runtime, one thread, interleaved). Reading the error of the table
off a measurement of the plan itself corrects it where it matters.

:class:`MeasuredLatency` is the measurement: the unpruned model and a candidate, each a
runner of :mod:`lut_builder.backends` on one backend, timed interleaved round by round,
each in a block of back-to-back inferences as a served model runs
(:func:`lut_builder.timing.time_blocks`); the figure is the median per-round ratio
candidate / unpruned, and the measurement goes
on, ``rounds`` at a time, until the 95% interval of that median is within
:data:`FEEDBACK_PRECISION` of it. Give it to :class:`~halp_trt.prune.Pruner` as
``feedback``: after each pruning step the pruner measures its plan, keeps ``measured /
predicted`` as the table's error near the plan, and divides the next budgets by it; at
the last step it re-solves until the measured ratio, with its interval added, lies
between 1.5% below (:data:`FEEDBACK_BELOW`) and 1% above (:data:`FEEDBACK_TOLERANCE`) the
target, or :data:`FEEDBACK_SOLVES` extra solves are spent. It
suits backends where a model loads in seconds (ONNX Runtime, torch); a TensorRT engine
build per step would take minutes.

**Blocks.** A model timed one inference at a time, each after one untimed inference and
between the dense model's, runs slower than it does served alone: on a Zen 5 CPU (ONNX
Runtime, one thread) MobileNetV2 copies timed that way read 7-20% slower against the
dense model than in blocks of 20 inferences, and plans the pruner landed at its target
ran about 13% under it served alone (bench/timing_methods.py). In blocks of at least
:data:`FEEDBACK_BLOCK_MS` after a few untimed inferences, each model's figure is what it
costs back to back, as served, and the ratio that of two served models; the ResNet-18's
copies of 2 ms or more read the same both ways.

**Clocks.** At one CPU thread the runners time on the calling thread's CPU clock, which
other processes' preemption does not reach: each sample the median of one block. With several
threads the clock is the wall clock, which takes every preemption in full; there each
sample is the median of short chunks of inferences (:func:`lut_builder.timing.time_chunked`,
as ``halp-trt verify`` times). On the 2-vCPU development machine, two ONNX Runtime
threads timed one inference per sample spread 100-200% round to round in the pruner
where verify's chunks spread 23-34%, and the pruner set its 2-thread timings aside.

**GPUs.** On the torch backend of a GPU (``runner_options`` with the table's device and
precision, :func:`feedback_from_table`) each model is replayed as one CUDA graph in the
table's layout, as its layers were timed, on the wall clock in chunks; a model that
cannot be captured runs eagerly, times its kernel launches rather than its widths, and
its measurement is not trusted (:attr:`MeasuredLatency.note`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch.nn as nn

#: The last step accepts a plan measured at most this much above the target ratio...
FEEDBACK_TOLERANCE = 0.01
#: ... and at most this much below it (a plan further below gives up accuracy). At 3%, on
#: a table whose calibration predicts served latency (batch 1, Zen 3, MobileNetV2 at
#: 0.3x, six seeds) the first plan, up to 3.7% under the target, was kept: the plans ended
#: at 0.975 of it on the mean, 0.8029 accurate; at 1.5%, 0.992 and 0.8144
#: (bench/PARETO.md, "At batch 1 on the Zen 3").
FEEDBACK_BELOW = 0.015
#: Extra solves the last step may take to come within the tolerance.
FEEDBACK_SOLVES = 3
#: A measurement takes more rounds until the 95% interval of its median ratio lies within
#: this fraction of the median (either side)...
FEEDBACK_PRECISION = 0.01
#: ... or it has taken this many times its ``rounds``.
FEEDBACK_MAX_BATCHES = 4
#: A measurement whose interval is still wider than this (either side) is not trusted: on
#: the 2-core development machine, two ONNX Runtime threads timed the same pruned model
#: at 0.24x in the pruner and 0.37-0.40x in verify; a busy machine must not steer the plan.
FEEDBACK_TRUST = 0.05
#: Each runner runs at least this long per round: one block of back-to-back inferences
#: at one thread (:func:`lut_builder.timing.time_blocks`), chunks of about 3 ms with
#: several threads (wall clock, :func:`lut_builder.timing.time_chunked`).
FEEDBACK_BLOCK_MS = 20.0
#: At one thread, every block times at least this many inferences (a 12 ms ResNet-18
#: times 5, not 2, so that one slow inference does not decide its round).
FEEDBACK_BLOCK_RUNS = 5


class MeasuredLatency:
    """Latency of candidate models as a ratio to the unpruned one, measured interleaved.

    Args:
        dense: the unpruned model (copied now: the pruner masks the original in place).
        example_input: an input of the deployed shape (batch included).
        backend: a backend with a runner (``onnxruntime``, ``torch``).
        threads: CPU threads of the runners (the table's count); None on a GPU.
        runner_options: further keyword arguments of the runners, as the table's
            backend measured: ``{"device": "cuda", "precision": "fp16"}`` for a torch
            table of a GPU (:func:`feedback_from_table` gives them).
        rounds: timed interleaved rounds per batch.
        warmup: untimed inferences before each block (one thread), untimed rounds
            (several threads).
        precision: the measurement takes batches until its median's 95% interval lies
            within this fraction of the median...
        max_batches: ... or it has taken this many.
        block_ms: each model's least time per round: one block of inferences (one
            thread), chunks of inferences (several threads, wall clock).

    Raises:
        UserError: the backend has no runner here.
        ValueError: counts or times out of range.
    """

    def __init__(
        self,
        dense: nn.Module,
        example_input: Any,
        *,
        backend: str = "onnxruntime",
        threads: int | None = 1,
        rounds: int = 30,
        warmup: int = 3,
        precision: float = FEEDBACK_PRECISION,
        max_batches: int = FEEDBACK_MAX_BATCHES,
        block_ms: float = FEEDBACK_BLOCK_MS,
        runner_options: Mapping[str, Any] | None = None,
    ) -> None:

        if rounds < 3 or warmup < 0 or max_batches < 1 or not precision > 0 or block_ms < 0:
            raise ValueError(
                "MeasuredLatency needs rounds >= 3, warmup >= 0, max_batches >= 1, "
                "precision > 0 and block_ms >= 0"
            )
        self.backend = backend
        self.threads = None if threads is None else int(threads)
        self.rounds, self.warmup = int(rounds), int(warmup)
        self.precision, self.max_batches = float(precision), int(max_batches)
        self.block_ms = float(block_ms)
        self.runner_options = dict(runner_options or {})
        self.x = example_input.detach().cpu()
        self._dense = self._runner(dense)
        #: The last measurement's per-round spread (p10 to p90 over the median)...
        self.spread: float | None = None
        #: ... the half-width of the 95% interval of its median, over the median (the
        #: larger side)...
        self.halfwidth: float | None = None
        #: ... its number of timed rounds...
        self.rounds_timed = 0
        #: ... and whether it can be trusted: False when the interval stayed wider than
        #: :data:`FEEDBACK_TRUST` after ``max_batches`` batches of rounds, or when a model
        #: did not run as the table's layers were timed (:attr:`note` says why).
        self.reliable = True
        #: Why the last measurement cannot steer a plan though its timings agree ("" if
        #: it can): on a GPU, a model that could not be captured as a CUDA graph runs
        #: eagerly and times its kernel launches, whatever its widths.
        self.note = ""

    def _runner(self, model: nn.Module) -> Any:
        """A runner of a copy of ``model`` (the runner moves it where it runs)."""
        from lut_builder.backends import make_runner

        options = dict(self.runner_options)
        if self.threads is not None:
            options["threads"] = self.threads
        return make_runner(self.backend, copy.deepcopy(model).cpu().eval(), self.x, **options)

    def __call__(self, model: nn.Module) -> float:
        """``model``'s latency over the unpruned model's: the median of per-round ratios,
        over as many batches of ``rounds`` as it takes (at most ``max_batches``) for the
        median's 95% interval to lie within ``precision`` of it. :attr:`halfwidth` says
        how close it came, :attr:`reliable` whether it is close enough to steer a plan."""
        from lut_builder.timing import Timing

        runner = self._runner(model)
        try:
            ratios = self._ratios(runner)
            halfwidth = _halfwidth(ratios)
            for _ in range(self.max_batches - 1):
                if halfwidth <= self.precision:
                    break
                ratios = np.concatenate([ratios, self._ratios(runner)])
                halfwidth = _halfwidth(ratios)
        finally:
            runner.close()
        self.spread = Timing.from_samples(ratios).spread  # p10 to p90 over the median
        self.halfwidth = halfwidth
        self.rounds_timed = len(ratios)
        eager = [r.note for r in (self._dense, runner) if getattr(r, "note", "")]
        self.note = f"a model {eager[0]}, not as the table's layers were timed" if eager else ""
        self.reliable = self.halfwidth <= FEEDBACK_TRUST and not self.note
        return float(np.median(ratios))

    def _ratios(self, runner: Any) -> np.ndarray:
        """One batch of ``rounds`` per-round ratios candidate / unpruned."""
        dense, cand = served_times(
            [self._dense, runner], rounds=self.rounds, warmup=self.warmup, block_ms=self.block_ms
        )
        return np.asarray(cand) / np.asarray(dense)

    def close(self) -> None:
        self._dense.close()

    def __enter__(self) -> MeasuredLatency:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def served_times(
    runners: list[Any], *, rounds: int, warmup: int = 3, block_ms: float = FEEDBACK_BLOCK_MS
) -> list[list[float]]:
    """Per-round milliseconds of ``runners`` (one deployment's, so one clock), interleaved,
    each served as it is deployed: on the thread clock (one CPU thread) one block of
    back-to-back inferences a round, at least :data:`FEEDBACK_BLOCK_RUNS` and
    ``block_ms`` after ``warmup`` untimed (:func:`lut_builder.timing.time_blocks`);
    otherwise (several threads, a GPU) chunks of inferences for ``block_ms`` a round on
    the wall clock after ``warmup`` untimed rounds (:func:`lut_builder.timing.time_chunked`).
    How :class:`MeasuredLatency` times, and what a bench that times as it does calls."""
    if runners[0].clock == "thread":
        from lut_builder.timing import time_blocks

        return time_blocks(
            runners, rounds=rounds, block_ms=block_ms, warm_runs=warmup,
            min_runs=FEEDBACK_BLOCK_RUNS, clock="thread",
        )[0]  # fmt: skip
    from lut_builder.timing import time_chunked

    return time_chunked(runners, warmup=warmup, rounds=rounds, min_block_ms=block_ms)[0]


def _halfwidth(ratios: np.ndarray) -> float:
    """The larger side of the 95% interval of the median ratio, over the median."""
    from lut_builder.timing import median_interval

    med = float(np.median(ratios))
    if not med > 0:
        return float("inf")
    lo, hi = median_interval(ratios)
    return max(med - lo, hi - med) / med


def feedback_from_table(table: Any) -> dict[str, Any]:
    """:class:`MeasuredLatency`'s keyword arguments for the deployment a table describes,
    timed here: a CPU table at FP32 measured on this machine's CPU model (``backend``,
    ``threads``), or a torch table of this machine's GPU (``backend``, ``threads`` None,
    ``runner_options``: the device, precision, layout and graph replay it was measured
    at; a model is replayed as one CUDA graph there, so a plan times in milliseconds).

    Raises:
        UserError: a TensorRT, INT8 or analytic table, a GPU table where this machine has
            no GPU of that name, or a CPU table measured on another CPU model or on a CPU
            with other kernel extensions (feedback would time this machine, not the
            table's).
    """
    from lut_builder.backends.base import host_fingerprint

    from ..errors import UserError

    fp = getattr(table, "fingerprint", None) or {}
    backend, device = fp.get("backend"), str(fp.get("device", ""))
    where = (
        f"the table {getattr(table, 'path', '')} is {backend} {fp.get('precision', '')} "
        f"on {device or '?'}"
    )
    if backend == "torch" and device and not device.startswith("cpu"):
        return _gpu_feedback(fp, where)
    if backend not in ("onnxruntime", "torch") or not device.startswith("cpu"):
        raise UserError(
            "latency feedback times plans on this machine's CPU (onnxruntime or torch) or "
            f"GPU (torch): {where}"
        )
    if fp.get("precision", "fp32") != "fp32":
        raise UserError(f"latency feedback times FP32 models: {where}")
    host = host_fingerprint()
    here = host["cpu"]
    if device != f"cpu: {here}":
        raise UserError(f"latency feedback times this machine ({here}), but {where}")
    # One model name can cover CPUs that run other kernels (AVX2 and AVX-512 EPYCs); a
    # table that records its CPU's flags must have this one's. Older tables do not.
    table_host = fp.get("host")
    flags = table_host.get("cpu_flags") if isinstance(table_host, Mapping) else None
    if flags is not None and host["cpu_flags"] is not None and flags != host["cpu_flags"]:
        theirs, ours = set(flags), set(host["cpu_flags"])
        raise UserError(
            f"latency feedback times this machine ({here}), but {where} with other CPU "
            f"extensions (the table's only: {', '.join(sorted(theirs - ours)) or 'none'}; "
            f"this CPU's only: {', '.join(sorted(ours - theirs)) or 'none'}): its kernels "
            "differ; build the table on this machine"
        )
    return {"backend": backend, "threads": int(getattr(table, "threads", None) or 1)}


def _gpu_feedback(fp: Mapping[str, Any], where: str) -> dict[str, Any]:
    """:func:`feedback_from_table` for a torch table of a GPU: this process's CUDA device
    (under torchrun, the rank's) must be the table's GPU model."""
    import torch

    from ..errors import UserError

    if fp.get("precision", "fp32") not in ("fp32", "fp16", "bf16"):
        raise UserError(f"latency feedback times fp32, fp16 or bf16 models on a GPU: {where}")
    if not torch.cuda.is_available():
        raise UserError(f"latency feedback times this machine, which has no CUDA device, but {where}")  # fmt: skip
    index = torch.cuda.current_device()
    here = torch.cuda.get_device_name(index)
    if here != fp.get("device"):
        raise UserError(f"latency feedback times this machine's GPU ({here}), but {where}")
    options = fp.get("options") if isinstance(fp.get("options"), Mapping) else {}
    runner: dict[str, Any] = {"device": f"cuda:{index}", "precision": fp.get("precision", "fp32")}
    for key in ("channels_last", "cuda_graph"):  # as the table's layers were measured
        if isinstance(options.get(key), bool):
            runner[key] = options[key]
    return {"backend": "torch", "threads": None, "runner_options": runner}
