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

While a table is written it is in WAL mode and every measurement is its own
transaction: a build killed at any moment leaves an intact database holding every point
measured so far, and several processes can add points at once. ``synchronous=NORMAL``:
safe against a killed process; a power cut may lose the last commits but does not
corrupt the file. The last writer to close switches the file back to a rollback journal
(:func:`close_writer`): a finished table is one self-contained file.

Readers open the file read-only (:func:`connect_readonly`): they never change it, and a
table can be read where it cannot be written (a read-only directory or file system,
another user's files).
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import FingerprintMismatchError, UserError
from ..signatures import LayerSignature
from .grid import Grid

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


def _uri(path: Path, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"file:{urllib.parse.quote(path.resolve().as_posix())}?{query}"


def connect(path: Path, *, create: bool) -> sqlite3.Connection:
    """A connection for writing, in autocommit mode (transactions are explicit), waiting
    up to a minute for other writers. Nothing is written to the file here.

    Args:
        path: the SQLite file.
        create: create the file if it does not exist.
    """
    uri = _uri(path, mode="rwc" if create else "rw")
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=60.0, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 60000")
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{path} is not a usable latency table: {exc}") from exc
    return conn


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection: never writes to the file, and works where it cannot be
    written.

    A finished table (see :func:`close_writer`) reads alone, anywhere. One still in WAL
    mode (being written, its writer killed, or written by an older lut-builder) needs
    its ``-shm`` index beside it, and SQLite creates it (and a ``-wal``) only where the
    directory is writable. Where it cannot (a read-only directory or file system), the
    file is opened ``immutable``: read alone, without locks and without its WAL, which
    is right for a file nobody can be writing there, and only when no ``-wal`` holds
    changes not yet in it (immutable reads would silently miss them: refused).

    Raises:
        UserError: the file cannot be read at all, or only without changes its ``-wal``
            holds; the message says why.
    """

    def attempt(uri: str) -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, timeout=60.0, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 60000")
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opens the file
        except BaseException:
            conn.close()
            raise
        return conn

    try:
        return attempt(_uri(path, mode="ro"))
    except sqlite3.DatabaseError as exc:
        if "unable to open" not in str(exc):  # not about side files: locked, corrupt...
            raise UserError(f"{path} is not a usable latency table: {exc}") from exc
        first = exc  # the -shm (or -wal) cannot be created here
    wal = path.with_name(path.name + "-wal")
    try:
        pending = wal.stat().st_size > 0
    except OSError:
        pending = False
    if pending:
        raise UserError(
            f"latency table {path} cannot be read here: {wal.name} beside it holds changes "
            f"not yet in the table and SQLite cannot create {path.name}-shm to read them "
            f"({first}); make its directory writable, or copy {path.name} and {wal.name} "
            "to a directory that is"
        )
    try:
        return attempt(_uri(path, mode="ro", immutable="1"))
    except sqlite3.DatabaseError as exc:
        raise UserError(f"latency table {path} cannot be read: {first}; {exc}") from exc


def close_writer(conn: sqlite3.Connection) -> None:
    """Close a writing connection, leaving a self-contained file when it is the last.

    While a table is written it is in WAL mode, and what is committed may still be in
    its ``-wal`` file. The last writer to close switches it to a rollback journal: the
    WAL goes into the file, which then reads alone, with no side file to create (so
    also in a read-only directory, and a read-only reader leaves nothing behind); the
    next writer switches it back (:func:`enable_wal`). While other connections are open
    (another shard, a reader) the switch is refused; the WAL is then checkpointed as
    far as they allow. Never waits for them.
    """
    try:
        conn.execute("PRAGMA busy_timeout = 0")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        conn.execute("PRAGMA journal_mode = DELETE").fetchall()
    except sqlite3.Error:
        pass  # others have it open: the last of them switches it
    finally:
        conn.close()


def enable_wal(conn: sqlite3.Connection) -> None:
    """Switch a (verified) table to WAL mode for writing (until the last writer closes)."""
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
    """The meta table as a dict of decoded JSON values.

    Returns:
        The meta, or None for an empty database when ``missing_ok``.

    Raises:
        UserError: no meta table, no format version, or a value that is not JSON
            (naming the key).
    """
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
    except sqlite3.DatabaseError as exc:
        raise UserError(
            f"{path} is an SQLite database with a foreign or damaged meta table: {exc}"
        ) from exc
    meta = {}
    for key, value in rows:
        try:
            meta[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            raise UserError(
                f"latency table {path} is damaged: meta {key!r} is {_shown(value)}, not JSON"
            ) from None
    if "format_version" not in meta:
        raise UserError(
            f"{path} is an SQLite database without lut-builder's schema (no format version)"
        )
    return meta


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: What each meta key must hold: (check, what it is). Keys every build writes first.
META_KEYS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "fingerprint": (
        lambda v: isinstance(v, dict) and isinstance(v.get("backend"), str),
        "an object naming its backend",
    ),
    "alignment": (_positive_int, "a positive integer"),
    "step": (_positive_int, "a positive integer"),
    "complete": (lambda v: isinstance(v, bool), "true or false"),
}
#: Keys a table gains later: None, or what they must hold.
OPTIONAL_META_KEYS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "overhead_ms": (_finite, "a finite number"),
    "scale": (lambda v: _finite(v) and v > 0, "a positive number"),
    "overhead": (lambda v: isinstance(v, dict), "an object"),
    "info": (lambda v: isinstance(v, dict), "an object"),
    "reference": (
        lambda v: (
            isinstance(v, dict)
            and isinstance(v.get("kind"), str)
            and _finite(v.get("unit_ms"))
            and v["unit_ms"] > 0
        ),
        "an object with a kind and a positive unit_ms",
    ),
}


def check_meta(meta: Mapping[str, Any], path: Path) -> None:
    """Check the format version and that every meta value is what readers expect.

    Raises:
        UserError: another format version; a missing or malformed value, naming the
            table and the key.
    """
    check_format(meta, path)
    for key, (ok, what) in META_KEYS.items():
        if key not in meta:
            raise UserError(f"latency table {path} is damaged: its meta has no {key!r}")
        if not ok(meta[key]):
            raise UserError(
                f"latency table {path} is damaged: meta {key!r} is {_shown(meta[key])}, not {what}"
            )
    for key, (ok, what) in OPTIONAL_META_KEYS.items():
        if meta.get(key) is not None and not ok(meta[key]):
            raise UserError(
                f"latency table {path} is damaged: meta {key!r} is {_shown(meta[key])}, not {what}"
            )


#: The timing columns of ``points``, in order, as :class:`~lut_builder.timing.Timing`
#: names them (``n`` follows them).
TIMING_COLUMNS = ("median_ms", "p10_ms", "p90_ms", "mean_ms", "std_ms")

# The points a reader would refuse (see point_damage), found by SQLite: a table has up
# to tens of thousands of points, and most of them are fine. SQLite stores NaN as NULL
# and 9e999 is its infinity; typeof() catches text in a REAL column.
_NUMBER = "typeof({c}) IN ('real', 'integer') AND {c} < 9e999 AND {c} {op} 0"
_BAD_POINTS = f"""
SELECT s.label, p.c_in, p.c_out, {", ".join(f"p.{c}" for c in TIMING_COLUMNS)}, p.n
FROM points p LEFT JOIN signatures s ON s.id = p.sig_id
WHERE s.id IS NULL
   OR typeof(p.c_in) != 'integer' OR typeof(p.c_out) != 'integer'
   OR p.c_in < 1 OR p.c_out < 1
   OR NOT ({_NUMBER.format(c="p.median_ms", op=">")})
   OR NOT ({_NUMBER.format(c="p.mean_ms", op=">")})
   OR NOT ({_NUMBER.format(c="p.p10_ms", op=">=")})
   OR NOT ({_NUMBER.format(c="p.p90_ms", op=">=")})
   OR NOT ({_NUMBER.format(c="p.std_ms", op=">=")})
   OR typeof(p.n) != 'integer' OR p.n < 1
   OR p.p10_ms > p.median_ms OR p.median_ms > p.p90_ms
LIMIT 1
"""


def point_damage(
    median_ms: Any, p10_ms: Any, p90_ms: Any, mean_ms: Any, std_ms: Any, n: Any
) -> str:
    """What is wrong with one point's stored values, or ``""``.

    A latency (median, mean) is a finite positive number of milliseconds (or reference
    units); p10, p90 and the standard deviation are finite and not negative (a run of a
    differential measurement may come out as 0); p10 <= median <= p90; n is a positive
    integer.
    """
    named = [("latency", median_ms), ("mean", mean_ms)]
    for what, v in named:
        if not (_finite(v) and v > 0):
            return f"{what} {_shown(v)}, not a positive number"
    for what, v in (("p10", p10_ms), ("p90", p90_ms), ("std", std_ms)):
        if not (_finite(v) and v >= 0):
            return f"{what} {_shown(v)}, not a number >= 0"
    if not _positive_int(n):
        return f"run count {_shown(n)}, not a positive integer"
    if not p10_ms <= median_ms <= p90_ms:
        return f"p10 {p10_ms!r}, latency {median_ms!r} and p90 {p90_ms!r} out of order"
    return ""


def check_values(conn: sqlite3.Connection, path: Path) -> None:
    """Check every value a reader of the table will use, before it uses any: each
    signature's key and grid, and each measured point (see :func:`point_damage`).

    Raises:
        UserError: naming the table, the signature or point, and what is damaged.
    """
    damaged = f"latency table {path} is damaged"
    for key, label, grid in conn.execute("SELECT key, label, grid FROM signatures"):
        try:
            LayerSignature.from_key(key)
        except (ValueError, TypeError, AttributeError) as exc:
            raise UserError(
                f"{damaged}: signature {_shown(label)} has a malformed key ({exc})"
            ) from None
        try:
            Grid.from_dict(json.loads(grid))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise UserError(
                f"{damaged}: signature {_shown(label)} has a malformed grid {_shown(grid)} ({exc})"
            ) from None
    row = conn.execute(_BAD_POINTS).fetchone()
    if row is None:
        return
    label, c_in, c_out, *values = row
    if label is None:
        raise UserError(f"{damaged}: point ({c_in}, {c_out}) belongs to no signature")
    where = f"signature {label} point ({_shown(c_in)}, {_shown(c_out)})"
    if not (_positive_int(c_in) and _positive_int(c_out)):
        raise UserError(f"{damaged}: {where} has channel counts that are not positive integers")
    raise UserError(f"{damaged}: {where} has {point_damage(*values) or 'a malformed value'}")


def check_format(meta: Mapping[str, Any], path: Path) -> None:
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path} has latency table format version {meta.get('format_version')!r}; this "
            f"lut-builder reads version {FORMAT_VERSION}"
        )


def create_or_join(
    path: Path,
    want: Mapping[str, Any],
    info: Mapping[str, Any],
    prepare: Callable[[sqlite3.Connection, Mapping[str, Any] | None], None] | None = None,
) -> sqlite3.Connection:
    """Create a table file with its schema and ``want`` as its meta, or join the existing
    one when its meta has the same ``want`` (another shard of the same build).

    Several processes may call this at once for one path: the first creates the schema
    inside a write transaction, the others wait for it and then compare.

    Args:
        path: the SQLite file.
        want: ``format_version``, ``fingerprint``, ``alignment`` and ``step``.
        info: extra facts stored in ``info`` by the process that creates the file.
        prepare: called inside the same transaction, after the schema exists or the
            meta matched, with the connection and the existing meta (None for a new
            file): it checks the rest and writes what the caller registers, so a check
            that fails leaves the file as it was.

    Returns:
        A connection to the file, in WAL mode.

    Raises:
        UserError: the file exists and is not a latency table, or is damaged;
            :class:`~lut_builder.errors.FingerprintMismatchError`: it was made for a
            different target (fingerprint, alignment or step); whatever ``prepare``
            raises.
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
                # A damaged meta says so, rather than looking like another target's.
                check_meta(existing, path)
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
            if prepare is not None:
                prepare(conn, existing)
        enable_wal(conn)
    except sqlite3.DatabaseError as exc:
        close_writer(conn)
        raise UserError(f"{path} is not a usable latency table: {exc}") from exc
    except BaseException:
        close_writer(conn)
        raise
    return conn
