"""Crash safety and sharing: real build processes killed with SIGKILL, and two processes
filling one table at once."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Wide layers at step 1 on the analytic backend: thousands of points committed one by
# one, so a kill lands in the middle of the stream of transactions.
MODEL_PY = textwrap.dedent(
    """
    import torch.nn as nn

    def wide():
        return nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
        )
    """
)
BUILD = ["--model", "wide.py:wide", "--input-shape", "1,3,8,8", "--backend", "analytic",
         "--step", "1", "--strategy", "full", "--out", "t.lut", "--json"]  # fmt: skip


def _start(cwd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lut_builder", "build", *BUILD, *extra],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _count(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute("SELECT COUNT(*) FROM points").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return 0  # not created yet, or schema not committed yet


def _kill_after(cwd: Path, min_points: int, timeout: float = 120.0) -> None:
    proc = _start(cwd)
    db = cwd / "t.lut"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists() and _count(db) >= min_points:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the build finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _rows(db: Path) -> dict[tuple, tuple]:
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = con.execute("SELECT sig_id, c_in, c_out, median_ms, worker, measured_at FROM points")
    out = {r[:3]: r[3:] for r in rows}
    con.close()
    return out


def _meta(db: Path) -> dict:
    con = sqlite3.connect(db)
    meta = {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta")}
    con.close()
    return meta


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "wide.py").write_text(MODEL_PY)
    return tmp_path


def _check_resume(workdir: Path, kills: list[int]) -> None:
    db = workdir / "t.lut"
    kept: dict = {}
    for min_points in kills:
        _kill_after(workdir, min_points)
        rows = _rows(db)  # intact after the kill
        assert len(rows) >= min_points
        assert all(rows[k] == v for k, v in kept.items())  # nothing measured is lost
        assert _meta(db)["complete"] is False
        kept = rows
    done = subprocess.run(
        [sys.executable, "-m", "lut_builder", "build", *BUILD],
        cwd=workdir, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    rows = _rows(db)
    assert result["complete"] and len(rows) == result["planned"]
    # The resumed build measured exactly the points that were missing, and kept the rest.
    assert result["measured"] == result["planned"] - len(kept)
    assert all(rows[k] == v for k, v in kept.items())
    assert _meta(db)["complete"] is True


def test_sigkill_then_resume_measures_only_missing(workdir):
    _check_resume(workdir, [300])


@pytest.mark.slow
def test_repeated_sigkill_at_varied_moments(workdir):
    _check_resume(workdir, [1, 150, 900, 1500])


# Starts `lut-builder build` once its imports are done and a barrier file appears, so two
# processes begin measuring together. An analytic point costs microseconds, so a shard
# would finish within the spread of two processes' start-ups on a loaded machine (seen:
# one done 12 ms before the other began); each point is made to take half a millisecond,
# about a second a shard, as a real measurement takes far longer still.
AT_BARRIER = textwrap.dedent(
    """
    import os, sys, time
    import lut_builder.cli, torch  # the slow part, before the barrier
    import lut_builder.build, lut_builder.commands.build, lut_builder.backends.analytic
    analytic = lut_builder.backends.analytic.AnalyticBackend
    fast = analytic.measure
    def slow(self, *args):
        time.sleep(0.0005)
        return fast(self, *args)
    analytic.measure = slow
    barrier, ready = sys.argv[1], sys.argv[2]
    open(ready, "w").close()
    while not os.path.exists(barrier):
        time.sleep(0.001)
    raise SystemExit(lut_builder.cli.main(sys.argv[3:]))
    """
)


def test_two_processes_fill_one_table(workdir):
    barrier = workdir / "go"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                AT_BARRIER,
                str(barrier),
                str(workdir / f"ready{i}"),
                "build",
                *BUILD,
                "--shard",
                f"{i}/2",
            ],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        for i in range(2)
    ]
    deadline = time.monotonic() + 120
    while not all((workdir / f"ready{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    barrier.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    results = [json.loads(out) for out, _ in outs]
    rows = _rows(workdir / "t.lut")
    planned = results[0]["planned"]
    assert len(rows) == planned and sum(r["measured"] for r in results) == planned
    spans: dict[str, list[float]] = {}
    for _, worker, at in rows.values():
        spans.setdefault(worker, []).append(at)
    assert len(spans) == 2  # both processes measured...
    (a0, a1), (b0, b1) = ((min(v), max(v)) for v in spans.values())
    assert a0 < b1 and b0 < a1  # ...at the same time
    assert _meta(workdir / "t.lut")["complete"] is True
    assert sum(r["complete"] for r in results) >= 1
