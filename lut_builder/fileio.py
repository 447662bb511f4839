"""Atomic file writes: a file is either its old self or its complete new self.

Every output the two tools write (tables' companions, plans, reports, engines, sidecars,
timing caches, plots, ONNX files, benchmark results) goes through here: the data is
written to a temporary file beside the target (same directory, so the final rename is
atomic on POSIX), flushed to disk, then renamed over the target. A failure or an
interruption at any point leaves the target as it was and no temporary file behind.

Modes: files are created ``mode & ~umask`` (``0o644`` by default), as an ``open()`` of a
new file would under the user's umask; :func:`tempfile.mkstemp` would give ``0o600``,
which the rename would carry over to the output.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _temp_path(path: Path) -> Path:
    """A name beside ``path`` for its temporary file, hidden, with ``path``'s suffix kept
    (writers such as matplotlib pick the format from it)."""
    return path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")


def atomic_write(path: str | os.PathLike, data: bytes | str, *, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically.

    Args:
        path: the file to write; its directory must exist.
        data: bytes, or text (written as UTF-8).
        mode: permission bits of a new file, before the umask is applied.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: ``data`` is neither bytes nor str (nothing is written).
        OSError: the file cannot be written; ``path`` is left as it was.
    """
    if isinstance(data, str):
        data = data.encode()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"atomic_write takes bytes or str, not {type(data).__name__}")
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = _temp_path(path)
        try:
            fd = os.open(tmp, flags, mode)  # the umask applies, as for any new file
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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
        OSError: the file cannot be written; ``path`` is left as it was.
    """
    return atomic_write(path, json.dumps(obj, indent=indent, default=default) + "\n", mode=mode)


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
    """
    path = Path(path)
    tmp = _temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
