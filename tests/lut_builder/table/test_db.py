"""Tests of lut_builder.table.db: damaged values, joining a table without changing it."""

from __future__ import annotations

import sqlite3

import pytest

from lut_builder.errors import FingerprintMismatchError, UserError
from lut_builder.signatures import LayerSignature
from lut_builder.table import Grid, LatencyTable
from lut_builder.timing import Timing

from .common import FP, SIG, content, make_table, snapshot

GRID = Grid([16, 32, 48], [16, 32, 48])


def test_a_directory_is_not_a_missing_table(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        LatencyTable.open(tmp_path)


AT = "WHERE c_in = 32 AND c_out = 16"
WHERE = "signature conv3x3 8x8 b1 point (32, 16) has"


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (f"UPDATE points SET median_ms = 'abc' {AT}", f"{WHERE} latency 'abc', not a positive"),
        (f"UPDATE points SET median_ms = 'NaN' {AT}", f"{WHERE} latency 'NaN', not a positive"),
        (f"UPDATE points SET median_ms = 9e999 {AT}", f"{WHERE} latency inf, not a positive"),
        (f"UPDATE points SET median_ms = 0, p10_ms = 0 {AT}", f"{WHERE} latency 0.0, not a"),
        (
            f"UPDATE points SET median_ms = -1, p10_ms = -2 {AT}",
            f"{WHERE} latency -1.0, not a positive",
        ),
        (f"UPDATE points SET p90_ms = 0.001 {AT}", f"{WHERE} p10 "),
        (f"UPDATE points SET n = 0 {AT}", f"{WHERE} run count 0"),
        ("DELETE FROM meta WHERE key = 'fingerprint'", "its meta has no 'fingerprint'"),
        (
            "UPDATE meta SET value = '{\"backend\": \"analytic\",' WHERE key = 'fingerprint'",
            "meta 'fingerprint' is '{\"backend\": \"analytic\",', not JSON",
        ),
        (
            "UPDATE meta SET value = '[1, 2]' WHERE key = 'fingerprint'",
            "meta 'fingerprint' is [1, 2], not an object naming its backend",
        ),
        ("UPDATE meta SET value = '\"16\"' WHERE key = 'alignment'", "'alignment' is '16', not"),
        ("INSERT OR REPLACE INTO meta VALUES ('scale', '-0.5')", "'scale' is -0.5, not a positive"),
        ("UPDATE signatures SET grid = '{\"c_in\": []}'", "conv3x3 8x8 b1' has a malformed grid"),
    ],
)
def test_damaged_values_are_refused_naming_the_table_and_the_value(tmp_path, damage, fragment):
    path = tmp_path / "t.lut"
    make_table(path, GRID).close()
    con = sqlite3.connect(path)
    con.execute(damage)
    con.commit()
    con.close()
    before = snapshot(tmp_path)
    # Opened to prune (with the target's fingerprint), to show, or joined by a build:
    # each says what is damaged in which table, before using any of it.
    for open_it in (
        lambda: LatencyTable.open(path, expect={"backend": "tensorrt"}),
        lambda: LatencyTable.open(path, force=True),
        lambda: LatencyTable.create(path, FP, 16, plan={SIG: GRID}),
    ):
        with pytest.raises(UserError) as info:
            open_it()
        assert not isinstance(info.value, FingerprintMismatchError)
        assert f"latency table {path} is damaged: " in str(info.value)
        assert fragment in str(info.value), str(info.value)
        assert "\n" not in str(info.value)
    assert snapshot(tmp_path) == before


def test_a_timing_a_reader_would_refuse_is_not_stored(tmp_path):
    with make_table(tmp_path / "t.lut", GRID, fill=False) as table:
        with pytest.raises(UserError, match=r"point \(16, 16\).*latency 0.0, not a positive"):
            table.add_point(SIG, 16, 16, Timing(0.0, 0.0, 0.0, 0.0, 0.0, 5))
        assert table.count_points() == 0
        assert table.add_point(SIG, 16, 16, Timing(0.2, 0.0, 0.3, 0.2, 0.1, 5))  # p10 0: fine


def test_a_refused_join_leaves_the_file_byte_identical(tmp_path):
    path = tmp_path / "t.lut"
    make_table(path, GRID).close()
    before, dump = snapshot(tmp_path), content(path)
    other = Grid([16, 32], [16, 32])
    with pytest.raises(UserError, match="another grid"):
        LatencyTable.create(path, FP, 16, plan={SIG: other})
    with pytest.raises(UserError, match="1 of its 1 signatures not in this build"):
        LatencyTable.create(path, FP, 16, plan={LayerSignature("linear"): other})
    assert snapshot(tmp_path) == before
    assert content(path) == dump
    LatencyTable.create(path, FP, 16, plan={SIG: GRID}).close()  # the same plan joins
