"""merge_tables: shard tables measured apart joined into one, or refused with nothing written."""

from __future__ import annotations

import sqlite3

import pytest
import torch
import torch.nn as nn

from lut_builder.build import build_table
from lut_builder.errors import FingerprintMismatchError, IncompleteTableError, UserError
from lut_builder.table import Grid, LatencyTable, merge_tables

from .common import FP, SIG, cost, t


def tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip


def shards(tmp_path, n: int = 2) -> list:
    """``n`` analytic shard tables of one build, each in its own file (as on n machines)."""
    model, x = tiny(), torch.randn(1, 3, 16, 16)
    paths = [tmp_path / f"shard{i}.lut" for i in range(n)]
    for i, p in enumerate(paths):
        build_table(p, model, x, "analytic", step=8, shard=(i, n))
    return paths


def test_shards_merge_into_the_table_one_file_would_hold(tmp_path):
    paths = shards(tmp_path, 3)
    for p in paths:  # each shard alone is refused for lookups
        with pytest.raises(IncompleteTableError):
            LatencyTable.open(p)
    result = merge_tables(paths, tmp_path / "merged.lut")
    assert result.complete and result.missing == 0 and result.overlapping == 0
    build_table(tmp_path / "one.lut", tiny(), torch.randn(1, 3, 16, 16), "analytic", step=8)
    with LatencyTable.open(tmp_path / "one.lut") as one, LatencyTable.open(result.path) as m:
        assert m.fingerprint == one.fingerprint and m.signatures() == one.signatures()
        assert result.points == m.count_points() == one.count_points()
        for sig, a, b in one.planned():
            assert m.lookup(sig, a, b) == one.lookup(sig, a, b)
        assert len(m.info["builds"]) == 3 and m.info["merged"]["inputs"] == [str(p) for p in paths]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def make(path, fp=FP, points=(), *, grid=None, unit=None) -> None:
    table = LatencyTable.create(path, fp, 8, reference_kind="ref" if unit else None)
    table.add_signature(SIG, grid or Grid([8, 16], [8, 16]))
    if unit:
        table.adopt_reference("ref", unit)
    for a, b, timing in points:
        table.add_point(SIG, a, b, timing, unit_ms=unit)
    table.mark_complete()
    table.close()


def test_agreeing_duplicates_are_merged_the_steadier_kept(tmp_path):
    steady = t(1.0)
    wobbly = steady.__class__(1.04, 0.9, 1.2, 1.04, 0.1, 20)  # within its own spread
    make(tmp_path / "a.lut", points=[(8, 8, steady), (8, 16, t(2.0))])
    make(tmp_path / "b.lut", points=[(8, 8, wobbly), (16, 8, t(2.0)), (16, 16, t(4.0))])
    result = merge_tables([tmp_path / "b.lut", tmp_path / "a.lut"], tmp_path / "m.lut")
    assert result.complete and result.overlapping == 1 and result.points == 4
    with LatencyTable.open(result.path) as m:
        assert m.lookup(SIG, 8, 8) == 1.0


def test_reference_tables_keep_ratios_in_the_fastest_unit(tmp_path):
    make(tmp_path / "a.lut", points=[(8, 8, t(1.0)), (8, 16, t(2.0))], unit=0.5)
    make(tmp_path / "b.lut", points=[(16, 8, t(1.6)), (16, 16, t(3.2))], unit=0.4)
    with LatencyTable.open(merge_tables(
        [tmp_path / "a.lut", tmp_path / "b.lut"], tmp_path / "m.lut"
    ).path) as m:  # fmt: skip
        assert m.unit_ms == 0.4 and m.reference["kind"] == "ref"
        # a stored 2.0 (ratio) for (8, 8): 2.0 * 0.4 ms in the merged unit
        assert m.lookup(SIG, 8, 8) == pytest.approx(0.8)
        assert m.lookup(SIG, 16, 16) == pytest.approx(3.2)


def test_repeated_builds_average_every_point_agreeing_or_not(tmp_path):
    full = [(a, b) for a in (8, 16) for b in (8, 16)]
    make(tmp_path / "a.lut", points=[(a, b, t(1.0 * a * b / 64)) for a, b in full], unit=0.5)
    # b measured every point 30% higher in ratio (beyond the 20% spread), in another unit
    make(tmp_path / "b.lut", points=[(a, b, t(1.04 * a * b / 64)) for a, b in full], unit=0.4)
    inputs = [tmp_path / "a.lut", tmp_path / "b.lut"]
    refused(tmp_path, inputs)  # as shards: they conflict
    result = merge_tables(inputs, tmp_path / "m.lut", average=True)
    assert result.averaged and result.complete
    assert result.overlapping == result.disagreeing == result.points == 4
    assert result.to_dict()["disagreeing"] == 4
    with LatencyTable.open(result.path) as m, LatencyTable.open(inputs[0]) as a:
        assert m.unit_ms == 0.4
        for x, y in full:
            # ratios 2.0*xy/64 and 2.6*xy/64 (stored as ms / unit), averaged: 2.3*xy/64
            assert m.lookup(SIG, x, y) == pytest.approx(2.3 * x * y / 64 * 0.4)
            assert m.lookup(SIG, x, y) / m.unit_ms == pytest.approx(
                1.15 * a.lookup(SIG, x, y) / a.unit_ms
            )
        (point,) = [p for p in m.points(SIG) if (p.c_in, p.c_out) == (16, 16)]
        assert point.timing.n == 40
        assert point.timing.p10_ms == pytest.approx(0.9 * 2.3 * 4 * 0.4)


