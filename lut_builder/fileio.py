"""Atomic file writes: a file is either its old self or its complete new self.

Every output the two tools write (tables' companions, plans, reports, engines, sidecars,
timing caches, plots, ONNX files, benchmark results) goes through here: the data is
written to a temporary file beside the target (same directory, so the final rename is
atomic on POSIX), flushed to disk, then renamed over the target. A failure or an
interruption at any point leaves the target as it was and no temporary file behind. A
target that is a symbolic link is written where it points; the link stays.

Modes: files are created ``mode & ~umask`` (``0o644`` by default), as an ``open()`` of a
new file would under the user's umask; :func:`tempfile.mkstemp` would give ``0o600``,
which the rename would carry over to the output.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _through_links(path: str | os.PathLike) -> Path:
    """``path``, or the file it links to when it is a symbolic link (dangling too): an
    output written over a link is written where the link points, as a shell redirection
    or ``cp`` would write it, and the link is kept."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _temp_path(path: Path) -> Path:
    """A name beside ``path`` for its temporary file, hidden, with ``path``'s suffix kept
    (writers such as matplotlib pick the format from it)."""
    return path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")


def atomic_write(path: str | os.PathLike, data: bytes | str, *, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically (through a symbolic link, to its target).

    Args:
        path: the file to write; its directory must exist.
        data: bytes, or text (written as UTF-8).
        mode: permission bits of a new file, before the umask is applied.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: ``data`` is neither bytes nor str (nothing is written).
        OutputError: (an ``OSError``) the file cannot be written; ``path`` is left as it
            was.
    """
    if isinstance(data, str):
        data = data.encode()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"atomic_write takes bytes or str, not {type(data).__name__}")
    path = _through_links(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = _temp_path(path)
        try:
            fd = os.open(tmp, flags, mode)  # the umask applies, as for any new file
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise _output_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _output_error(path, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(
    path: str | os.PathLike,
    obj: Any,
    *,
    indent: int | None = 1,
    default: Callable[[Any], Any] | None = None,
    mode: int = 0o644,
) -> Path:
    """Write ``obj`` as JSON (and a trailing newline) to ``path`` atomically.

    Args:
        path: the file to write; its directory must exist.
        obj: anything :func:`json.dumps` takes.
        indent, default: as for :func:`json.dumps`.
        mode: as for :func:`atomic_write`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError, ValueError: ``obj`` is not JSON-serialisable (nothing is written).
        OutputError: (an ``OSError``) the file cannot be written; ``path`` is left as it
            was.
    """
    return atomic_write(path, json.dumps(obj, indent=indent, default=default) + "\n", mode=mode)


def _output_error(path: Path, exc: OSError) -> OSError:
    """``exc`` as the one line a command ends with, still an ``OSError`` with its errno."""
    from .errors import OutputError

    err = OutputError(f"{str(path)!r} cannot be written: {exc.strerror or exc}")
    err.errno = exc.errno
    return err


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (matplotlib's
    ``savefig``, ``torch.onnx.export``), renamed to ``path`` when the block succeeds.

    The writer creates the file, so its mode is the writer's (normally ``0o666`` under
    the umask). When the block raises, the temporary file is removed and ``path`` is
    left as it was.

    Yields:
        The temporary path (same directory and suffix as ``path``).

    Raises:
        FileNotFoundError: the block finished without writing the temporary file.
        OutputError: (an ``OSError``) the file was written but cannot replace ``path``
            (an immutable file, a directory that forbids it).
    """
    path = _through_links(path)
    tmp = _temp_path(path)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        os.replace(tmp, path)
    except FileNotFoundError:
        raise  # the block wrote nothing
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _output_error(path, exc) from exc


def input_file(
    path: str | os.PathLike, what: str, *, kind: str = "", error: type[Exception] | None = None
) -> Path:
    """``path`` as a :class:`~pathlib.Path` when it is a file the command can read: a
    regular file, or a link to one. The one check every input file goes through, so
    each says the same three things the same way.

    Args:
        path: the file.
        what: how the message names it (``"ONNX file"``, ``"--lut"``).
        kind: what the file should be, for the message when it is a directory
            (``"an ONNX model"``).
        error: the exception class (a :class:`~lut_builder.errors.UserError` by default).

    Raises:
        UserError: (or ``error``) the path is not a path (None, a number), is a
            directory, does not exist, or is not a regular file (a FIFO, a device).
    """
    from .errors import UserError

    error = error or UserError
    if not isinstance(path, (str, os.PathLike)):
        raise error(f"{what} must be a path, not {type(path).__name__}")
    path = Path(path)
    shown = f"{what} {str(path)!r}"
    if path.is_dir():
        raise error(f"{shown} is a directory" + (f", not {kind}" if kind else ""))
    if not path.exists():
        raise error(f"{shown} does not exist")
    if not path.is_file():
        raise error(f"{shown} is not a regular file")
    return path


def check_output(
    path: str | os.PathLike,
    *,
    kind: str = "file",
    flag: str = "--out",
    parents: bool = False,
    inputs: Mapping[str, str | os.PathLike | None] | None = None,
) -> Path:
    """Check, before any work, that an output can be written where the user asked.

    Every command calls this for each output path before it loads, measures or trains
    anything, so a bad path costs nothing and no traceback comes after the work.

    Args:
        path: the output.
        kind: ``"file"`` (a file is written there: it may exist as a regular file, not
            as a directory, a device or a FIFO) or ``"dir"`` (a directory is written or
            filled there: it may exist as a directory, not as a file).
        flag: how the user named it, for the message.
        parents: missing parent directories will be created (``mkdir -p``): the
            nearest existing one must be a writable directory.
        inputs: the files the command reads, by the flag that names them (None where
            not given): the output must be none of them.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        UserError: the path is empty, exists as the other kind (or as a special file),
            names a directory (a trailing separator) where a file is written, is one of
            ``inputs``, its parent directory does not exist (or is not a directory), or
            the directory it would be written in is not writable.
    """
    from .errors import UserError

    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', not {kind!r}")
    text = str(os.fspath(path))
    if not text:
        raise UserError(f"{flag} must be a non-empty string")
    path = Path(path)
    shown = f"{flag} {str(path)!r}"
    if kind == "file" and path.is_dir():
        raise UserError(f"{shown} is a directory; give a file name")
    if kind == "file" and text.endswith(tuple(filter(None, ("/", os.sep, os.altsep)))):
        raise UserError(f"{flag} {text!r} ends in a separator, so it names a directory; give a file name")  # fmt: skip
    if kind == "file" and path.exists() and not path.is_file():
        raise UserError(f"{shown} exists and is not a regular file")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise UserError(f"{shown} exists and is not a directory")
    for name, source in (inputs or {}).items():
        if not source:
            continue
        linked = path.exists() and os.path.isfile(source) and os.path.samefile(path, source)
        # One not written yet (a cache the command creates) is the same by its path.
        if linked or path.resolve() == Path(source).resolve():
            raise UserError(f"{shown} is one of the inputs ({name}); choose another path")
    parent = (_through_links(path) if kind == "file" else path).absolute().parent
    while parents and not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.exists():
        raise UserError(f"the directory of {shown} does not exist: {parent}")
    if not parent.is_dir():
        raise UserError(f"the parent of {shown} is not a directory: {parent}")
    # The file or directory is created in its parent (or, for an existing directory,
    # its files are created inside it).
    where = path if kind == "dir" and path.is_dir() else parent
    # A real probe, not os.access: it also catches read-only file systems and holds for
    # root, for whom permission bits say nothing.
    probe = where / f".{secrets.token_hex(6)}.probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise UserError(f"{shown} cannot be written in {where}: {exc.strerror}") from None
    os.close(fd)
    probe.unlink(missing_ok=True)
    return path
