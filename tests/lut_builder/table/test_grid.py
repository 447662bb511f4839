"""Tests of lut_builder.table.grid: filling a sparse grid's surface."""

from __future__ import annotations

import numpy as np

from lut_builder.table import Grid, fill_surface

from .common import cost


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
