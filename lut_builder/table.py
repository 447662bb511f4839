"""The latency table: one SQLite file holding T(signature, c_in, c_out) for one target.

Layout (format version :data:`FORMAT_VERSION`):

- ``meta(key, value)``: JSON values: ``format_version``, ``fingerprint`` (backend,
  precision, device, versions, ...), ``alignment`` (channel step of the target),
  ``step`` (grid step), ``complete``, ``overhead_ms`` and its calibration details.
- ``signatures(id, key, label, grid)``: one row per :class:`LayerSignature`; ``grid`` is
  the planned axes (JSON, see :class:`Grid`).
- ``plan(sig_id, c_in, c_out)``: every point the build means to measure.
- ``points(sig_id, c_in, c_out, median_ms, p10_ms, p90_ms, mean_ms, std_ms, n, ...)``:
  milliseconds, or for a table with a ``reference`` workload ratios to it (times
  ``reference.unit_ms`` gives milliseconds).

The file is in WAL mode and every measurement is its own transaction: a build killed at
any moment leaves an intact database holding every point measured so far, and several
processes can add points at once. ``synchronous=NORMAL``: safe against a killed
process; a power cut may lose the last commits but does not corrupt the file.

Lookups are exact on measured points. Between them, each channel count is first rounded
up to the target's alignment (a kernel processes whole channel tiles, so a width costs
what the next aligned width costs), then interpolated bilinearly between the nearest
grid values. Points a sparse grid did not measure are filled once per signature from
the measured ones (:func:`fill_surface`). A lookup outside the measured range is an
error, never an extrapolation.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .signatures import LayerSignature
from .timing import Timing

FORMAT_VERSION = 1
_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
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


class IncompleteTableError(UserError):
    """A table opened for lookups while points of its plan are still missing."""


class FingerprintMismatchError(UserError):
    """A table measured on another target than the one asked for."""


@dataclass(frozen=True)
class Grid:
    """The planned axes of one signature's measurements.

    Attributes:
        c_in, c_out: the fine axes: every channel count a pruned model can reach at the
            grid step (and the layers' full widths), ascending.
        coarse_in, coarse_out: subsets of the fine axes on which the full 2-D product is
            measured; equal to the fine axes for a full grid.
        lines_in: c_in values at which every c_out of the fine axis is measured.
        lines_out: c_out values at which every c_in of the fine axis is measured.
        diagonal: depthwise layers: only points with ``c_in == c_out`` exist.
    """

    c_in: tuple[int, ...]
    c_out: tuple[int, ...]
    coarse_in: tuple[int, ...] = ()
    coarse_out: tuple[int, ...] = ()
    lines_in: tuple[int, ...] = ()
    lines_out: tuple[int, ...] = ()
    diagonal: bool = False

    def __post_init__(self) -> None:
        for name in ("c_in", "c_out", "coarse_in", "coarse_out", "lines_in", "lines_out"):
            v = tuple(sorted({int(x) for x in getattr(self, name)}))
            object.__setattr__(self, name, v)
        if not self.c_in or not self.c_out or min(self.c_in + self.c_out) < 1:
            raise ValueError("grid axes must be non-empty positive channel counts")
        if not self.coarse_in:
            object.__setattr__(self, "coarse_in", self.c_in)
        if not self.coarse_out:
            object.__setattr__(self, "coarse_out", self.c_out)
        for sub, full in (
            (self.coarse_in, self.c_in),
            (self.coarse_out, self.c_out),
            (self.lines_in, self.c_in),
            (self.lines_out, self.c_out),
        ):
            if not set(sub) <= set(full):
                raise ValueError("coarse axes and lines must lie on the fine axes")
        if self.diagonal and self.c_in != self.c_out:
            raise ValueError("a diagonal (depthwise) grid has equal axes")

    @property
    def is_full(self) -> bool:
        """True when the whole product of the fine axes is measured."""
        return self.diagonal or (self.coarse_in == self.c_in and self.coarse_out == self.c_out)

    def points(self) -> list[tuple[int, int]]:
        """Every planned (c_in, c_out) point, sorted."""
        if self.diagonal:
            return [(c, c) for c in self.c_in]
        pts = {(a, b) for a in self.coarse_in for b in self.coarse_out}
        pts |= {(a, b) for a in self.lines_in for b in self.c_out}
        pts |= {(a, b) for a in self.c_in for b in self.lines_out}
        return sorted(pts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "c_in": list(self.c_in),
            "c_out": list(self.c_out),
            "coarse_in": list(self.coarse_in),
            "coarse_out": list(self.coarse_out),
            "lines_in": list(self.lines_in),
            "lines_out": list(self.lines_out),
            "diagonal": self.diagonal,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Grid:
        return cls(
            **{k: tuple(d[k]) for k in ("c_in", "c_out", "coarse_in", "coarse_out")},
            lines_in=tuple(d.get("lines_in", ())),
            lines_out=tuple(d.get("lines_out", ())),
            diagonal=bool(d.get("diagonal", False)),
        )


@dataclass(frozen=True)
class Point:
    """One measured point of a signature."""

    c_in: int
    c_out: int
    timing: Timing
    worker: str | None = None
    measured_at: float = 0.0


@dataclass
class _Surface:
    """A signature's latencies on its fine grid (measured or filled), for lookups."""

    grid: Grid
    c_in: Any  # np.ndarray of the fine c_in axis
    c_out: Any
    values: Any  # 2-D array [len(c_in), len(c_out)]; NaN where nothing is known
    measured: Any = field(default=None)  # bool array: True where measured


def fill_surface(grid: Grid, measured: Mapping[tuple[int, int], float]) -> tuple[Any, Any]:
    """Latency on every point of the fine grid from the points that were measured.

    Measured points are kept as they are. Others are filled by a separable model: a
    bilinear interpolation ``B`` over the coarse 2-D grid, corrected by the fine lines
    through the full widths: ``T(ci, co) = B(ci, co) * r_in(ci) * r_out(co)`` with
    ``r_in(ci) = T(ci, L_out) / B(ci, L_out)`` on the measured line ``c_out = L_out``
    (likewise ``r_out``). The correction carries the steps that a coarse grid skips
    (tile and cache boundaries along one axis) to the whole surface; on the lines it is
    exact by construction.

    Args:
        grid: the planned axes.
        measured: ``{(c_in, c_out): median_ms}``.

    Returns:
        ``(values, is_measured)``: arrays of shape ``(len(c_in), len(c_out))``; values are
        NaN where neither measured nor fillable (a plan still missing points).
    """
    import numpy as np

    ci, co = np.array(grid.c_in), np.array(grid.c_out)
    values = np.full((len(ci), len(co)), np.nan)
    is_meas = np.zeros_like(values, dtype=bool)
    idx_in = {c: i for i, c in enumerate(grid.c_in)}
    idx_out = {c: j for j, c in enumerate(grid.c_out)}
    for (a, b), v in measured.items():
        if a in idx_in and b in idx_out:
            values[idx_in[a], idx_out[b]] = v
            is_meas[idx_in[a], idx_out[b]] = True
    if grid.diagonal or is_meas.all():
        return values, is_meas
    # Bilinear over the coarse grid (only where its four corners are measured).
    kin, kout = np.array(grid.coarse_in), np.array(grid.coarse_out)
    coarse = np.array(
        [[measured.get((a, b), np.nan) for b in grid.coarse_out] for a in grid.coarse_in]
    )
    bil = _bilinear(kin, kout, coarse, ci, co)
    model = bil.copy()
    if grid.lines_out:
        line = grid.lines_out[-1]
        j = idx_out[line]
        ratio = values[:, j] / bil[:, j]
        model = model * np.where(np.isfinite(ratio), ratio, np.nan)[:, None]
    if grid.lines_in:
        line = grid.lines_in[-1]
        i = idx_in[line]
        ratio = values[i, :] / bil[i, :]
        model = model * np.where(np.isfinite(ratio), ratio, np.nan)[None, :]
    filled = np.where(is_meas, values, model)
    return filled, is_meas


def _bilinear(kx: Any, ky: Any, vals: Any, x: Any, y: Any) -> Any:
    """Bilinear interpolation of ``vals`` on the rectilinear grid ``kx`` x ``ky`` at all
    points of ``x`` x ``y`` (inside the grid's range); axes of length 1 are constant."""
    import numpy as np

    def axis(k: Any, q: Any) -> tuple[Any, Any, Any]:
        if len(k) == 1:
            z = np.zeros(len(q), dtype=int)
            return z, z, np.zeros(len(q))
        hi = np.clip(np.searchsorted(k, q, side="left"), 1, len(k) - 1)
        lo = hi - 1
        w = (q - k[lo]) / (k[hi] - k[lo])
        return lo, hi, np.clip(w, 0.0, 1.0)

    xl, xh, wx = axis(kx, x)
    yl, yh, wy = axis(ky, y)
    wx, wy = wx[:, None], wy[None, :]
    return (
        vals[xl][:, yl] * (1 - wx) * (1 - wy)
        + vals[xh][:, yl] * wx * (1 - wy)
        + vals[xl][:, yh] * (1 - wx) * wy
        + vals[xh][:, yh] * wx * wy
    )


def _axis_positions(axis: Any, alignment: int, q: Any, what: str, sig: LayerSignature) -> tuple:
    """Map channel counts to (lo index, hi index, weight) on a fine axis.

    A count on the axis maps to itself. Otherwise it is rounded up to the alignment;
    past the largest grid value (a full width that is not a multiple of the alignment)
    it takes the smallest grid value at or above it. Between grid values it is
    interpolated linearly.

    Raises:
        UserError: a count outside the measured range.
    """
    import numpy as np

    q = np.asarray(q, dtype=np.int64)
    if q.size and (q.min() < 1 or q.max() > axis[-1]):
        bad = int(q.min()) if q.min() < 1 else int(q.max())
        raise UserError(
            f"{what}={bad} is outside the measured range {int(axis[0])}..{int(axis[-1])} "
            f"of signature {sig.short()}"
        )
    on_axis = np.isin(q, axis)
    r = np.where(on_axis, q, -(-q // alignment) * alignment)
    beyond = r > axis[-1]
    r = np.where(beyond, axis[np.searchsorted(axis, q, side="left").clip(0, len(axis) - 1)], r)
    if q.size and r.min() < axis[0]:
        bad = int(q.flat[np.argmin(r)])
        raise UserError(
            f"{what}={bad} (rounded up to the alignment {alignment}: {int(r.min())}) is below "
            f"the measured range {int(axis[0])}..{int(axis[-1])} of signature {sig.short()}"
        )
    hi = np.searchsorted(axis, r, side="left").clip(0, len(axis) - 1)
    exact = axis[hi] == r
    lo = np.where(exact, hi, hi - 1)
    span = np.where(exact, 1, axis[hi] - axis[lo])
    w = np.where(exact, 1.0, (r - axis[lo]) / span)
    return lo, hi, w


class LatencyTable:
    """A latency table in one SQLite file. Create with :meth:`create`, read with :meth:`open`.

    Attributes:
        path: the file.
        fingerprint: what was measured on (backend, precision, device, versions, batch...).
        alignment: the target's channel step (lookups round up to it).
        step: the grid step the build used.
        overhead_ms: the network overhead term (see :func:`calibrate_overhead`), or None.
        scale: the factor on the layer sum (1 unless calibrated as an affine map).
    """

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._surfaces: dict[LayerSignature, _Surface] = {}
        self._sig_ids: dict[LayerSignature, int] = {}
        meta = self._meta()
        self.format_version = int(meta["format_version"])
        self.fingerprint: dict[str, Any] = meta.get("fingerprint", {})
        self.alignment = int(meta.get("alignment", 1))
        self.step = int(meta.get("step", self.alignment))

    # -- opening -----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        fingerprint: Mapping[str, Any],
        alignment: int,
        *,
        step: int | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> LatencyTable:
        """Create a table file, or join an existing one made for the same target.

        Several processes may call this at once for one path (sharded builds): the
        first creates the schema, the others find it and check that their fingerprint
        matches.

        Args:
            path: the SQLite file.
            fingerprint: the backend's fingerprint (plus batch etc.), stored as JSON.
            alignment: the target's channel step.
            step: the grid step (defaults to ``alignment``).
            info: extra JSON-able facts to store (model spec, input shape, strategy).

        Returns:
            The table, open for reading and writing.

        Raises:
            UserError: the file exists and is not a latency table, or was made for a
                different target (fingerprint, alignment or step).
        """
        path = Path(path)
        if path.exists() and path.stat().st_size > 0:
            _check_sqlite_header(path)
        conn = _connect(path, create=True)
        fp = json.loads(json.dumps(dict(fingerprint)))
        want = {
            "format_version": FORMAT_VERSION,
            "fingerprint": fp,
            "alignment": int(alignment),
            "step": int(step or alignment),
        }
        try:
            with _transaction(conn):
                existing = _read_meta(conn, missing_ok=True, path=path)
                if existing is None:
                    # One statement at a time: executescript would commit the transaction.
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            conn.execute(stmt)
                    rows = {
                        **want,
                        "complete": False,
                        "created_at": time.time(),
                        "info": dict(info or {}),
                    }
                    conn.executemany(
                        "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                        [(k, json.dumps(v)) for k, v in rows.items()],
                    )
                else:
                    _check_format(existing, path)
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
            _enable_wal(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise UserError(f"{path} is not a usable latency table: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return cls(path, conn)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        expect: Mapping[str, Any] | None = None,
        force: bool = False,
        *,
        writable: bool = False,
    ) -> LatencyTable:
        """Open a table for lookups.

        Args:
            path: the SQLite file.
            expect: fingerprint entries the table must have (nested dicts are compared
                key by key; keys not in ``expect`` are not compared). None: no check.
            force: use the table even if its fingerprint does not match ``expect`` or
                it is incomplete.
            writable: open for adding points and overhead (the builder uses this).

        Returns:
            The table.

        Raises:
            UserError: missing file; not SQLite; SQLite without this schema; another
                format version; :class:`FingerprintMismatchError`;
                :class:`IncompleteTableError` (unless ``force``).
        """
        path = Path(path)
        if not path.is_file():
            raise UserError(f"latency table {str(path)!r} does not exist")
        _check_sqlite_header(path)
        conn = _connect(path, create=False)
        try:
            table = cls(path, conn)
            if writable:
                _enable_wal(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise UserError(f"{path} is not a latency table: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        try:
            if expect is not None and not force:
                diffs = fingerprint_mismatches(table.fingerprint, expect)
                if diffs:
                    raise FingerprintMismatchError(
                        f"latency table {path} was measured for another target: "
                        + "; ".join(diffs)
                        + " (force it to use it anyway)"
                    )
            if not force and not writable and not table.complete:
                missing = table.count_missing()
                raise IncompleteTableError(
                    f"latency table {path} is incomplete ({missing} planned points not "
                    "measured yet): finish the build (run it again to resume) or force it"
                )
        except BaseException:
            table.close()
            raise
        return table

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    def __enter__(self) -> LatencyTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- metadata ------------------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        meta = _read_meta(self._conn, missing_ok=False, path=self.path)
        assert meta is not None
        _check_format(meta, self.path)
        return meta

    def _set_meta(self, **items: Any) -> None:
        with _transaction(self._conn):
            self._conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in items.items()],
            )

    @property
    def complete(self) -> bool:
        """True once every planned point has been measured and the build said so."""
        return bool(self._meta().get("complete", False))

    @property
    def info(self) -> dict[str, Any]:
        """Extra facts stored at creation (model, input shape, strategy...)."""
        return dict(self._meta().get("info", {}))

    @property
    def overhead_ms(self) -> float | None:
        """The calibrated whole-network overhead term in milliseconds, or None."""
        v = self._meta().get("overhead_ms")
        return None if v is None else float(v)

    @property
    def scale(self) -> float:
        """The calibrated factor on the layers' sum (1.0 when not calibrated or additive).

        The network latency model is ``scale * sum(layers) + overhead_ms``.
        """
        v = self._meta().get("scale")
        return 1.0 if v is None else float(v)

    @property
    def overhead(self) -> dict[str, Any] | None:
        """Details of the overhead calibration (what was measured), or None."""
        return self._meta().get("overhead")

    @property
    def reference(self) -> dict[str, Any] | None:
        """The reference workload that defines this table's unit, or None.

        ``{"kind": ..., "gate": ..., "unit_ms": ...}``: every point was measured as a
        ratio to the reference runs around it (counting only runs that passed the gate;
        see :func:`lut_builder.timing.time_relative`) and is stored as that ratio;
        milliseconds are ratios times ``unit_ms``, the fastest reference run seen while
        the table was filled (a stable figure: the minimum of thousands of runs).
        End-to-end measurements compared with the table are normalised the same way
        (:func:`measure_end_to_end`).
        """
        return self._meta().get("reference")

    @property
    def unit_ms(self) -> float:
        """Milliseconds per stored unit: the reference's ``unit_ms``, else 1."""
        ref = self.reference
        return float(ref["unit_ms"]) if ref else 1.0

    def adopt_reference(self, kind: str, unit_ms: float, gate: float | None = None) -> float:
        """Use reference workload ``kind`` for this table, and offer a unit.

        The first process sets the reference; every later call may only lower its unit
        (a faster reference run seen), and only until the table is complete. Stored
        points are ratios, so lowering the unit rescales all of them consistently.

        Returns:
            The table's unit in milliseconds after the call.

        Raises:
            UserError: the table uses another reference workload.
        """
        with _transaction(self._conn):
            meta = _read_meta(self._conn, missing_ok=False, path=self.path) or {}
            ref = meta.get("reference")
            if ref is None:
                ref = {"kind": kind, "gate": gate, "unit_ms": float(unit_ms)}
            elif ref["kind"] != kind:
                raise UserError(
                    f"{self.path} was measured against reference {ref['kind']!r}, not {kind!r}"
                )
            elif not meta.get("complete") and unit_ms < ref["unit_ms"]:
                ref["unit_ms"] = float(unit_ms)
            self._conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('reference', ?)", (json.dumps(ref),)
            )
        self._surfaces.clear()
        return float(ref["unit_ms"])

    def set_overhead(
        self,
        overhead_ms: float,
        details: Mapping[str, Any] | None = None,
        *,
        scale: float = 1.0,
    ) -> None:
        """Store the network latency model's terms (see :func:`calibrate_overhead`)."""
        if not (math.isfinite(overhead_ms) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"bad calibration: overhead {overhead_ms!r} ms, scale {scale!r}")
        self._set_meta(
            overhead_ms=float(overhead_ms), scale=float(scale), overhead=dict(details or {})
        )

    def set_info(self, **items: Any) -> None:
        """Merge facts into ``info``."""
        with _transaction(self._conn):
            info = _read_meta(self._conn, missing_ok=False, path=self.path).get("info", {})
            info.update(items)
            self._conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('info', ?)", (json.dumps(info),)
            )

    def append_info(self, key: str, entry: Any, *, keep: int = 50) -> None:
        """Append ``entry`` to the list ``info[key]`` (atomically; the last ``keep`` kept)."""
        with _transaction(self._conn):
            info = _read_meta(self._conn, missing_ok=False, path=self.path).get("info", {})
            info[key] = (list(info.get(key, [])) + [entry])[-keep:]
            self._conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('info', ?)", (json.dumps(info),)
            )

    # -- signatures and plan --------------------------------------------------------------

    def add_signature(self, sig: LayerSignature, grid: Grid) -> None:
        """Add a signature and plan its grid's points (idempotent for the same grid).

        Raises:
            UserError: the signature is already planned with a different grid.
        """
        key = sig.key()
        with _transaction(self._conn):
            row = self._conn.execute(
                "SELECT id, grid FROM signatures WHERE key = ?", (key,)
            ).fetchone()
            if row is not None:
                if Grid.from_dict(json.loads(row[1])) != grid:
                    raise UserError(
                        f"{self.path} already plans signature {sig.short()} on another grid "
                        "(different model widths or strategy); use another --out"
                    )
                return
            cur = self._conn.execute(
                "INSERT INTO signatures (key, label, grid) VALUES (?, ?, ?)",
                (key, sig.short(), json.dumps(grid.to_dict())),
            )
            sid = cur.lastrowid
            self._conn.executemany(
                "INSERT OR IGNORE INTO plan VALUES (?, ?, ?)",
                [(sid, a, b) for a, b in grid.points()],
            )
            # A table that gains planned points is no longer complete.
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('complete', 'false')")

    def signatures(self) -> list[LayerSignature]:
        """Signatures in the table, in the order they were added."""
        rows = self._conn.execute("SELECT key FROM signatures ORDER BY id").fetchall()
        return [LayerSignature.from_key(r[0]) for r in rows]

    def grid(self, sig: LayerSignature) -> Grid:
        """The planned grid of a signature.

        Raises:
            UserError: the signature is not in the table.
        """
        row = self._conn.execute(
            "SELECT grid FROM signatures WHERE key = ?", (sig.key(),)
        ).fetchone()
        if row is None:
            raise UserError(self._unknown_signature(sig))
        return Grid.from_dict(json.loads(row[0]))

    def _unknown_signature(self, sig: LayerSignature) -> str:
        return (
            f"signature {sig.short()} is not in latency table {self.path} "
            f"({len(self.signatures())} signatures; was it built for this model and input shape?)"
        )

    def _sig_id(self, sig: LayerSignature) -> int:
        if sig not in self._sig_ids:
            row = self._conn.execute(
                "SELECT id FROM signatures WHERE key = ?", (sig.key(),)
            ).fetchone()
            if row is None:
                raise UserError(self._unknown_signature(sig))
            self._sig_ids[sig] = int(row[0])
        return self._sig_ids[sig]

    def missing(self) -> list[tuple[LayerSignature, int, int]]:
        """Planned points not measured yet, in plan order (signature, c_in, c_out)."""
        rows = self._conn.execute(
            "SELECT s.key, p.c_in, p.c_out FROM plan p JOIN signatures s ON s.id = p.sig_id "
            "WHERE NOT EXISTS (SELECT 1 FROM points q WHERE q.sig_id = p.sig_id "
            "AND q.c_in = p.c_in AND q.c_out = p.c_out) ORDER BY p.sig_id, p.c_in, p.c_out"
        ).fetchall()
        cache: dict[str, LayerSignature] = {}
        return [(cache.setdefault(k, LayerSignature.from_key(k)), a, b) for k, a, b in rows]

    def planned(self) -> list[tuple[LayerSignature, int, int]]:
        """All planned points in plan order (signature, c_in, c_out)."""
        rows = self._conn.execute(
            "SELECT s.key, p.c_in, p.c_out FROM plan p JOIN signatures s ON s.id = p.sig_id "
            "ORDER BY p.sig_id, p.c_in, p.c_out"
        ).fetchall()
        cache: dict[str, LayerSignature] = {}
        return [(cache.setdefault(k, LayerSignature.from_key(k)), a, b) for k, a, b in rows]

    def count_missing(self) -> int:
        """How many planned points are not measured yet."""
        return int(
            self._conn.execute(
                "SELECT COUNT(*) FROM plan p WHERE NOT EXISTS (SELECT 1 FROM points q WHERE "
                "q.sig_id = p.sig_id AND q.c_in = p.c_in AND q.c_out = p.c_out)"
            ).fetchone()[0]
        )

    def count_points(self) -> int:
        """How many points are measured."""
        return int(self._conn.execute("SELECT COUNT(*) FROM points").fetchone()[0])

    def mark_complete(self) -> bool:
        """Mark the table complete if no planned point is missing.

        Returns:
            True if this call marked it complete (False if points are missing or it
            already was complete): among processes sharing a table exactly one sees True.
        """
        with _transaction(self._conn):
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'complete'").fetchone()
            if (row is not None and json.loads(row[0])) or self.count_missing():
                return False
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('complete', 'true')")
        return True

    # -- points ----------------------------------------------------------------------------

    def add_point(
        self,
        sig: LayerSignature,
        c_in: int,
        c_out: int,
        timing: Timing,
        *,
        worker: str | None = None,
        unit_ms: float | None = None,
    ) -> bool:
        """Store one measurement, committed at once. A point already stored (by another
        process of a sharded build) is kept as it is.

        Args:
            sig, c_in, c_out: the point.
            timing: its timing in milliseconds.
            worker: who measured it.
            unit_ms: for a table with a reference workload: the reference time the
                backend converted its ratios with (``backend.reference_ms``); the point
                is stored as ``timing / unit_ms``.

        Returns:
            True if this call stored the point.

        Raises:
            ValueError: a table with a reference workload and no ``unit_ms``.
        """
        sid = self._sig_id(sig)
        scale = 1.0
        if self.reference is not None:
            if not unit_ms:
                raise ValueError("this table stores ratios to its reference: give unit_ms")
            scale = 1.0 / unit_ms
        with _transaction(self._conn):
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO points VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sid,
                    int(c_in),
                    int(c_out),
                    timing.median_ms * scale,
                    timing.p10_ms * scale,
                    timing.p90_ms * scale,
                    timing.mean_ms * scale,
                    timing.std_ms * scale,
                    timing.n,
                    worker,
                    time.time(),
                ),
            )
        self._surfaces.pop(sig, None)
        return cur.rowcount == 1

    def points(self, sig: LayerSignature) -> list[Point]:
        """Measured points of a signature, sorted by (c_in, c_out).

        Raises:
            UserError: the signature is not in the table.
        """
        rows = self._conn.execute(
            "SELECT c_in, c_out, median_ms, p10_ms, p90_ms, mean_ms, std_ms, n, worker, "
            "measured_at FROM points WHERE sig_id = ? ORDER BY c_in, c_out",
            (self._sig_id(sig),),
        ).fetchall()
        u = self.unit_ms
        return [Point(r[0], r[1], Timing(*(v * u for v in r[2:7]), r[7]), r[8], r[9]) for r in rows]

    # -- lookups ---------------------------------------------------------------------------

    def _surface(self, sig: LayerSignature) -> _Surface:
        surf = self._surfaces.get(sig)
        if surf is None:
            import numpy as np

            grid = self.grid(sig)
            measured = {(p.c_in, p.c_out): p.timing.median_ms for p in self.points(sig)}
            values, is_meas = fill_surface(grid, measured)
            surf = _Surface(grid, np.array(grid.c_in), np.array(grid.c_out), values, is_meas)
            self._surfaces[sig] = surf
        return surf

    def lookup(self, sig: LayerSignature, c_in: int, c_out: int) -> float:
        """Latency in milliseconds of a layer of ``sig`` with ``c_in`` -> ``c_out`` channels.

        Raises:
            UserError: unknown signature, counts outside the measured range, or a point
                an incomplete table cannot answer yet.
            ValueError: counts the signature cannot have (depthwise with c_in != c_out).
        """
        return float(self.lookup_grid(sig, c_in, c_out))

    def lookup_grid(self, sig: LayerSignature, c_in: Any, c_out: Any) -> Any:
        """Vectorised :meth:`lookup`: ``c_in`` and ``c_out`` broadcast against each other.

        Returns:
            A float array of the broadcast shape (a 0-d array for scalars).
        """
        import numpy as np

        ci, co = np.broadcast_arrays(np.asarray(c_in, dtype=np.int64), np.asarray(c_out))
        co = co.astype(np.int64)
        surf = self._surface(sig)
        a = self.alignment
        if surf.grid.diagonal:
            if np.any(ci != co):
                raise ValueError(f"a depthwise layer ({sig.short()}) has c_in == c_out")
            lo, hi, w = _axis_positions(surf.c_in, a, ci.ravel(), "channels", sig)
            diag = np.diagonal(surf.values)
            out = diag[lo] * (1 - w) + diag[hi] * w
        else:
            il, ih, wi = _axis_positions(surf.c_in, a, ci.ravel(), "c_in", sig)
            jl, jh, wj = _axis_positions(surf.c_out, a, co.ravel(), "c_out", sig)
            v = surf.values
            out = (
                v[il, jl] * (1 - wi) * (1 - wj)
                + v[ih, jl] * wi * (1 - wj)
                + v[il, jh] * (1 - wi) * wj
                + v[ih, jh] * wi * wj
            )
        if np.isnan(out).any():
            k = int(np.flatnonzero(np.isnan(out))[0])
            raise IncompleteTableError(
                f"latency table {self.path} has no measurement near c_in={int(ci.ravel()[k])}, "
                f"c_out={int(co.ravel()[k])} of signature {sig.short()} yet (incomplete build)"
            )
        return out.reshape(ci.shape)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description: fingerprint, status and per-signature dispersion."""
        import numpy as np

        sigs = []
        for sig in self.signatures():
            pts = self.points(sig)
            grid = self.grid(sig)
            spreads = [p.timing.spread for p in pts]
            sigs.append(
                {
                    "signature": sig.to_dict(),
                    "label": sig.short(),
                    "grid": grid.to_dict(),
                    "planned": len(grid.points()),
                    "measured": len(pts),
                    "min_ms": min((p.timing.median_ms for p in pts), default=None),
                    "max_ms": max((p.timing.median_ms for p in pts), default=None),
                    "median_spread": float(np.median(spreads)) if spreads else None,
                    "max_spread": float(np.max(spreads)) if spreads else None,
                }
            )
        meta = self._meta()
        return {
            "path": str(self.path),
            "format_version": self.format_version,
            "fingerprint": self.fingerprint,
            "alignment": self.alignment,
            "step": self.step,
            "complete": bool(meta.get("complete", False)),
            "points": self.count_points(),
            "missing": self.count_missing(),
            "overhead_ms": self.overhead_ms,
            "scale": self.scale,
            "overhead": self.overhead,
            "reference": self.reference,
            "info": meta.get("info", {}),
            "created_at": meta.get("created_at"),
            "signatures": sigs,
        }


# -- the network latency model --------------------------------------------------------------


def predict_latency(
    table: LatencyTable,
    layers: Iterable[tuple[LayerSignature, int, int]],
    *,
    overhead: bool = True,
) -> float:
    """Predicted network latency: ``scale * sum(layer lookups) + overhead_ms``.

    Args:
        table: the latency table.
        layers: ``(signature, c_in, c_out)`` of every conv/linear layer of the network.
        overhead: apply the table's calibrated terms (scale 1 and overhead 0 if it has
            none); False gives the plain sum of the layers.

    Returns:
        Milliseconds.

    Raises:
        UserError: as :meth:`LatencyTable.lookup`.
    """
    total = math.fsum(table.lookup(sig, ci, co) for sig, ci, co in layers)
    if overhead:
        total = table.scale * total + (table.overhead_ms or 0.0)
    return total


@dataclass(frozen=True)
class Calibration:
    """The network latency model's terms: ``measured ~ scale * layers + overhead_ms``."""

    overhead_ms: float
    scale: float
    kind: str  # "additive" (scale 1) or "affine"
    note: str = ""

    def predict(self, layers_ms: float) -> float:
        return self.scale * layers_ms + self.overhead_ms


