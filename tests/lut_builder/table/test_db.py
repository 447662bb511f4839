"""Tests of lut_builder.table.db: read-only opening, self-contained files, damaged values."""

from __future__ import annotations

import os
import shutil
import sqlite3

import pytest

from lut_builder.errors import FingerprintMismatchError, UserError
from lut_builder.signatures import LayerSignature
from lut_builder.table import Grid, LatencyTable
from lut_builder.timing import Timing

from .common import FP, SIG, content, cost, make_table, read_only, snapshot

GRID = Grid([16, 32, 48], [16, 32, 48])


@pytest.mark.parametrize("left", ["finished", "in WAL mode"])
def test_a_table_in_a_read_only_directory_can_be_read(tmp_path, left):
    path = tmp_path / "t.lut"
    make_table(path, GRID).close()
    if left == "in WAL mode":  # by a killed build or an older lut-builder
        con = sqlite3.connect(path)
        assert con.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
        con.close()
    with read_only(tmp_path):
        before = snapshot(tmp_path)
        with LatencyTable.open(path, expect={"backend": "analytic"}) as table:
            assert table.complete and table.lookup(SIG, 32, 48) == pytest.approx(cost(32, 48))
        assert snapshot(tmp_path) == before


def test_readers_do_not_change_the_file_or_leave_files(tmp_path):
    path = tmp_path / "t.lut"
    make_table(path, GRID).close()
    before = snapshot(tmp_path)
    assert list(before) == ["t.lut"]  # a finished table is one file
    with LatencyTable.open(path) as table:
        assert len(table.points(SIG)) == 9
    assert snapshot(tmp_path) == before


def _with_pending_wal(src, dst):
    """A table whose last change is only in its -wal, as a killed writer leaves it:
    copied (with its -wal, without its -shm) while a writer holds it open."""
    make_table(src / "t.lut", GRID).close()
    con = sqlite3.connect(src / "t.lut", isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA wal_autocheckpoint = 0")
    con.execute("INSERT OR REPLACE INTO meta VALUES ('overhead_ms', '0.25')")
    assert (src / "t.lut-wal").stat().st_size > 0
    shutil.copy(src / "t.lut", dst / "t.lut")
    shutil.copy(src / "t.lut-wal", dst / "t.lut-wal")
    con.close()
    return dst / "t.lut"


def test_pending_wal_is_read_or_refused_with_the_reason(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    path = _with_pending_wal(tmp_path / "a", tmp_path / "b")
    # Reading the file alone would silently miss the change: refused, saying why.
    with read_only(tmp_path / "b"), pytest.raises(UserError, match="t.lut-wal beside it holds"):
        LatencyTable.open(path)
    with LatencyTable.open(path) as table:  # where the -shm can be created: all of it
        assert table.overhead_ms == 0.25


def test_a_closing_writer_leaves_a_self_contained_file(tmp_path):
    path = tmp_path / "t.lut"
    make_table(path, GRID).close()
    writer = LatencyTable.open(path, writable=True)
    # Another process reading the table while it is written: SQLite's own checkpoint
    # when the writer closes is skipped while the reader has it open.
    reader = LatencyTable.open(path)
    try:
        writer.set_overhead(0.25)
        writer.close()
        (tmp_path / "copy").mkdir()
        shutil.copy(path, tmp_path / "copy" / "t.lut")  # the file alone, no -wal
        with LatencyTable.open(tmp_path / "copy" / "t.lut") as copy:
            assert copy.overhead_ms == 0.25
        assert reader.overhead_ms == 0.25
    finally:
        reader.close()
    with LatencyTable.open(path, writable=True):  # the last writer to close...
        pass
    assert sorted(os.listdir(tmp_path)) == ["copy", "t.lut"]  # ...leaves one file


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
