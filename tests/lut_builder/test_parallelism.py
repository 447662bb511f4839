"""A table measured at several CPU threads checks first that they run in parallel, keeps
the speed-up it saw, and warns when they do not."""

from __future__ import annotations

import json
import time
import warnings

import pytest
import torch
import torch.nn as nn

import lut_builder.build as build
from lut_builder.build import build_table
from lut_builder.parallelism import MIN_SPEEDUP, ParallelCheck, check_parallelism
from lut_builder.table import LatencyTable

from ..conftest import needs_cpus


class Sleeper:
    """A runner whose inference sleeps ``ms`` (wall time, as parallel threads save)."""

    def __init__(self, ms: float, closed: list) -> None:
        self.ms, self.closed = ms, closed

    def __call__(self) -> None:
        time.sleep(self.ms / 1000)

    def sync(self) -> None:
        pass

    def close(self) -> None:
        self.closed.append(self.ms)


def test_threads_that_halve_the_time_are_parallel_and_closed():
    closed: list = []
    check = check_parallelism(lambda n: Sleeper(2.0 / n, closed), 2, rounds=5, min_block_ms=6)
    assert 1.6 < check.speedup < 2.4 and check.low <= check.speedup <= check.high
    assert check.parallel and check.warning() is None and check.rounds == 5
    assert sorted(closed) == [1.0, 2.0]  # both runners closed
    assert check.to_dict()["parallel"] is True


def test_threads_that_save_nothing_say_so_in_one_line():
    check = check_parallelism(lambda n: Sleeper(1.5, []), 2, rounds=5, min_block_ms=6)
    assert 0.7 < check.speedup < MIN_SPEEDUP and not check.parallel
    line = check.warning()
    assert "\n" not in line and "at 2 threads the model ran only" in line
    assert "not running in parallel now" in line


def test_bad_arguments_and_a_failing_runner_leave_nothing_open():
    with pytest.raises(ValueError, match="threads must be >= 2"):
        check_parallelism(lambda n: Sleeper(1, []), 1)
    with pytest.raises(ValueError, match="rounds"):
        check_parallelism(lambda n: Sleeper(1, []), 2, rounds=0)
    closed: list = []

    def make(n):
        if n > 1:
            raise RuntimeError("no session")
        return Sleeper(1, closed)

    with pytest.raises(RuntimeError, match="no session"):
        check_parallelism(make, 2)
    assert closed == [1]  # the runner made before the failure is closed


def tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))


FAST_ORT = {"warmup": 1, "runs": 3, "min_time_s": 0.0, "copies": 2}


@pytest.mark.parametrize("threads", [1, pytest.param(2, marks=needs_cpus(2))])
def test_an_onnxruntime_build_checks_only_at_several_threads(tmp_path, monkeypatch, threads):
    seen = []

    def fake(make, n, **kw):
        seen.append(n)
        r = make(n)  # a real ONNX Runtime runner of the model at n threads
        assert r.threads == n
        r.close()
        return slow

    slow = ParallelCheck(2, 1.05, 0.98, 1.1, 15)
    monkeypatch.setattr(build, "check_parallelism", fake)
    x = torch.randn(1, 3, 8, 8)
    opts = {"threads": threads, **FAST_ORT}
    path = tmp_path / "t.lut"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = build_table(
            path, tiny(), x, "onnxruntime", backend_options=opts, calibration="none"
        )
    with LatencyTable.open(path) as table:
        checks = table.info.get("parallel_checks")
    if threads == 1:
        assert seen == [] and result.parallel == [] and checks is None
        return
    # Before and after measuring, each recorded, each warned of.
    assert seen == [2, 2] and [w.message.args[0] for w in caught] == [slow.warning()] * 2
    assert [c.speedup for c in result.parallel] == [1.05, 1.05]
    assert result.to_dict()["parallel"][0]["parallel"] is False
    assert len(checks) == 2 and checks[0]["speedup"] == 1.05 and checks[0]["threads"] == 2
    # Resuming a complete table measures nothing and checks nothing.
    again = build_table(path, tiny(), x, "onnxruntime", backend_options=opts, calibration="none")
    assert again.parallel == [] and seen == [2, 2]


@needs_cpus(2)
def test_the_cli_warns_when_the_threads_gave_nothing(tmp_path, monkeypatch, capsys):
    from lut_builder.cli import main

    slow = ParallelCheck(2, 1.02, 0.97, 1.08, 15)
    monkeypatch.setattr(build, "check_parallelism", lambda make, n, **kw: slow)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.py").write_text(
        "import torch.nn as nn\ndef tiny():\n    return nn.Conv2d(3, 8, 3)\n"
    )
    args = ["build", "--model", "tiny.py:tiny", "--input-shape", "1,3,8,8", "--threads", "2",
            "--no-overhead", "--out", "t.lut"]  # fmt: skip
    assert main(args) == 0
    res = capsys.readouterr()
    assert "2 CPU threads (1.02x, then 1.02x the speed of one)" in res.out
    lines = [ln for ln in res.err.splitlines() if "warning" in ln]
    assert lines == [f"lut-builder: warning: {slow.warning()}"] * 2
    assert main([*args[:-1], "t2.lut", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parallel"][0]["speedup"] == 1.02
    assert main(["show", "t.lut"]) == 0
    shown = " ".join(capsys.readouterr().out.split())  # as rich wrapped it
    assert "2 CPU threads (1.02x, 1.02x the speed of one thread when built)" in shown