def fit_calibration(
    points: Sequence[tuple[float, float]], *, min_spread: float = 0.15
) -> Calibration:
    """Fit the network latency model to whole-network measurements.

    ``points`` are ``(sum of the layers' table latencies, measured latency)``, the
    unpruned model first. With one point (or points too close together to tell a slope
    from noise: layer sums spanning less than ``min_spread`` of the largest) the model is
    additive: scale 1 and ``overhead = measured - layers`` of the first point.

    With narrower versions of the model measured too, the model is affine, fitted by
    least squares on relative error. Why: inside a network, a narrower model runs faster
    than its layers timed one by one predict, and more so the narrower it is (smaller
    weights and activations stay in cache; the ops between layers shrink with the
    channels). A constant overhead misses that by up to 20% on a CPU; a scale on the layer
    sum captures it. A fitted scale outside [0.5, 2] is not trusted (the additive model is
    used and the reason kept in ``note``).

    Raises:
        ValueError: no points, or a non-positive or non-finite value.
    """
    if not points:
        raise ValueError("no whole-network measurement to calibrate with")
    for lay, meas in points:
        if not (math.isfinite(lay) and math.isfinite(meas) and lay > 0 and meas > 0):
            raise ValueError(f"bad calibration point: layers {lay!r} ms, measured {meas!r} ms")
    lay0, meas0 = points[0]
    sums = [p[0] for p in points]
    if len(points) < 2:
        return Calibration(meas0 - lay0, 1.0, "additive")
    if max(sums) - min(sums) < min_spread * max(sums):
        note = "calibration widths too close together for a slope"
        return Calibration(meas0 - lay0, 1.0, "additive", note)
    # Weighted least squares: minimise sum(((a + b*L - M) / M)^2).
    import numpy as np

    lay = np.array(sums, dtype=float)
    meas = np.array([p[1] for p in points], dtype=float)
    a_mat = np.stack([np.ones_like(lay), lay], axis=1) / meas[:, None]
    (a, b), *_ = np.linalg.lstsq(a_mat, np.ones_like(meas), rcond=None)
    if not (0.5 <= b <= 2.0) or not math.isfinite(a):
        note = f"fitted scale {b:.3f} is implausible; additive overhead used"
        return Calibration(meas0 - lay0, 1.0, "additive", note)
    return Calibration(float(a), float(b), "affine")