def test_averaging_keeps_points_measured_once_as_they_are(tmp_path):
    make(tmp_path / "a.lut", points=[(8, 8, t(1.0)), (8, 16, t(2.0))])
    make(tmp_path / "b.lut", points=[(8, 8, t(1.2)), (16, 8, t(2.0)), (16, 16, t(4.0))])
    result = merge_tables(
        [tmp_path / "a.lut", tmp_path / "b.lut"], tmp_path / "m.lut", average=True
    )
    assert result.overlapping == 1 and result.disagreeing == 0 and result.points == 4
    with LatencyTable.open(result.path) as m:
        assert m.lookup(SIG, 8, 8) == pytest.approx(1.1)
        assert m.lookup(SIG, 8, 16) == 2.0 and m.lookup(SIG, 16, 16) == 4.0


def refused(tmp_path, inputs, error=UserError) -> str:
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(error) as info:
        merge_tables(inputs, tmp_path / "m.lut")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    return str(info.value)


def test_different_fingerprints_are_refused(tmp_path):
    make(tmp_path / "a.lut", points=[(8, 8, t(1.0))])
    make(tmp_path / "b.lut", {**FP, "versions": {"x": "2"}}, [(16, 8, t(1.0))])
    msg = refused(tmp_path, [tmp_path / "a.lut", tmp_path / "b.lut"], FingerprintMismatchError)
    assert "another target" in msg and "versions.x: '1' vs '2'" in msg and "\n" not in msg


def test_a_one_thread_table_does_not_merge_with_a_two_thread_one(tmp_path):
    ort = {**FP, "backend": "onnxruntime", "options": {"threads": 1}}
    make(tmp_path / "a.lut", ort, [(8, 8, t(1.0))])
    make(tmp_path / "b.lut", {**ort, "options": {"threads": 2}}, [(16, 8, t(1.0))])
    msg = refused(tmp_path, [tmp_path / "a.lut", tmp_path / "b.lut"], FingerprintMismatchError)
    assert "options.threads: 1 vs 2" in msg


def test_different_plans_are_refused(tmp_path):
    make(tmp_path / "a.lut", points=[(8, 8, t(1.0))])
    make(tmp_path / "b.lut", points=[(8, 8, t(1.0))], grid=Grid([8, 24], [8, 16]))
    msg = refused(tmp_path, [tmp_path / "a.lut", tmp_path / "b.lut"])
    assert "plans of different builds" in msg and SIG.short() in msg


def test_a_conflicting_point_is_refused_naming_it(tmp_path):
    make(tmp_path / "a.lut", points=[(8, 8, t(1.0)), (8, 16, t(2.0))])
    make(tmp_path / "b.lut", points=[(8, 16, t(2.6))])
    msg = refused(tmp_path, [tmp_path / "a.lut", tmp_path / "b.lut"])
    assert f"point (8, 16) of signature {SIG.short()} conflicts" in msg
    assert "a.lut" in msg and "b.lut" in msg and "\n" not in msg


def test_missing_input_damaged_input_and_existing_output(tmp_path):
    make(tmp_path / "a.lut", points=[(8, 8, t(1.0))])
    msg = refused(tmp_path, [tmp_path / "a.lut", tmp_path / "nope.lut"])
    assert "nope.lut" in msg and "does not exist" in msg
    make(tmp_path / "b.lut", points=[(16, 8, t(1.0))])
    con = sqlite3.connect(tmp_path / "b.lut")
    con.execute("UPDATE points SET median_ms = -1")
    con.commit()
    con.close()
    assert "damaged" in refused(tmp_path, [tmp_path / "a.lut", tmp_path / "b.lut"])
    (tmp_path / "m.lut").write_bytes(b"keep me")
    assert "exists" in refused(tmp_path, [tmp_path / "a.lut", tmp_path / "a.lut"])
    assert (tmp_path / "m.lut").read_bytes() == b"keep me"
    assert "two tables" in refused(tmp_path, [tmp_path / "a.lut"])


def test_an_incomplete_merge_says_what_is_missing(tmp_path):
    make(tmp_path / "a.lut", points=[(8, 8, t(1.0))])
    make(tmp_path / "b.lut", points=[(16, 8, t(cost(16, 8)))])
    result = merge_tables([tmp_path / "a.lut", tmp_path / "b.lut"], tmp_path / "m.lut")
    assert not result.complete and result.missing == 2 and result.points == 2
    with pytest.raises(IncompleteTableError):
        LatencyTable.open(result.path)


def test_the_merged_table_keeps_every_inputs_timing_loop_or_none(tmp_path):
    # Each input's timing loops are kept; where one input does not say how its points
    # were timed, the merged table does not either.
    points = [(a, b, t(cost(a, b))) for a in (8, 16) for b in (8, 16)]
    paths = [tmp_path / f"{n}.lut" for n in "abc"]
    for path in paths:
        make(path, points=points)
    for path in paths[:2]:
        with LatencyTable.open(path, writable=True) as table:
            table.append_info("timing_loops", {"runs": 3, "worker": path.name})
    merge_tables(paths[:2], tmp_path / "ab.lut")
    with LatencyTable.open(tmp_path / "ab.lut") as merged:
        assert merged.timing_loop == {"runs": 3}
        assert [e["worker"] for e in merged.info["timing_loops"]] == ["a.lut", "b.lut"]
    merge_tables([paths[0], paths[2]], tmp_path / "ac.lut")
    with LatencyTable.open(tmp_path / "ac.lut") as merged:
        assert merged.timing_loop is None and "timing_loops" not in merged.info
