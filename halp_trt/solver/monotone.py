"""A latency table seen through its monotone envelope, so the solver cannot buy noise.

A table's points are measurements, each with its own error: on the MobileNetV2 table of
``bench/pareto.py`` (ONNX Runtime, one thread, 16x16) a depthwise layer's p10-p90 spread
is 50-300% of its median, and the 1x1 layers' up to 280%. A knapsack that maximises
importance under the table's latency is drawn to exactly the widths whose measurement
came out low: with Taylor scores its plans kept depthwise widths such as 496 and 544
channels where the table dips below the 480- and 528-channel points. Summed over a
plan, such dips made the table predict 0.299x for a plan measured at 0.345x, while
Torch-Pruning's widths, which pay no attention to the table, were predicted within 4%.

:class:`MonotoneTable` answers every lookup with the largest latency the table gives
at the same or fewer channels (on both sides, on a lattice of widths: multiples of the
grid step up to each signature's widest layer, and the layer's full width): a wider
layer never costs less than a narrower one of the same kind. Only dips are lifted;
where the table rises with the widths it is unchanged, so a staircase (a width that
fills the kernels' tiles costing no more than a narrower one) keeps its step: the step
is seen from below, never as a saving below the narrower width. Recomputed on the same
MobileNetV2 plans, the envelope raises the Taylor plans' predictions by 4.5-5.7% (0.299
-> 0.316, 0.498 -> 0.521-0.525) and leaves Torch-Pruning's at 0.303 -> 0.302.

Dense and depthwise signatures are covered; grouped ones (whole-group widths) and any
lookup outside the lattice pass through unchanged.

The pruner does not use it by default (``Pruner(monotone_table=True)`` turns it on).
Three seeds of ``bench/pareto.py`` on that MobileNetV2 (``halp-taylor-monotone``
against ``halp-taylor``, both with measured-latency feedback) showed the trade: the
mean error of each pruning step's prediction fell from 8-12% to 4-8%, but accuracy fell
1.9 points at 0.5x and at 0.3x and the plans measured no faster. Some dips are real
(kernels that run a width faster than a narrower one); with feedback correcting the
level, pricing them away costs more than the truer prediction gains.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import numpy as np


class MonotoneTable:
    """``table`` with non-decreasing latency in both channel counts, per signature.

    Args:
        table: the latency table (``lookup_grid``, ``alignment`` and the rest; every
            other attribute is the table's own).
        layers: ``(signature, c_in, c_out)`` of the model's layers at full width: each
            signature's lattice reaches its widest layer.
        step: lattice step (default the table's grid ``step``, else its alignment).
    """

    def __init__(self, table: Any, layers: Iterable[tuple[Any, int, int]], step: int | None = None):
        self.table = table
        self.step = int(step or getattr(table, "step", None) or table.alignment)
        widest: dict[Any, tuple[int, int]] = {}
        for sig, c_in, c_out in layers:
            a, b = widest.get(sig, (0, 0))
            widest[sig] = (max(a, int(c_in)), max(b, int(c_out)))
        self._widest = widest
        self._env: dict[Any, tuple[np.ndarray, np.ndarray, np.ndarray] | None] = {}

    def __getattr__(self, name: str) -> Any:
        if name == "table":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.table, name)

    def _lattice(self, full: int) -> np.ndarray:
        return np.unique(np.append(np.arange(self.step, full + 1, self.step), full))

    def _values(self, sig: Any, c_in: np.ndarray, c_out: np.ndarray) -> np.ndarray:
        """Table latencies on a lattice; -inf where the table cannot answer (a width
        below its measured range, say)."""
        from lut_builder.errors import UserError

        ci, co = np.broadcast_arrays(c_in, c_out)
        try:
            return np.asarray(self.table.lookup_grid(sig, ci, co), dtype=float)
        except (UserError, ValueError):
            out = np.full(ci.shape, -np.inf)
            for k in np.ndindex(ci.shape):
                with contextlib.suppress(UserError, ValueError):
                    out[k] = float(self.table.lookup_grid(sig, int(ci[k]), int(co[k])))
            return out

    def _envelope(self, sig: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        if sig in self._env:
            return self._env[sig]
        env = None
        mode = getattr(sig, "group_mode", "dense")
        if sig in self._widest and mode in ("dense", "depthwise"):
            c_in, c_out = self._widest[sig]
            if mode == "depthwise":
                cs = self._lattice(c_in)
                line = np.maximum.accumulate(self._values(sig, cs, cs))
                idx = np.arange(cs.size)
                env = (cs, cs, line[np.minimum.outer(idx, idx)])  # c_in == c_out: diagonal
            else:
                ins, outs = self._lattice(c_in), self._lattice(c_out)
                grid = self._values(sig, ins[:, None], outs[None, :])
                grid = np.maximum.accumulate(np.maximum.accumulate(grid, axis=0), axis=1)
                env = (ins, outs, grid)
        self._env[sig] = env
        return env

    def lookup_grid(self, sig: Any, c_in: Any, c_out: Any) -> np.ndarray:
        """The envelope's latency; ``c_in`` and ``c_out`` broadcast against each other."""
        raw = np.asarray(self.table.lookup_grid(sig, c_in, c_out), dtype=float)
        env = self._envelope(sig)
        if env is None:
            return raw
        ins, outs, grid = env
        ci, co = np.broadcast_arrays(np.asarray(c_in, dtype=np.int64), np.asarray(c_out))
        i = np.searchsorted(ins, ci, side="right") - 1  # the lattice point at or below
        j = np.searchsorted(outs, co, side="right") - 1
        inside = (i >= 0) & (j >= 0)
        floor = np.where(inside, grid[np.clip(i, 0, None), np.clip(j, 0, None)], -np.inf)
        return np.maximum(raw, floor.reshape(raw.shape))

    def lookup(self, sig: Any, c_in: int, c_out: int) -> float:
        return float(self.lookup_grid(sig, c_in, c_out))