def calibrate_overhead(
    table: LatencyTable,
    runner_or_backend: Any,
    model: Any,
    example_input: Any,
    *,
    variants: Sequence[Any] = (),
    warmup: int = 20,
    runs: int = 100,
    min_time_s: float = 2.0,
    store: bool = True,
) -> float:
    """Calibrate the network latency model on whole-network measurements and store it.

    The per-layer table misses what happens between and around the layers: the ops
    between them (pooling, residual adds that are not fused, reshapes), input and output
    layout changes, the runtime's per-inference cost, and that layers inside a network
    run warmer than alone. The unpruned ``model`` is measured end to end; with
    ``variants`` (narrower versions of it, e.g. every group at 3/4 and 1/2 of its
    channels) all are measured interleaved and an affine map ``scale * layers + overhead``
    is fitted (:func:`fit_calibration`), else the overhead is ``measured - layers``.

    Args:
        table: the table, opened writable when ``store`` is True.
        runner_or_backend: a backend name (``"onnxruntime"``, ``"torch"``,
            ``"tensorrt"``), a callable making a :class:`~lut_builder.runners.Runner`
            for a model (with the backend options the table was built with), or, without
            ``variants``, a runner for ``model``.
        model: the unpruned ``nn.Module``.
        example_input: its input.
        variants: narrower versions of ``model`` (same signatures, fewer channels).
        warmup, runs, min_time_s: the end-to-end timing loop.
        store: write the result into the table.

    Returns:
        The overhead in milliseconds (negative when the layers measured alone cost more
        than inside the network); the scale is in the table (``table.scale``).

    Raises:
        UserError: a layer of a model is not in the table, or a runner fails.
    """
    from .runners import Runner, make_runner
    from .signatures import model_layers

    def layer_sum(m: Any) -> tuple[float, int]:
        layers = model_layers(m, example_input)
        items = [(i.signature, i.c_in, i.c_out) for i in layers.values()]
        return predict_latency(table, items, overhead=False), len(layers)

    sums = [layer_sum(m) for m in (model, *variants)]
    if isinstance(runner_or_backend, Runner):
        if variants:
            raise ValueError("calibrating with variants needs a backend name or a runner factory")
        make = None
    elif isinstance(runner_or_backend, str):
        name = runner_or_backend

        def make(m: Any) -> Runner:
            return make_runner(name, m, example_input)
    else:
        make = runner_or_backend
    owned: list[Runner] = []  # the runners made here, closed here
    try:
        if make is None:
            runners = [runner_or_backend]
        else:
            runners = owned
            for m in (model, *variants):
                owned.append(make(m))
        timings = measure_end_to_end(
            table, runners, warmup=warmup, runs=runs, min_time_s=min_time_s
        )
    finally:
        for r in owned:
            r.close()
    runner = runners[0]
    points = [(s, t.median_ms) for (s, _), t in zip(sums, timings)]
    cal = fit_calibration(points)
    if store:
        table.set_overhead(
            cal.overhead_ms,
            {
                "model": cal.kind,
                "note": cal.note,
                "measured_ms": timings[0].median_ms,
                "layers_ms": sums[0][0],
                "layers": sums[0][1],
                "points": [
                    {"layers_ms": lay, "measured_ms": ms, "predicted_ms": cal.predict(lay)}
                    for lay, ms in points
                ],
                "timing": timings[0].to_dict(),
                "runner": runner.name,
                "clock": runner.clock,
                "normalized": table.reference is not None,
                "calibrated_at": time.time(),
            },
            scale=cal.scale,
        )
    return cal.overhead_ms


