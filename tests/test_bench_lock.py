"""The benchmark lock: a script run under a ``flock`` of the lock it takes itself around
its timings would wait for its own parent forever; it says so in one line instead, and
a lock held by any other process is still waited for."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import load_bench

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys
sys.path[:0] = [{bench!r}, {root!r}]
import prune_quality
try:
    prune_quality.check_lock_not_inherited({lock!r})
except prune_quality.InheritedLockError as exc:
    print("refused:", exc)
else:
    print("free")
"""


def child(lock: Path) -> str:
    code = CHILD.format(bench=str(ROOT / "bench"), root=str(ROOT), lock=str(lock))
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout.strip()


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs /proc/locks")
def test_a_lock_held_by_the_parent_is_refused_at_once(tmp_path):
    lock = tmp_path / "bench.lock"
    assert child(lock) == "free"  # nobody holds it
    with open(lock, "a") as fh:  # this process holds it, the child runs under it
        fcntl.flock(fh, fcntl.LOCK_EX)
        said = child(lock)
    assert said.startswith("refused:") and "one it runs under" in said and str(lock) in said
    assert len(said.splitlines()) == 1


def test_a_lock_held_by_another_process_is_waited_for(tmp_path):
    pq = load_bench("prune_quality")
    lock = tmp_path / "bench.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"import fcntl, time\nfh = open({str(lock)!r}, 'a')\nfcntl.flock(fh, fcntl.LOCK_EX)\n"
         "print('held', flush=True)\ntime.sleep(1.5)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        pq.check_lock_not_inherited(str(lock))  # a sibling's lock: no error
        t0 = time.perf_counter()
        with pq.bench_lock(str(lock)):
            waited = time.perf_counter() - t0
        assert waited > 0.3  # it waited for the holder to let go
    finally:
        holder.wait(timeout=30)


def test_a_lock_this_process_holds_is_refused_not_waited_for(tmp_path):
    pq = load_bench("prune_quality")
    lock = tmp_path / "bench.lock"
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        if pq.lock_holder(fh) is None:
            pytest.skip("no /proc/locks to tell the holder")
        with pytest.raises(pq.InheritedLockError, match="this one"), pq.bench_lock(str(lock)):
            pass


def test_ratio_drift_under_a_flock_of_its_lock_stops_before_training(tmp_path):
    from tests.conftest import TWO_CONV_BN

    if not Path("/proc/locks").exists():
        pytest.skip("needs /proc/locks")
    lock, out = tmp_path / "lock", tmp_path / "d.json"
    argv = ["--model", TWO_CONV_BN, "--input-shape", "2,3,8,8", "--pretrain-epochs", "1",
            "--lock", str(lock), "--out", str(out)]  # fmt: skip
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        done = subprocess.run(
            [sys.executable, str(ROOT / "bench/ratio_drift.py"), *argv], capture_output=True,
            text=True, timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "would wait for it forever" in err[0]
    assert not out.exists()
