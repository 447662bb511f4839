"""Tests of lut_builder.fileio: atomic writes leave the old file or the whole new one."""

from __future__ import annotations

import json
import os
import re
import stat

import pytest

from lut_builder.fileio import atomic_output, atomic_write, atomic_write_json


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_atomic_replaces_or_leaves_the_file_as_it_was(tmp_path):
    target = tmp_path / "a.bin"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    with pytest.raises(TypeError):
        atomic_write(target, 12345)  # type: ignore[arg-type]
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_text_is_written_as_utf8(tmp_path):
    path = atomic_write(tmp_path / "t.txt", "température\n")
    assert path == tmp_path / "t.txt"
    assert path.read_bytes() == "température\n".encode()


def test_a_failure_mid_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "plan.json"
    target.write_text("old\n")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, b"new, but only half of it")
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["plan.json"]
    # A target that did not exist yet is not created either.
    with pytest.raises(OSError):
        atomic_write(tmp_path / "new.json", b"{}")
    assert os.listdir(tmp_path) == ["plan.json"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_mode_is_the_default_under_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a", b"x")
        atomic_write(tmp_path / "b", b"x", mode=0o600)
        atomic_write_json(tmp_path / "c.json", {})
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a") == 0o644 & ~umask
    assert _mode(tmp_path / "b") == 0o600 & ~umask
    assert _mode(tmp_path / "c.json") == 0o644 & ~umask


def test_json_layout_and_default(tmp_path):
    path = atomic_write_json(tmp_path / "r.json", {"a": [1, 2]})
    assert path.read_text() == '{\n "a": [\n  1,\n  2\n ]\n}\n'
    atomic_write_json(path, {"x": {1, 2}}, indent=2, default=sorted)
    assert json.loads(path.read_text()) == {"x": [1, 2]}
    assert path.read_text().endswith("]\n}\n")
    with pytest.raises(TypeError):
        atomic_write_json(path, {"x": object()})
    assert json.loads(path.read_text()) == {"x": [1, 2]}
    assert os.listdir(tmp_path) == ["r.json"]


def test_atomic_output_renames_on_success_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "plot.png"
    with atomic_output(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.name.startswith(".")
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("the writer failed")
    assert target.read_bytes() == b"new"
    with pytest.raises(FileNotFoundError), atomic_output(tmp_path / "never.png"):
        pass
    assert os.listdir(tmp_path) == ["plot.png"]


@pytest.mark.parametrize("writer", ["atomic_write", "atomic_output"])
def test_a_target_that_cannot_be_replaced_is_a_user_error(tmp_path, monkeypatch, writer):
    """An immutable file or a directory that forbids the rename: one line for the
    command-line tools, still an OSError with its errno to a caller; nothing left behind."""
    import errno

    from lut_builder.errors import OutputError, UserError

    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")

    def refused(src, dst):
        raise PermissionError(errno.EPERM, "Operation not permitted", str(src), None, str(dst))

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(OutputError) as caught:
        if writer == "atomic_write":
            atomic_write(target, b"new")
        else:
            with atomic_output(target) as tmp:
                tmp.write_bytes(b"new")
    assert isinstance(caught.value, UserError) and isinstance(caught.value, OSError)
    assert caught.value.errno == errno.EPERM
    assert str(caught.value) == f"{str(target)!r} cannot be written: Operation not permitted"
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.onnx"]


def test_check_output_refuses_inputs_empty_paths_and_special_files(tmp_path):
    from lut_builder.errors import UserError
    from lut_builder.fileio import check_output

    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    os.link(model, tmp_path / "hardlink.pt")
    os.mkfifo(tmp_path / "fifo")
    inputs = {"--model": str(model), "--weights": None}
    for path, message in [
        ("", "--out must be a non-empty string"),
        (tmp_path / "hardlink.pt", "is one of the inputs (--model)"),
        (f"{tmp_path}/./model.pt", "is one of the inputs (--model)"),
        (f"{tmp_path}/new/", "ends in a separator"),
        (tmp_path / "fifo", "exists and is not a regular file"),
    ]:
        with pytest.raises(UserError, match=re.escape(message)):
            check_output(path, inputs=inputs)
    assert check_output(tmp_path / "other.pt", inputs=inputs) == tmp_path / "other.pt"
    assert check_output(tmp_path / "new", kind="dir") == tmp_path / "new"
    assert sorted(os.listdir(tmp_path)) == ["fifo", "hardlink.pt", "model.pt"]


@pytest.mark.parametrize("writer", ["write", "output"])
def test_an_output_over_a_symlink_is_written_where_it_points(tmp_path, writer):
    """The link stays a link (a deployment's `model.engine -> v3.engine`); its target
    gets the new bytes, atomically, beside itself; a dangling link's target is created;
    check_output probes the target's directory."""
    from lut_builder.errors import UserError
    from lut_builder.fileio import check_output

    def write(path, data):
        if writer == "write":
            atomic_write(path, data)
        else:
            with atomic_output(path) as tmp:
                tmp.write_bytes(data)

    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "v3.engine").write_bytes(b"old")
    link = tmp_path / "model.engine"
    link.symlink_to(tmp_path / "store" / "v3.engine")
    assert check_output(link) == link
    write(link, b"new")
    assert link.is_symlink() and (tmp_path / "store" / "v3.engine").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path / "store")) == ["v3.engine"]  # no temporary left
    dangling = tmp_path / "next.engine"
    dangling.symlink_to(tmp_path / "store" / "v4.engine")
    write(dangling, b"v4")
    assert dangling.is_symlink() and (tmp_path / "store" / "v4.engine").read_bytes() == b"v4"
    nowhere = tmp_path / "gone.engine"
    nowhere.symlink_to(tmp_path / "missing" / "v5.engine")
    with pytest.raises(UserError, match="the directory of --out .*gone.engine' does not exist: .*missing"):  # fmt: skip
        check_output(nowhere)


def test_input_file_says_directory_missing_or_not_a_regular_file(tmp_path):
    from lut_builder.errors import SpecError, UserError
    from lut_builder.fileio import input_file

    (tmp_path / "t.lut").write_bytes(b"x")
    (tmp_path / "adir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(tmp_path / "t.lut")
    assert input_file(tmp_path / "link", "--lut") == tmp_path / "link"
    with pytest.raises(UserError, match=r"^--lut '.*adir' is a directory, not a table file$"):
        input_file(tmp_path / "adir", "--lut", kind="a table file")
    with pytest.raises(SpecError, match=r"^model file '.*gone.py' does not exist$"):
        input_file(tmp_path / "gone.py", "model file", error=SpecError)
    with pytest.raises(UserError, match=r"^--lut '.*fifo' is not a regular file$"):
        input_file(tmp_path / "fifo", "--lut")  # was "does not exist" at several inputs
