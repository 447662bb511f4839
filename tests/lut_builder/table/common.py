"""A small latency table for the table and latency-model tests."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager

import pytest

from lut_builder.signatures import LayerSignature
from lut_builder.table import Grid, LatencyTable
from lut_builder.timing import Timing

SIG = LayerSignature("conv2d", kernel=3, padding=1, in_hw=(8, 8))
DW = LayerSignature("conv2d", kernel=3, padding=1, group_mode="depthwise", groups=0, in_hw=8)
FP = {"backend": "analytic", "precision": "fp32", "device": "test", "versions": {"x": "1"}}


def cost(c_in: int, c_out: int) -> float:
    """A bilinear latency surface (what a compute-bound conv looks like in tile space)."""
    return 0.01 + 0.001 * c_in + 0.002 * c_out + 0.0001 * c_in * c_out


def t(ms: float) -> Timing:
    return Timing(ms, ms * 0.9, ms * 1.1, ms, ms * 0.05, 20)


def make_table(path, grid: Grid, *, sig=SIG, fill=True, alignment=16, **kw) -> LatencyTable:
    table = LatencyTable.create(path, FP, alignment, **kw)
    table.add_signature(sig, grid)
    if fill:
        for a, b in grid.points():
            table.add_point(sig, a, b, t(cost(a, b)))
        assert table.mark_complete()
    return table


#: A sparse grid with lines and probes (4 values between its coarse points).
PROBED = Grid([16, 32, 48, 64, 80, 96, 112, 128], [16, 32, 48, 64, 80, 96, 112, 128],
              coarse_in=[16, 64, 128], coarse_out=[16, 64, 128], lines_in=[128],
              lines_out=[128], probes=[(112, 96), (96, 112), (112, 112), (48, 80)])  # fmt: skip


def drifted_table(path) -> LatencyTable:
    """A complete table on :data:`PROBED` whose line points at 96 channels (128 -> 96 and
    96 -> 128) were measured 25% low; every other point is :func:`cost`."""
    table = make_table(path, PROBED, fill=False)
    for a, b in PROBED.points():
        low = 0.75 if 96 in (a, b) and 128 in (a, b) else 1.0
        table.add_point(SIG, a, b, t(cost(a, b) * low))
    assert table.mark_complete()
    return table


def snapshot(directory) -> dict[str, tuple[bytes, int]]:
    """Every file in ``directory`` (recursively): its bytes and modification time.
    Python's bytecode caches (a model spec imported from a file) are left out."""
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def content(path) -> list[str]:
    """The logical content of an SQLite file: its SQL dump (read-only; run it after
    taking a snapshot, since SQLite may create and remove side files)."""
    import sqlite3

    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(con.iterdump())
    finally:
        con.close()


@contextmanager
def read_only(directory):
    """Make ``directory`` read-only as a user's read-only directory is: no file can be
    created in it, so SQLite cannot create a table's ``-shm``/``-wal`` there. As root,
    permission bits stop nothing, so the directory is made immutable (``chattr +i``
    holds for root too); otherwise its write bits are cleared. Skips when neither
    works here."""
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot make a directory read-only as root here: {done.stderr.strip()}")

        def undo() -> None:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        mode = directory.stat().st_mode
        directory.chmod(0o555)

        def undo() -> None:
            directory.chmod(mode)

    try:
        try:
            (directory / "probe").touch()
        except OSError:
            pass
        else:
            (directory / "probe").unlink()
            pytest.skip("the directory is still writable")
        yield directory
    finally:
        undo()
