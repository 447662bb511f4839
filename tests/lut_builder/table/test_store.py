"""Tests of lut_builder.table.store: the SQLite store, its checks, lookups and units."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from lut_builder.errors import UserError
from lut_builder.signatures import LayerSignature
from lut_builder.table import (
    FORMAT_VERSION,
    FingerprintMismatchError,
    Grid,
    IncompleteTableError,
    LatencyTable,
)

from .common import DW, FP, SIG, cost, drifted_table, make_table, t


def test_create_open_roundtrip(tmp_path):
    path = tmp_path / "t.lut"
    grid = Grid([16, 32, 48, 64], [16, 32, 48, 64])
    with make_table(path, grid) as table:
        table.set_overhead(0.5, {"measured_ms": 3.0})
    with LatencyTable.open(path, expect={"backend": "analytic", "versions": {"x": "1"}}) as table:
        assert table.format_version == FORMAT_VERSION
        assert table.fingerprint == FP and table.alignment == 16 and table.complete
        assert table.signatures() == [SIG] and table.grid(SIG) == grid
        assert table.overhead_ms == 0.5 and table.overhead["measured_ms"] == 3.0
        pts = table.points(SIG)
        assert len(pts) == 16 and pts[0].timing == t(cost(16, 16)) and pts[0].worker is None
    # A finished table is one self-contained file (see lut_builder.table.db.close_writer).
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_lookup_exact_step_aware_and_interpolated(tmp_path):
    grid = Grid([16, 32, 64], [16, 32, 60])  # 48 not measured on c_in; 60 a full width
    with make_table(tmp_path / "t.lut", grid) as table:
        assert table.lookup(SIG, 32, 16) == pytest.approx(cost(32, 16))  # exact
        # Round up to the alignment (16): 20 -> 32, 17 -> 32.
        assert table.lookup(SIG, 20, 17) == pytest.approx(cost(32, 32))
        # 40 -> 48, halfway between measured 32 and 64 on c_in: linear between them.
        mid = (cost(32, 16) + cost(64, 16)) / 2
        assert table.lookup(SIG, 40, 16) == pytest.approx(mid)
        # A full width off the alignment: 50 rounds to 64 past it, so 60 is used.
        assert table.lookup(SIG, 16, 50) == pytest.approx(cost(16, 60))
        assert table.lookup(SIG, 16, 60) == pytest.approx(cost(16, 60))
        for bad in [(65, 16), (16, 61), (0, 16)]:
            with pytest.raises(UserError, match="outside the measured range"):
                table.lookup(SIG, *bad)


def test_lookup_below_range_is_an_error(tmp_path):
    grid = Grid([32, 64], [32, 64])
    with make_table(tmp_path / "t.lut", grid, alignment=8) as table:
        assert table.lookup(SIG, 25, 32) == pytest.approx(cost(32, 32))
        with pytest.raises(UserError, match="below the measured range"):
            table.lookup(SIG, 16, 32)


def test_lookup_grid_broadcasts_like_lookup(tmp_path):
    grid = Grid([16, 32, 48, 64], [16, 32, 48, 64])
    with make_table(tmp_path / "t.lut", grid) as table:
        ci = np.array([16, 20, 40, 64])[:, None]
        co = np.array([16, 33, 64])[None, :]
        got = table.lookup_grid(SIG, ci, co)
        assert got.shape == (4, 3)
        want = [[table.lookup(SIG, a, b) for b in co.ravel()] for a in ci.ravel()]
        np.testing.assert_allclose(got, want)


def test_depthwise_diagonal(tmp_path):
    grid = Grid([16, 32, 48], [16, 32, 48], diagonal=True)
    with make_table(tmp_path / "t.lut", grid, sig=DW) as table:
        assert table.lookup(DW, 30, 30) == pytest.approx(cost(32, 32))
        with pytest.raises(ValueError):
            table.lookup(DW, 16, 32)


def test_unknown_signature(tmp_path):
    table = make_table(tmp_path / "t.lut", Grid([16], [16]))
    with pytest.raises(UserError, match="not in latency table"):
        table.lookup(LayerSignature("linear"), 16, 16)
    table.close()


def test_fingerprint_mismatch_unless_forced(tmp_path):
    path = tmp_path / "t.lut"
    make_table(path, Grid([16], [16])).close()
    with pytest.raises(FingerprintMismatchError, match="backend: table has 'analytic'"):
        LatencyTable.open(path, expect={"backend": "tensorrt"})
    with pytest.raises(FingerprintMismatchError, match="versions.x"):
        LatencyTable.open(path, expect={"versions": {"x": "2"}})
    LatencyTable.open(path, expect={"backend": "tensorrt"}, force=True).close()
    # Joining the file from a build for another target is refused too.
    with pytest.raises(FingerprintMismatchError, match="another target"):
        LatencyTable.create(path, {**FP, "precision": "fp16"}, 16)


def test_incomplete_table_unless_forced(tmp_path):
    path = tmp_path / "t.lut"
    grid = Grid([16, 32], [16, 32])
    table = make_table(path, grid, fill=False)
    table.add_point(SIG, 16, 16, t(1.0))
    assert not table.mark_complete() and table.count_missing() == 3
    table.close()
    with pytest.raises(IncompleteTableError, match="3 planned points"):
        LatencyTable.open(path)
    with LatencyTable.open(path, force=True) as forced:
        assert forced.lookup(SIG, 16, 16) == 1.0
        with pytest.raises(IncompleteTableError, match="incomplete"):
            forced.lookup(SIG, 32, 32)


def test_first_writer_wins_and_mark_complete_once(tmp_path):
    path = tmp_path / "t.lut"
    a = make_table(path, Grid([16], [16, 32]), fill=False)
    b = LatencyTable.create(path, FP, 16)  # a second process joining the same table
    b.add_signature(SIG, Grid([16], [16, 32]))  # same plan: accepted
    assert a.add_point(SIG, 16, 16, t(1.0), worker="a")
    assert not b.add_point(SIG, 16, 16, t(2.0), worker="b")
    assert b.add_point(SIG, 16, 32, t(3.0), worker="b")
    assert [p.worker for p in a.points(SIG)] == ["a", "b"]
    assert a.mark_complete() and not b.mark_complete()
    with pytest.raises(UserError, match="another grid"):
        b.add_signature(SIG, Grid([16], [16]))
    a.close()
    b.close()


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"garbage, not a database" * 10, "not an SQLite database"),
        (b"", "not an SQLite database"),
    ],
)
def test_corrupt_file_is_user_error(tmp_path, content, fragment):
    path = tmp_path / "bad.lut"
    path.write_bytes(content)
    with pytest.raises(UserError, match=fragment):
        LatencyTable.open(path)


def test_foreign_sqlite_and_wrong_version(tmp_path):
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE people (name TEXT)")
    con.commit()
    con.close()
    before = foreign.read_bytes()
    with pytest.raises(UserError, match="without lut-builder's schema"):
        LatencyTable.open(foreign)
    with pytest.raises(UserError, match="without lut-builder's schema"):
        LatencyTable.create(foreign, FP, 16)
    assert foreign.read_bytes() == before  # a foreign file is never modified
    path = tmp_path / "t.lut"
    make_table(path, Grid([16], [16])).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'format_version'")
    con.commit()
    con.close()
    with pytest.raises(UserError, match="format version 99"):
        LatencyTable.open(path)
    with pytest.raises(UserError, match="does not exist"):
        LatencyTable.open(tmp_path / "missing.lut")


def test_reference_unit_stores_ratios_and_only_lowers_until_complete(tmp_path):
    table = LatencyTable.create(tmp_path / "t.lut", FP, 16)
    table.add_signature(SIG, Grid([16], [16, 32]))
    assert table.adopt_reference("onnxruntime/ref", 0.2, gate=1.2) == 0.2
    with pytest.raises(ValueError, match="unit_ms"):
        table.add_point(SIG, 16, 16, t(1.0))
    table.add_point(SIG, 16, 16, t(1.0), unit_ms=0.2)  # stored as 5 reference units
    assert table.lookup(SIG, 16, 16) == pytest.approx(1.0)
    # A faster reference run seen later lowers the unit: every stored ratio follows.
    assert table.adopt_reference("onnxruntime/ref", 0.1) == 0.1
    assert table.adopt_reference("onnxruntime/ref", 0.3) == 0.1  # never raised
    assert table.lookup(SIG, 16, 16) == pytest.approx(0.5)
    assert table.points(SIG)[0].timing.p90_ms == pytest.approx(0.55)
    with pytest.raises(UserError, match="measured against reference"):
        table.adopt_reference("onnxruntime/other", 0.1)
    table.add_point(SIG, 16, 32, t(0.4), unit_ms=0.1)
    assert table.mark_complete()
    assert table.adopt_reference("onnxruntime/ref", 0.05) == 0.1  # frozen once complete
    assert table.reference == {"kind": "onnxruntime/ref", "gate": 1.2, "unit_ms": 0.1}
    table.close()


def test_copy_includes_what_only_the_wal_holds(tmp_path):
    """A copy of a table whose writer is still open (its last points only in the -wal
    file, where a file copy would miss them) holds every point, as one file."""
    path = tmp_path / "t.lut"
    grid = Grid([16, 32], [16, 32])
    writer = make_table(path, grid, fill=False)
    try:
        for a, b in grid.points():
            writer.add_point(SIG, a, b, t(cost(a, b)))
        assert writer.mark_complete()
        assert (tmp_path / "t.lut-wal").stat().st_size > 0
        with LatencyTable.open(path) as reader:
            reader.copy_to(tmp_path / "copy.lut")
    finally:
        writer.close()
    assert not (tmp_path / "copy.lut-wal").exists()
    with LatencyTable.open(tmp_path / "copy.lut") as copy:
        assert copy.complete and len(copy.points(SIG)) == 4
        assert copy.lookup(SIG, 32, 32) == pytest.approx(cost(32, 32))


def test_lookups_follow_the_fill_the_probes_chose_and_summary_names_it(tmp_path):
    table = drifted_table(tmp_path / "t.lut")  # the line points at 96 channels 25% low
    with LatencyTable.open(table.path) as reopened:
        assert reopened.lookup(SIG, 96, 96) == pytest.approx(cost(96, 96), rel=0.02)
        (row,) = reopened.summary()["signatures"]
        # Asked to, it fills with its lines as tables before probes: the low points twice.
        assert reopened.use_lines().lookup(SIG, 96, 96) < 0.6 * cost(96, 96)
        assert reopened.summary()["signatures"][0]["fill"] == "lines"
    assert row["fill"] == "bilinear"
    assert row["probe_error_ms"]["bilinear"] < row["probe_error_ms"]["lines"]
    assert row["planned"] == 9 + 15 - 5 + 4  # coarse 3x3, lines (5 points coarse), probes
