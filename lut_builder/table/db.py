"""The latency table's SQLite file: schema, format version, connections, transactions.

Layout (format version :data:`FORMAT_VERSION`):

- ``meta(key, value)``: JSON values: ``format_version``, ``fingerprint`` (backend,
  precision, device, versions, ...), ``alignment`` (channel step of the target),
  ``step`` (grid step), ``complete``, ``overhead_ms`` and its calibration details.
- ``signatures(id, key, label, grid)``: one row per :class:`LayerSignature`; ``grid`` is
  the planned axes (JSON, see :class:`~lut_builder.table.grid.Grid`).
- ``plan(sig_id, c_in, c_out)``: every point the build means to measure.
- ``points(sig_id, c_in, c_out, median_ms, p10_ms, p90_ms, mean_ms, std_ms, n, ...)``:
  milliseconds, or for a table with a ``reference`` workload ratios to it (times
  ``reference.unit_ms`` gives milliseconds).

The file is in WAL mode and every measurement is its own transaction: a build killed at
any moment leaves an intact database holding every point measured so far, and several
processes can add points at once. ``synchronous=NORMAL``: safe against a killed
process; a power cut may lose the last commits but does not corrupt the file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import FingerprintMismatchError, UserError

FORMAT_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS signatures (
    id INTEGER PRIMARY KEY,
    key TEXT UNIQUE NOT NULL,
    label TEXT NOT NULL,
    grid TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS plan (
    sig_id INTEGER NOT NULL REFERENCES signatures(id),
    c_in INTEGER NOT NULL,
    c_out INTEGER NOT NULL,
    PRIMARY KEY (sig_id, c_in, c_out)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS points (
    sig_id INTEGER NOT NULL REFERENCES signatures(id),
    c_in INTEGER NOT NULL,
    c_out INTEGER NOT NULL,
    median_ms REAL NOT NULL,
    p10_ms REAL NOT NULL,
    p90_ms REAL NOT NULL,
    mean_ms REAL NOT NULL,
    std_ms REAL NOT NULL,
    n INTEGER NOT NULL,
    worker TEXT,
    measured_at REAL NOT NULL,
    PRIMARY KEY (sig_id, c_in, c_out)
) WITHOUT ROWID;
"""


def check_sqlite_header(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from exc
    if head != SQLITE_MAGIC:
        raise UserError(f"{path} is not a latency table (not an SQLite database)")


def connect(path: Path, *, create: bool) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), waiting up to a minute
    for other writers. Nothing is written to the file here."""
    mode = "rwc" if create else "rw"
    if not create and not os.access(path, os.W_OK):
        mode = "ro"
    uri = f"file:{path.resolve().as_posix()}?mode={mode}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=60.0, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 60000")
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{path} is not a usable latency table: {exc}") from exc
    return conn


def enable_wal(conn: sqlite3.Connection) -> None:
    """Switch a (verified) table to WAL mode; persistent, so done once per file."""
    retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
    conn.execute("PRAGMA synchronous = NORMAL")


def retry(fn: Any, attempts: int = 50) -> Any:
    """Run ``fn``, retrying while another process holds the database locked."""
    for i in range(attempts):
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or i == attempts - 1:
                raise
            time.sleep(0.05 * (i + 1))
    return None


class transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error), retried while busy."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        retry(lambda: self.conn.execute("BEGIN IMMEDIATE"))
        return self.conn

    def __exit__(self, exc_type: Any, *rest: object) -> None:
        if exc_type is None:
            retry(lambda: self.conn.execute("COMMIT"))
        else:
            self.conn.execute("ROLLBACK")


def read_meta(
    conn: sqlite3.Connection, *, missing_ok: bool, path: Path | None = None
) -> dict[str, Any] | None:
    has = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    if has is None:
        others = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
        if missing_ok and others == 0:
            return None
        raise UserError(
            f"{path} is an SQLite database without lut-builder's schema (no meta table)"
        )
    try:
        rows = conn.execute("SELECT key, value FROM meta").fetchall()
        meta = {k: json.loads(v) for k, v in rows}
    except (sqlite3.DatabaseError, json.JSONDecodeError, TypeError) as exc:
        raise UserError(
            f"{path} is an SQLite database with a foreign or damaged meta table: {exc}"
        ) from exc
    if "format_version" not in meta:
        raise UserError(
            f"{path} is an SQLite database without lut-builder's schema (no format version)"
        )
    return meta


def check_format(meta: Mapping[str, Any], path: Path) -> None:
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path} has latency table format version {meta.get('format_version')!r}; this "
            f"lut-builder reads version {FORMAT_VERSION}"
        )


def create_or_join(
    path: Path, want: Mapping[str, Any], info: Mapping[str, Any]
) -> sqlite3.Connection:
    """Create a table file with its schema and ``want`` as its meta, or join the existing
    one when its meta has the same ``want`` (another shard of the same build).

    Several processes may call this at once for one path: the first creates the schema
    inside a write transaction, the others wait for it and then compare.

    Args:
        path: the SQLite file.
        want: ``format_version``, ``fingerprint``, ``alignment`` and ``step``.
        info: extra facts stored in ``info`` by the process that creates the file.

    Returns:
        A connection to the file, in WAL mode.

    Raises:
        UserError: the file exists and is not a latency table;
            :class:`~lut_builder.errors.FingerprintMismatchError`: it was made for a
            different target (fingerprint, alignment or step).
    """
    if path.exists() and path.stat().st_size > 0:
        check_sqlite_header(path)
    conn = connect(path, create=True)
    try:
        with transaction(conn):
            existing = read_meta(conn, missing_ok=True, path=path)
            if existing is None:
                # One statement at a time: executescript would commit the transaction.
                for stmt in SCHEMA.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                rows = {**want, "complete": False, "created_at": time.time(), "info": dict(info)}
                conn.executemany(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    [(k, json.dumps(v)) for k, v in rows.items()],
                )
            else:
                check_format(existing, path)
                diffs = [
                    f"{k}: file has {existing.get(k)!r}, this build {v!r}"
                    for k, v in want.items()
                    if existing.get(k) != v
                ]
                if diffs:
                    raise FingerprintMismatchError(
                        f"{path} already holds a table for another target ("
                        + "; ".join(diffs)[:400]
                        + "); use another --out or delete it"
                    )
        enable_wal(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise UserError(f"{path} is not a usable latency table: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn
