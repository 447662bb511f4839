"""Tests of lut_builder.latency_model: the network latency model and its fit."""

from __future__ import annotations

import pytest

from lut_builder.latency_model import fit_calibration, predict_latency
from lut_builder.table import Grid

from .table.common import SIG, cost, make_table


def test_predict_latency_sums_lookups_and_overhead(tmp_path):
    with make_table(tmp_path / "t.lut", Grid([16, 32], [16, 32])) as table:
        layers = [(SIG, 16, 16), (SIG, 32, 16), (SIG, 30, 30)]
        want = cost(16, 16) + cost(32, 16) + cost(32, 32)
        assert predict_latency(table, layers) == pytest.approx(want)
        table.set_overhead(-0.25)
        assert predict_latency(table, layers) == pytest.approx(want - 0.25)
        assert predict_latency(table, layers, overhead=False) == pytest.approx(want)
        table.set_overhead(-0.25, scale=1.5)
        assert table.scale == 1.5 and table.summary()["scale"] == 1.5
        assert predict_latency(table, layers) == pytest.approx(1.5 * want - 0.25)
        assert predict_latency(table, layers, overhead=False) == pytest.approx(want)
        for bad in ({"scale": 0.0}, {"scale": float("nan")}):
            with pytest.raises(ValueError, match="bad calibration"):
                table.set_overhead(0.1, **bad)
        assert table.scale == 1.5  # a rejected calibration leaves the stored one


def test_fit_calibration_additive_affine_and_implausible():
    one = fit_calibration([(2.0, 2.5)])
    assert (one.kind, one.scale, one.overhead_ms) == ("additive", 1.0, 0.5)
    # Points on an exact line: the line is recovered.
    line = fit_calibration([(s, 1.2 * s - 0.3) for s in (4.0, 3.0, 2.0)])
    assert line.kind == "affine"
    assert line.scale == pytest.approx(1.2) and line.overhead_ms == pytest.approx(-0.3)
    assert line.predict(2.5) == pytest.approx(2.7)
    # Layer sums too close together: no slope is fitted.
    close = fit_calibration([(4.0, 4.4), (3.9, 4.1)])
    assert close.kind == "additive" and close.overhead_ms == pytest.approx(0.4)
    assert "too close" in close.note
    # A slope outside [0.5, 2] is noise, not a latency model.
    wild = fit_calibration([(4.0, 10.0), (2.0, 1.0)])
    assert wild.kind == "additive" and wild.overhead_ms == pytest.approx(6.0)
    assert "implausible" in wild.note
    for bad in ([], [(0.0, 1.0)], [(1.0, float("inf"))]):
        with pytest.raises(ValueError):
            fit_calibration(bad)
