"""A CPU latency table describes one thread count: stored in its fingerprint, used by
its calibration, readable by whoever times against it, and refused for another."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lut_builder.backends import get_backend
from lut_builder.build import build_table
from lut_builder.errors import FingerprintMismatchError, UserError
from lut_builder.table import Grid, LatencyTable, table_threads

from ..conftest import needs_cpus
from .backends.common import CONV, FAST
from .table.common import FP, SIG, t

ORT_1 = {**FP, "backend": "onnxruntime", "options": {"threads": 1, "clock": "thread"}}


@pytest.fixture
def restore_torch_threads():
    """Torch's thread count is process-wide: leave it as the test found it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_table_threads_reads_both_cpu_backends_and_none_elsewhere():
    assert table_threads(ORT_1) == 1
    assert table_threads({"backend": "torch", "threads": 2, "options": {"inner": 1}}) == 2
    assert table_threads({"backend": "torch", "device": "H100", "options": {"inner": 20}}) is None
    assert table_threads(FP) is None
    assert table_threads({**FP, "threads": True}) is None  # not a count


def make_table(path, fingerprint) -> LatencyTable:
    table = LatencyTable.create(path, fingerprint, 8)
    table.add_signature(SIG, Grid([8], [8]))
    table.add_point(SIG, 8, 8, t(1.0))
    table.mark_complete()
    return table


def test_a_one_thread_table_is_refused_for_two(tmp_path):
    with make_table(tmp_path / "t1.lut", ORT_1) as table:
        assert table.threads == 1 and table.summary()["threads"] == 1
        table.require_threads(1)
        with pytest.raises(FingerprintMismatchError) as info:
            table.require_threads(2)
    msg = str(info.value)
    assert "measured at 1 CPU thread, not 2" in msg and "--threads 2" in msg
    with make_table(tmp_path / "gpu.lut", FP) as table:
        assert table.threads is None
        table.require_threads(2)  # no thread count to disagree with


def test_torch_backend_keeps_its_thread_count_against_process_changes(restore_torch_threads):
    backend = get_backend("torch", threads=1, **FAST)
    torch.set_num_threads(2)  # someone else in the process
    assert backend.fingerprint()["threads"] == 1
    backend.measure(CONV, 8, 8)
    assert torch.get_num_threads() == 1


def tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))


@needs_cpus(2)
def test_calibration_runs_at_the_table_thread_count(tmp_path, monkeypatch, restore_torch_threads):
    import lut_builder.build as build

    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(UserError, match="calibration must run at the 2 CPU threads"):
        build_table(
            tmp_path / "t.lut", tiny(), x, "torch", backend_options={"threads": 2, **FAST},
            runner_options={"threads": 1},
        )  # fmt: skip
    assert not (tmp_path / "t.lut").exists()  # refused before the file was made

    seen = {}

    class Stop(Exception):
        pass

    def runner(name, model, example_input, **options):
        seen.update(options)
        raise Stop

    monkeypatch.setattr(build, "make_runner", runner)
    with pytest.raises(Stop):  # the calibration's first runner: stop there
        build_table(tmp_path / "t.lut", tiny(), x, "torch", backend_options={"threads": 2, **FAST})
    assert seen["threads"] == 2
    # (The calibration's runners are made before the points are measured.)
    with LatencyTable.open(tmp_path / "t.lut", force=True) as table:
        assert table.threads == 2


@needs_cpus(2)
def test_build_threads_on_a_backend_without_cpu_threads_is_one_line(lut_cli, tmp_path):
    from tests.conftest import assert_user_error

    (tmp_path / "tiny.py").write_text(
        "import torch.nn as nn\ndef tiny():\n    return nn.Conv2d(3, 8, 3)\n"
    )
    res = lut_cli(
        "build", "--model", "tiny.py:tiny", "--input-shape", "1,3,8,8", "--backend",
        "analytic", "--threads", "2", "--out", "t.lut",
    )  # fmt: skip
    assert_user_error(res, "--threads is the CPU thread count", "analytic")
    assert not (tmp_path / "t.lut").exists()


@needs_cpus(2)
def test_several_onnxruntime_threads_are_timed_without_spinning():
    from lut_builder.backends.onnxruntime.session import session_options

    key = "session.intra_op.allow_spinning"
    assert session_options(2, "all").get_session_config_entry(key) == "0"
    with pytest.raises(RuntimeError):  # one thread: no pool to spin, the entry is not set
        session_options(1, "all").get_session_config_entry(key)
    two = get_backend("onnxruntime", threads=2, normalize=False)
    one = get_backend("onnxruntime", threads=1, normalize=False)
    try:
        assert two.fingerprint()["options"]["spinning"] is False
        assert "spinning" not in one.fingerprint()["options"]
    finally:
        two.close()
        one.close()


@pytest.fixture
def cpus(monkeypatch, tmp_path):
    """Set the affinity mask and the cgroup quota :func:`usable_cpus` reads."""
    import os

    from lut_builder import parallelism

    def set_cpus(mask: int, quota: str | None = None) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(mask)), raising=False)
        path = tmp_path / "cpu.max"
        if quota is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(quota + "\n")
        monkeypatch.setattr(parallelism, "CGROUP_CPU_MAX", str(path))

    return set_cpus


def test_usable_cpus_is_the_affinity_mask_within_the_cgroup_quota(cpus, monkeypatch):
    import os

    from lut_builder.parallelism import usable_cpus

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    cpus(3)
    assert usable_cpus() == 3  # taskset -c 0-2 on a 64-CPU machine
    cpus(8, "max 100000")
    assert usable_cpus() == 8  # no quota
    cpus(8, "250000 100000")
    assert usable_cpus() == 3  # docker --cpus 2.5: three threads can run at once
    cpus(2, "800000 100000")
    assert usable_cpus() == 2  # the mask is the smaller
    cpus(4, "garbage")
    assert usable_cpus() == 4  # an unreadable quota is no quota
    cpus(4)
    monkeypatch.delattr(os, "sched_getaffinity")
    assert usable_cpus() == 64  # no affinity mask on this platform: the machine's count


def test_every_thread_count_is_bounded_by_the_usable_cpus(cpus, restore_torch_threads):
    """Both runners and both CPU backends refuse more threads than the process may use,
    one line naming what was given; the usable count itself is taken."""
    from lut_builder.backends import make_runner

    cpus(2)
    net = nn.Sequential(nn.Conv2d(3, 4, 3))
    x = torch.zeros(1, 3, 8, 8)
    for make in (
        lambda n: get_backend("onnxruntime", threads=n),
        lambda n: get_backend("torch", device="cpu", threads=n),
        lambda n: make_runner("onnxruntime", net, x, threads=n),
        lambda n: make_runner("torch", net, x, threads=n),
    ):
        make(2)
        with pytest.raises(UserError, match="threads must be at most 2, the CPUs this process may use, not 3"):  # fmt: skip
            make(3)
    for bad in (0, True, 1.5):
        with pytest.raises(UserError, match="must be an integer >= 1"):
            make_runner("torch", net, x, threads=bad)
