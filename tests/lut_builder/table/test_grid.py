"""Tests of lut_builder.table.grid: filling a sparse grid's surface."""

from __future__ import annotations

import numpy as np

from lut_builder.table import Grid, fill_surface
from lut_builder.table.grid import fill

from .common import PROBED, cost


def test_fill_surface_keeps_measured_and_fits_bilinear():
    vals = [16, 32, 48, 64, 80, 96, 112, 128]
    grid = Grid(vals, vals, coarse_in=[16, 64, 128], coarse_out=[16, 64, 128],
                lines_in=[128], lines_out=[128])  # fmt: skip
    truth = {(a, b): cost(a, b) for a in vals for b in vals}
    measured = {p: truth[p] for p in grid.points()}
    values, is_meas = fill_surface(grid, measured)
    assert is_meas.sum() == len(grid.points()) < len(truth)
    want = np.array([[truth[a, b] for b in vals] for a in vals])
    np.testing.assert_allclose(values, want, rtol=1e-12)


def test_fill_surface_carries_a_step_along_the_lines():
    vals = [16, 32, 48, 64, 80, 96]
    grid = Grid(vals, vals, coarse_in=[16, 96], coarse_out=[16, 96],
                lines_in=[96], lines_out=[96])  # fmt: skip

    def stair(a: int, b: int) -> float:  # a jump at c_out > 64, separable
        return cost(a, b) * (1.3 if b > 64 else 1.0)

    measured = {p: stair(*p) for p in grid.points()}
    values, _ = fill_surface(grid, measured)
    j80, j64 = vals.index(80), vals.index(64)
    # The jump measured on the line c_in = 96 shows on every other c_in row.
    ratio = values[:, j80] / values[:, j64]
    assert np.all(ratio > 1.2)


def test_fill_takes_the_lines_where_the_probes_show_their_step():
    grid = PROBED
    vals = list(grid.c_in)

    def stair(a: int, b: int) -> float:  # a jump past 64 channels on both axes
        return cost(a, b) * (1.3 if a > 64 else 1.0) * (1.3 if b > 64 else 1.0)

    f = fill(grid, {p: stair(*p) for p in grid.points()})
    assert f.model == "lines" and f.probe_error["lines"] < f.probe_error["bilinear"]
    i, j = vals.index(80), vals.index(96)  # neither measured nor a probe
    assert not f.measured[i, j]
    np.testing.assert_allclose(f.values[i, j], stair(80, 96), rtol=1e-3)


def test_fill_drops_lines_whose_points_drifted():
    grid = PROBED
    vals = list(grid.c_in)
    # The truth is smooth, but the line points at 96 and 112 channels were measured 25%
    # low (the machine sped up for a while): carried by the lines, the low points would
    # price every layer at 96-112 channels low, twice over where both axes cross them.
    measured = {p: cost(*p) for p in grid.points()}
    for c in (96, 112):
        measured[128, c] *= 0.75
        measured[c, 128] *= 0.75
    f = fill(grid, measured)
    assert f.model == "bilinear" and f.probe_error["bilinear"] < f.probe_error["lines"]
    i = vals.index(96)
    np.testing.assert_allclose(f.values[i, i], cost(96, 96), rtol=0.02)
    assert fill_surface(grid, measured)[0][i, i] == f.values[i, i]
    # Without its probes (a table built before them, or still being built): the lines.
    old = fill(grid, {p: v for p, v in measured.items() if p not in grid.probes})
    assert old.model == "lines" and old.probe_error is None
    assert old.values[i, i] < 0.6 * cost(96, 96)
