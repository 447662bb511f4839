"""A signature's grid of channel counts, and the latency surface on it.

:class:`Grid` is what a build plans to measure for one signature. :func:`fill_surface`
completes the measured points of a sparse grid into a surface on the whole fine grid;
:func:`interpolate` answers lookups on it.

Lookups are exact on measured points. Between them, each channel count is first rounded
up to the target's alignment (a kernel processes whole channel tiles, so a width costs
what the next aligned width costs), then interpolated bilinearly between the nearest
grid values. A lookup outside the measured range is an error, never an extrapolation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..signatures import LayerSignature


@dataclass(frozen=True)
class Grid:
    """The planned axes of one signature's measurements.

    Attributes:
        c_in, c_out: the fine axes: every channel count a pruned model can reach at the
            grid step (and the layers' full widths), ascending.
        coarse_in, coarse_out: subsets of the fine axes on which the full 2-D product is
            measured; equal to the fine axes for a full grid.
        lines_in: c_in values at which every c_out of the fine axis is measured.
        lines_out: c_out values at which every c_in of the fine axis is measured.
        probes: points off the coarse grid and the lines, measured to choose how the
            rest is filled (:func:`fill`); empty in tables built before they existed.
        diagonal: depthwise layers: only points with ``c_in == c_out`` exist.
    """

    c_in: tuple[int, ...]
    c_out: tuple[int, ...]
    coarse_in: tuple[int, ...] = ()
    coarse_out: tuple[int, ...] = ()
    lines_in: tuple[int, ...] = ()
    lines_out: tuple[int, ...] = ()
    probes: tuple[tuple[int, int], ...] = ()
    diagonal: bool = False

    def __post_init__(self) -> None:
        for name in ("c_in", "c_out", "coarse_in", "coarse_out", "lines_in", "lines_out"):
            v = tuple(sorted({int(x) for x in getattr(self, name)}))
            object.__setattr__(self, name, v)
        if not self.c_in or not self.c_out or min(self.c_in + self.c_out) < 1:
            raise ValueError("grid axes must be non-empty positive channel counts")
        if not self.coarse_in:
            object.__setattr__(self, "coarse_in", self.c_in)
        if not self.coarse_out:
            object.__setattr__(self, "coarse_out", self.c_out)
        for sub, full in (
            (self.coarse_in, self.c_in),
            (self.coarse_out, self.c_out),
            (self.lines_in, self.c_in),
            (self.lines_out, self.c_out),
        ):
            if not set(sub) <= set(full):
                raise ValueError("coarse axes and lines must lie on the fine axes")
        if self.diagonal and self.c_in != self.c_out:
            raise ValueError("a diagonal (depthwise) grid has equal axes")
        probes = tuple(sorted({(int(a), int(b)) for a, b in self.probes}))
        object.__setattr__(self, "probes", probes)
        if any(a not in self.c_in or b not in self.c_out for a, b in probes):
            raise ValueError("probes must lie on the fine axes")

    @property
    def is_full(self) -> bool:
        """True when the whole product of the fine axes is measured."""
        return self.diagonal or (self.coarse_in == self.c_in and self.coarse_out == self.c_out)

    def points(self) -> list[tuple[int, int]]:
        """Every planned (c_in, c_out) point, sorted."""
        if self.diagonal:
            return [(c, c) for c in self.c_in]
        pts = {(a, b) for a in self.coarse_in for b in self.coarse_out}
        pts |= {(a, b) for a in self.lines_in for b in self.c_out}
        pts |= {(a, b) for a in self.c_in for b in self.lines_out}
        pts |= set(self.probes)
        return sorted(pts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "c_in": list(self.c_in),
            "c_out": list(self.c_out),
            "coarse_in": list(self.coarse_in),
            "coarse_out": list(self.coarse_out),
            "lines_in": list(self.lines_in),
            "lines_out": list(self.lines_out),
            "probes": [list(p) for p in self.probes],
            "diagonal": self.diagonal,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Grid:
        return cls(
            **{k: tuple(d[k]) for k in ("c_in", "c_out", "coarse_in", "coarse_out")},
            lines_in=tuple(d.get("lines_in", ())),
            lines_out=tuple(d.get("lines_out", ())),
            probes=tuple(tuple(p) for p in d.get("probes", ())),
            diagonal=bool(d.get("diagonal", False)),
        )


@dataclass
class Surface:
    """A signature's latencies on its fine grid (measured or filled), for lookups."""

    grid: Grid
    c_in: Any  # np.ndarray of the fine c_in axis
    c_out: Any
    values: Any  # 2-D array [len(c_in), len(c_out)]; NaN where nothing is known
    measured: Any = field(default=None)  # bool array: True where measured
    model: str = "measured"  # how the rest was filled: see :class:`Fill`
    probe_error: dict[str, float] | None = None  # each fill's error on the probes (ms)


#: How much better (a fraction of the probes' summed latency) the plain bilinear fill
#: must predict a grid's probes than the line-corrected one to replace it: where the two
#: agree the lines stay, as in tables filled before probes existed.
FILL_MARGIN = 0.01


@dataclass(frozen=True)
class Fill:
    """A sparse grid's surface, filled (:func:`fill`).

    Attributes:
        values, measured: as :func:`fill_surface` returns them.
        model: ``"measured"`` (nothing to fill: a full or depthwise grid),
            ``"bilinear"`` (the coarse grid alone) or ``"lines"`` (corrected by the lines).
        probe_error: each fill's summed absolute error (ms) on the probes; None
            where there was no choice: a grid without lines, or one whose probes are not
            all measured (then ``"lines"``, as tables filled before probes existed).
    """

    values: Any
    measured: Any
    model: str
    probe_error: dict[str, float] | None = None


def fill_surface(grid: Grid, measured: Mapping[tuple[int, int], float]) -> tuple[Any, Any]:
    """Latency on every point of the fine grid from the points that were measured:
    ``(values, is_measured)`` of :func:`fill`."""
    f = fill(grid, measured)
    return f.values, f.measured


def fill(grid: Grid, measured: Mapping[tuple[int, int], float]) -> Fill:
    """Latency on every point of the fine grid from the points that were measured.

    Measured points are kept as they are. The others take one of two models:

    - ``bilinear``: a bilinear interpolation ``B`` over the coarse 2-D grid;
    - ``lines``: ``B`` corrected by the fine lines through the full widths,
      ``T(ci, co) = B(ci, co) * r_in(ci) * r_out(co)`` with ``r_in(ci) = T(ci, L_out) /
      B(ci, L_out)`` on the measured line ``c_out = L_out`` (likewise ``r_out``). The
      correction carries the steps that a coarse grid skips (tile and cache boundaries
      along one axis) to the whole surface; on the lines it is exact by construction.

    The lines carry whatever their points measured to every row and column they cross,
    and the two corrections multiply: on a shared 2-core CPU, where the wide layers'
    points drift by 10-20% within a build, a ResNet-18's widest 3x3 layer was filled
    at 0.49 of its full width's latency for 480 -> 432 channels, measured at 0.77
    (its MACs: 0.79). Which model holds for a signature is measured, not assumed: the
    build measures a few probes (:attr:`Grid.probes`, off the coarse grid and the
    lines), and the rest is filled with the lines unless plain bilinear misses the
    probes by less, summed, by more than :data:`FILL_MARGIN` of their latency. A grid
    whose probes are not measured (a table built before probes existed, or one still
    being built) is filled with the lines.

    Args:
        grid: the planned axes.
        measured: ``{(c_in, c_out): median_ms}``.

    Returns:
        The :class:`Fill`; its values are NaN where neither measured nor fillable (a
        plan still missing points).
    """
    import numpy as np

    ci, co = np.array(grid.c_in), np.array(grid.c_out)
    values = np.full((len(ci), len(co)), np.nan)
    is_meas = np.zeros_like(values, dtype=bool)
    idx_in = {c: i for i, c in enumerate(grid.c_in)}
    idx_out = {c: j for j, c in enumerate(grid.c_out)}
    for (a, b), v in measured.items():
        if a in idx_in and b in idx_out:
            values[idx_in[a], idx_out[b]] = v
            is_meas[idx_in[a], idx_out[b]] = True
    if grid.diagonal or is_meas.all():
        return Fill(values, is_meas, "measured")
    # Bilinear over the coarse grid (only where its four corners are measured).
    kin, kout = np.array(grid.coarse_in), np.array(grid.coarse_out)
    coarse = np.array(
        [[measured.get((a, b), np.nan) for b in grid.coarse_out] for a in grid.coarse_in]
    )
    bil = _bilinear(kin, kout, coarse, ci, co)
    if not (grid.lines_in or grid.lines_out):
        return Fill(np.where(is_meas, values, bil), is_meas, "bilinear")
    lines = bil.copy()
    if grid.lines_out:
        j = idx_out[grid.lines_out[-1]]
        ratio = values[:, j] / bil[:, j]
        lines = lines * np.where(np.isfinite(ratio), ratio, np.nan)[:, None]
    if grid.lines_in:
        i = idx_in[grid.lines_in[-1]]
        ratio = values[i, :] / bil[i, :]
        lines = lines * np.where(np.isfinite(ratio), ratio, np.nan)[None, :]
    probes = [(idx_in[a], idx_out[b]) for a, b in grid.probes if (a, b) in measured]
    errors = None
    model, chosen = "lines", lines
    if probes and len(probes) == len(grid.probes):
        rows, cols = (np.array(x) for x in zip(*probes))
        errors = {
            name: float(np.abs(surface[rows, cols] - values[rows, cols]).sum())
            for name, surface in (("lines", lines), ("bilinear", bil))
        }
        margin = FILL_MARGIN * float(values[rows, cols].sum())
        if errors["bilinear"] < errors["lines"] - margin:  # NaN (a corner missing): lines
            model, chosen = "bilinear", bil
    return Fill(np.where(is_meas, values, chosen), is_meas, model, errors)


def _bilinear(kx: Any, ky: Any, vals: Any, x: Any, y: Any) -> Any:
    """Bilinear interpolation of ``vals`` on the rectilinear grid ``kx`` x ``ky`` at all
    points of ``x`` x ``y`` (inside the grid's range); axes of length 1 are constant."""
    import numpy as np

    def axis(k: Any, q: Any) -> tuple[Any, Any, Any]:
        if len(k) == 1:
            z = np.zeros(len(q), dtype=int)
            return z, z, np.zeros(len(q))
        hi = np.clip(np.searchsorted(k, q, side="left"), 1, len(k) - 1)
        lo = hi - 1
        w = (q - k[lo]) / (k[hi] - k[lo])
        return lo, hi, np.clip(w, 0.0, 1.0)

    xl, xh, wx = axis(kx, x)
    yl, yh, wy = axis(ky, y)
    wx, wy = wx[:, None], wy[None, :]
    return (
        vals[xl][:, yl] * (1 - wx) * (1 - wy)
        + vals[xh][:, yl] * wx * (1 - wy)
        + vals[xl][:, yh] * (1 - wx) * wy
        + vals[xh][:, yh] * wx * wy
    )


def axis_positions(axis: Any, alignment: int, q: Any, what: str, sig: LayerSignature) -> tuple:
    """Map channel counts to (lo index, hi index, weight) on a fine axis.

    A count on the axis maps to itself. Otherwise it is rounded up to the alignment;
    past the largest grid value (a full width that is not a multiple of the alignment)
    it takes the smallest grid value at or above it. Between grid values it is
    interpolated linearly.

    Raises:
        UserError: a count outside the measured range.
    """
    import numpy as np

    q = np.asarray(q, dtype=np.int64)
    if q.size and (q.min() < 1 or q.max() > axis[-1]):
        bad = int(q.min()) if q.min() < 1 else int(q.max())
        raise UserError(
            f"{what}={bad} is outside the measured range {int(axis[0])}..{int(axis[-1])} "
            f"of signature {sig.short()}"
        )
    on_axis = np.isin(q, axis)
    r = np.where(on_axis, q, -(-q // alignment) * alignment)
    beyond = r > axis[-1]
    r = np.where(beyond, axis[np.searchsorted(axis, q, side="left").clip(0, len(axis) - 1)], r)
    if q.size and r.min() < axis[0]:
        bad = int(q.flat[np.argmin(r)])
        raise UserError(
            f"{what}={bad} (rounded up to the alignment {alignment}: {int(r.min())}) is below "
            f"the measured range {int(axis[0])}..{int(axis[-1])} of signature {sig.short()}"
        )
    hi = np.searchsorted(axis, r, side="left").clip(0, len(axis) - 1)
    exact = axis[hi] == r
    lo = np.where(exact, hi, hi - 1)
    span = np.where(exact, 1, axis[hi] - axis[lo])
    w = np.where(exact, 1.0, (r - axis[lo]) / span)
    return lo, hi, w


def interpolate(
    surface: Surface, alignment: int, c_in: Any, c_out: Any, sig: LayerSignature
) -> Any:
    """Latencies at channel counts ``c_in`` x ``c_out`` (arrays of one shape) on a surface.

    Each count is placed on its axis by :func:`axis_positions`, then interpolated
    bilinearly (linearly along the diagonal of a depthwise grid).

    Returns:
        A float array of the counts' shape, flattened; NaN where the surface does not
        know a corner yet (an incomplete table).

    Raises:
        UserError: a count outside the measured range.
        ValueError: ``c_in != c_out`` on a depthwise (diagonal) surface.
    """
    import numpy as np

    if surface.grid.diagonal:
        if np.any(c_in != c_out):
            raise ValueError(f"a depthwise layer ({sig.short()}) has c_in == c_out")
        lo, hi, w = axis_positions(surface.c_in, alignment, c_in.ravel(), "channels", sig)
        diag = np.diagonal(surface.values)
        return diag[lo] * (1 - w) + diag[hi] * w
    il, ih, wi = axis_positions(surface.c_in, alignment, c_in.ravel(), "c_in", sig)
    jl, jh, wj = axis_positions(surface.c_out, alignment, c_out.ravel(), "c_out", sig)
    v = surface.values
    return (
        v[il, jl] * (1 - wi) * (1 - wj)
        + v[ih, jl] * wi * (1 - wj)
        + v[il, jh] * (1 - wi) * wj
        + v[ih, jh] * wi * wj
    )
