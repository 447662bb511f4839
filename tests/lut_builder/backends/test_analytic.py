"""Tests of lut_builder.backends.analytic: the roofline model."""

from __future__ import annotations

from lut_builder.backends import get_backend

from .common import CONV


def test_analytic_is_deterministic_staircase_and_not_a_measurement():
    b = get_backend("analytic", alignment=8)
    assert b.is_measurement is False and b.fingerprint()["is_measurement"] is False
    t = b.measure(CONV, 16, 16)
    assert t == b.measure(CONV, 16, 16) and t.n == 1
    # Inside one tile the cost is flat; the next tile costs more.
    assert b.measure(CONV, 16, 9).median_ms == b.measure(CONV, 16, 16).median_ms
    assert b.measure(CONV, 16, 17).median_ms > b.measure(CONV, 16, 16).median_ms
    assert b.measure(CONV, 64, 64).median_ms > b.measure(CONV, 16, 16).median_ms
