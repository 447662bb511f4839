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