def measure_end_to_end(
    table: LatencyTable,
    runners: list[Any],
    *,
    warmup: int = 10,
    runs: int = 100,
    min_time_s: float | None = 2.0,
) -> list[Timing]:
    """End-to-end latency of whole models in the table's unit, interleaved round-robin.

    Each model is run once untimed right before each timed run: several models taking
    turns would otherwise evict each other's weights from the caches, and be timed
    colder than a deployed model that runs alone (on this 2 MB-L2 CPU that made an
    interleaved ResNet-56 about 10% slower than the same model run on its own).

    When the table was measured against a reference workload, every run is timed against
    reference runs around it, gated like the table's points, and scaled by the table's
    unit (so a
    prediction from the table and a measurement compare like for like on a machine whose
    speed changes); otherwise plain interleaved timings.

    Args:
        table: the latency table (its ``reference``, if any, is used).
        runners: :class:`~lut_builder.runners.Runner` objects on one device.
        warmup, runs, min_time_s: the timing loop (rounds).

    Returns:
        One :class:`Timing` per runner (milliseconds).
    """
    from .timing import time_interleaved, time_relative

    clock = runners[0].clock
    sync = runners[0].sync
    loop = {"warmup": warmup, "rounds": runs, "min_time_s": min_time_s, "clock": clock}
    ref = table.reference
    if ref is None:
        samples = time_interleaved(runners, sync=sync, warm=True, **loop)
        return [Timing.from_samples(s) for s in samples]
    from .backends import make_reference

    rel = time_relative(
        runners,
        make_reference(ref["kind"]),
        sync=sync,
        gate=ref.get("gate"),
        reference_floor_ms=ref["unit_ms"],
        warm=True,
        **loop,
    )
    unit = ref["unit_ms"]
    return [Timing.from_samples([r * unit for r in rel.accepted(i)]) for i in range(len(runners))]


