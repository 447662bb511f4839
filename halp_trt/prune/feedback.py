"""Measured-latency feedback: the pruner checks its plans against the real backend.

A latency table predicts a network as the sum of its layers, each measured alone. Where
the solver pushes layers to extreme widths (one bundle of channels in a wide network),
that sum errs most, and the solver is drawn to exactly the points where the table is
too optimistic: on the MobileNetV2 of ``bench/pareto.py`` a plan predicted at 0.299x
of the dense model measured 0.345x, while Torch-Pruning's widths, predicted at 0.303x,
measured 0.312x (ONNX Runtime, one thread, interleaved). Reading the error of the table
off a measurement of the plan itself corrects it where it matters.

:class:`MeasuredLatency` is the measurement: the unpruned model and a candidate, each a
runner of :mod:`lut_builder.backends` on one backend, timed interleaved round by round;
the figure is the median per-round ratio candidate / unpruned. Give it to
:class:`~halp_trt.prune.Pruner` as ``feedback``: after each pruning step the pruner
measures its plan, keeps ``measured / predicted`` as the table's error near the plan,
and divides the next budgets by it; at the last step it re-solves until the measured
ratio is within 1% above (:data:`FEEDBACK_TOLERANCE`) and 3% below
(:data:`FEEDBACK_BELOW`) the target, or :data:`FEEDBACK_SOLVES` extra solves are spent. It suits backends
where a model loads in seconds (ONNX Runtime, torch); a TensorRT engine build per step
would take minutes.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch.nn as nn

#: The last step accepts a plan measured at most this much above the target ratio...
FEEDBACK_TOLERANCE = 0.01
#: ... and at most this much below it (a plan further below gives up accuracy).
FEEDBACK_BELOW = 0.03
#: Extra solves the last step may take to come within the tolerance.
FEEDBACK_SOLVES = 3
#: A measurement whose per-round ratios spread (p10 to p90) by more than this fraction
#: of their median is timed once more...
FEEDBACK_MAX_SPREAD = 0.25
#: ... and trusted only if the two medians agree within this fraction. On the 2-core
#: development machine, two ONNX Runtime threads timed the same pruned model at 0.24x
#: in the pruner and 0.37-0.40x in verify (per-round spread 32-121%); a busy machine
#: must not steer the plan.
FEEDBACK_AGREE = 0.05


class MeasuredLatency:
    """Latency of candidate models as a ratio to the unpruned one, measured interleaved.

    Args:
        dense: the unpruned model (copied now: the pruner masks the original in place).
        example_input: an input of the deployed shape (batch included).
        backend: a backend with a runner (``onnxruntime``, ``torch``).
        threads: CPU threads of the runners (the table's count).
        rounds, warmup: timed and untimed interleaved rounds per measurement.

    Raises:
        UserError: the backend has no runner here.
    """

    def __init__(
        self,
        dense: nn.Module,
        example_input: Any,
        *,
        backend: str = "onnxruntime",
        threads: int = 1,
        rounds: int = 30,
        warmup: int = 5,
    ) -> None:
        from lut_builder.backends import make_runner

        self.backend, self.threads = backend, int(threads)
        self.rounds, self.warmup = int(rounds), int(warmup)
        self.x = example_input.detach().cpu()
        self._dense = make_runner(backend, self._cpu(dense), self.x, threads=self.threads)
        #: The last measurement's per-round spread (p10 to p90 over the median)...
        self.spread: float | None = None
        #: ... and whether it can be trusted: False when its spread was wide and a second
        #: timing's median disagreed (see FEEDBACK_MAX_SPREAD, FEEDBACK_AGREE).
        self.reliable = True

    @staticmethod
    def _cpu(model: nn.Module) -> nn.Module:
        return copy.deepcopy(model).cpu().eval()

    def __call__(self, model: nn.Module) -> float:
        """``model``'s latency over the unpruned model's (median of per-round ratios).

        A wide spread gets a second timing; the figure is then the median over both, and
        :attr:`reliable` says whether the two agreed."""
        from lut_builder.backends import make_runner

        runner = make_runner(self.backend, self._cpu(model), self.x, threads=self.threads)
        try:
            ratios = self._ratios(runner)
            first = float(np.median(ratios))
            self.spread, self.reliable = _spread(ratios), True
            if self.spread > FEEDBACK_MAX_SPREAD:
                again = self._ratios(runner)
                second = float(np.median(again))
                self.reliable = abs(second - first) <= FEEDBACK_AGREE * min(first, second)
                ratios = np.concatenate([ratios, again])
                self.spread = _spread(ratios)
        finally:
            runner.close()
        return float(np.median(ratios))

    def _ratios(self, runner: Any) -> np.ndarray:
        from lut_builder.timing import time_interleaved

        dense, cand = time_interleaved(
            [self._dense, runner],
            warmup=self.warmup,
            rounds=self.rounds,
            sync=runner.sync,
            clock=runner.clock,
            warm=True,
        )
        return np.asarray(cand) / np.asarray(dense)

    def close(self) -> None:
        self._dense.close()

    def __enter__(self) -> MeasuredLatency:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _spread(ratios: np.ndarray) -> float:
    """(p90 - p10) / median of per-round ratios."""
    p10, p50, p90 = np.percentile(ratios, [10, 50, 90])
    return float((p90 - p10) / p50) if p50 > 0 else float("inf")


def feedback_from_table(table: Any) -> dict[str, Any]:
    """:class:`MeasuredLatency`'s ``backend`` and ``threads`` for a table measured on this
    machine's CPU at FP32: the deployment the table describes, timed here.

    Raises:
        UserError: a GPU, INT8 or analytic table, or one measured on another CPU model
            (feedback would time this machine, not the table's).
    """
    from lut_builder.backends.base import host_fingerprint

    from ..errors import UserError

    fp = getattr(table, "fingerprint", None) or {}
    backend, device = fp.get("backend"), str(fp.get("device", ""))
    where = (
        f"the table {getattr(table, 'path', '')} is {backend} {fp.get('precision', '')} "
        f"on {device or '?'}"
    )
    if backend not in ("onnxruntime", "torch") or not device.startswith("cpu"):
        raise UserError(
            f"latency feedback times plans on this machine's CPU (onnxruntime or torch): {where}"
        )
    if fp.get("precision", "fp32") != "fp32":
        raise UserError(f"latency feedback times FP32 models: {where}")
    here = host_fingerprint()["cpu"]
    if device != f"cpu: {here}":
        raise UserError(f"latency feedback times this machine ({here}), but {where}")
    return {"backend": backend, "threads": int(getattr(table, "threads", None) or 1)}