def fingerprint_mismatches(stored: Mapping[str, Any], expect: Mapping[str, Any]) -> list[str]:
    """Entries of ``expect`` that ``stored`` does not have, as readable strings.

    Nested dicts are compared key by key; only keys present in ``expect`` count.
    """
    out = []
    for k, want in expect.items():
        have = stored.get(k)
        if isinstance(want, Mapping) and isinstance(have, Mapping):
            out += [f"{k}.{d}" for d in fingerprint_mismatches(have, want)]
        elif have != want:
            out.append(f"{k}: table has {have!r}, expected {want!r}")
    return out


# -- SQLite plumbing ------------------------------------------------------------------------


def _check_sqlite_header(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from exc
    if head != _SQLITE_MAGIC:
        raise UserError(f"{path} is not a latency table (not an SQLite database)")


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
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


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch a (verified) table to WAL mode; persistent, so done once per file."""
    _retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
    conn.execute("PRAGMA synchronous = NORMAL")


def _retry(fn: Any, attempts: int = 50) -> Any:
    """Run ``fn``, retrying while another process holds the database locked."""
    for i in range(attempts):
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or i == attempts - 1:
                raise
            time.sleep(0.05 * (i + 1))
    return None


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error), retried while busy."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        _retry(lambda: self.conn.execute("BEGIN IMMEDIATE"))
        return self.conn

    def __exit__(self, exc_type: Any, *rest: object) -> None:
        if exc_type is None:
            _retry(lambda: self.conn.execute("COMMIT"))
        else:
            self.conn.execute("ROLLBACK")


def _read_meta(
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


def _check_format(meta: Mapping[str, Any], path: Path) -> None:
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path} has latency table format version {meta.get('format_version')!r}; this "
            f"lut-builder reads version {FORMAT_VERSION}"
        )
