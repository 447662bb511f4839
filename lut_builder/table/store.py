"""The latency table: one SQLite file holding T(signature, c_in, c_out) for one target.

:class:`LatencyTable` creates, joins and opens table files (checking their format and
the target's fingerprint), plans signatures' grids, stores measured points and answers
lookups; the file layout and its SQLite plumbing are in :mod:`lut_builder.table.db`, the
grid and the interpolation in :mod:`lut_builder.table.grid`. Points a sparse grid did
not measure are filled once per signature from the measured ones
(:func:`~lut_builder.table.grid.fill`).

Why this module is longer than 500 lines: it is one class, and every method of it works
on the same connection and the same file layout (what is planned, what is measured,
what the meta table says); split across modules, each part would have to know the
others' SQL.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FingerprintMismatchError, IncompleteTableError, UserError
from ..fileio import input_file
from ..signatures import LayerSignature
from ..timing import Timing
from .db import (
    FORMAT_VERSION,
    TIMING_COLUMNS,
    check_meta,
    check_sqlite_header,
    check_values,
    close_writer,
    connect,
    connect_readonly,
    create_or_join,
    enable_wal,
    point_damage,
    read_meta,
    transaction,
)
from .grid import Grid, Surface, fill, interpolate


@dataclass(frozen=True)
class Point:
    """One measured point of a signature."""

    c_in: int
    c_out: int
    timing: Timing
    worker: str | None = None
    measured_at: float = 0.0


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

    def __init__(self, path: Path, conn: sqlite3.Connection, *, writable: bool = True) -> None:
        self.path = path
        self._conn = conn
        self._writable = writable
        self._surfaces: dict[LayerSignature, Surface] = {}
        self._lines_only = False
        self._sig_ids: dict[LayerSignature, int] = {}
        meta = self._meta()
        self.format_version = int(meta["format_version"])
        self.fingerprint: dict[str, Any] = meta["fingerprint"]
        self.alignment = int(meta["alignment"])
        self.step = int(meta["step"])

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
        plan: Mapping[LayerSignature, Grid] | None = None,
        reference_kind: str | None = None,
    ) -> LatencyTable:
        """Create a table file, or join an existing one made for the same target.

        Several processes may call this at once for one path (sharded builds): the
        first creates the schema (and registers ``plan``), the others find it and check
        that their fingerprint and plan match. Everything is checked, and the plan
        registered, in one transaction: a refusal leaves an existing file as it was.

        Args:
            path: the SQLite file.
            fingerprint: the backend's fingerprint (plus batch etc.), stored as JSON.
            alignment: the target's channel step.
            step: the grid step (defaults to ``alignment``).
            info: extra JSON-able facts to store (model spec, input shape, strategy).
            plan: every signature's grid. A table without a plan gets this one; a table
                with one must have exactly this one (same signatures, same grids). None:
                no plan check (add signatures with :meth:`add_signature`).
            reference_kind: the backend's reference workload; an existing table
                measured against another one is refused.

        Returns:
            The table, open for reading and writing.

        Raises:
            UserError: the file exists and is not a latency table, is damaged, was
                made for a different target (fingerprint, alignment or step, reference
                workload) or holds another plan.
        """
        path = Path(path)
        want = {
            "format_version": FORMAT_VERSION,
            "fingerprint": json.loads(json.dumps(dict(fingerprint))),
            "alignment": int(alignment),
            "step": int(step or alignment),
        }

        def prepare(conn: sqlite3.Connection, existing: Mapping[str, Any] | None) -> None:
            if existing is not None:
                check_values(conn, path)
                ref = existing.get("reference")
                if ref is not None and reference_kind is not None and ref["kind"] != reference_kind:
                    raise UserError(
                        f"{path} was measured against reference {ref['kind']!r}, not "
                        f"{reference_kind!r}; use another --out or delete it"
                    )
            if plan is not None:
                register_plan(conn, path, plan)

        conn = create_or_join(path, want, info or {}, prepare)
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

        Without ``writable`` the file is opened read-only (see
        :func:`~lut_builder.table.db.connect_readonly`): it is never changed, and a table
        in a directory that cannot be written can be read. Every value is checked here,
        before any is used.

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
            UserError: missing file or a directory; not SQLite; SQLite without this
                schema; another format version; a damaged value (naming it); a file that
                cannot be read (saying why); :class:`FingerprintMismatchError`;
                :class:`IncompleteTableError` (unless ``force``).
        """
        path = input_file(path, "latency table", kind="a table file")
        check_sqlite_header(path)
        conn = connect(path, create=False) if writable else connect_readonly(path)
        try:
            table = cls(path, conn, writable=writable)
            check_values(conn, path)
            if writable:
                enable_wal(conn)
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
        """Close the database connection; the last writer to close leaves the file
        self-contained (:func:`~lut_builder.table.db.close_writer`)."""
        if self._writable:
            close_writer(self._conn)
        else:
            self._conn.close()

    def copy_to(self, path: str | os.PathLike) -> Path:
        """Write a consistent, self-contained copy of the table to ``path`` atomically
        (SQLite's backup: what a file copy of a WAL table can miss is included).

        Returns:
            ``path`` as a :class:`~pathlib.Path`.

        Raises:
            OSError: ``path`` cannot be written (it is left as it was).
        """
        from ..fileio import atomic_output

        path = Path(path)
        with atomic_output(path) as tmp:
            dst = sqlite3.connect(tmp)
            try:
                self._conn.backup(dst)
                dst.execute("PRAGMA journal_mode=DELETE")
            finally:
                dst.close()
        return path

    def __enter__(self) -> LatencyTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- metadata ------------------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        meta = read_meta(self._conn, missing_ok=False, path=self.path)
        assert meta is not None
        check_meta(meta, self.path)
        return meta

    def _set_meta(self, **items: Any) -> None:
        with transaction(self._conn):
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
    def timing_loop(self) -> dict[str, Any] | None:
        """The per-point timing loop every build of this table recorded (warm-up, runs,
        minimum time...: :meth:`lut_builder.backends.Backend.timing_loop`), or None where
        none was recorded (a table built before builds recorded it, or not measured) or
        the builds that filled it used different loops."""
        loops = recorded_timing_loops(self.info)
        if not loops or any(loop != loops[0] for loop in loops[1:]):
            return None
        return loops[0]

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

    @property
    def threads(self) -> int | None:
        """The CPU thread count the table was measured at (see :func:`table_threads`):
        the deployment it describes runs at this many threads; None for a table without
        one (GPU, analytic)."""
        return table_threads(self.fingerprint)

    def require_threads(self, threads: int) -> None:
        """Refuse to describe a deployment at ``threads`` CPU threads with this table.

        Raises:
            FingerprintMismatchError: the table was measured at another thread count
                (a table without one, on a GPU, passes).
        """
        have = self.threads
        if have is not None and have != threads:
            raise FingerprintMismatchError(
                f"latency table {self.path} was measured at {have} CPU thread"
                f"{'s' if have != 1 else ''}, not {threads}: build one with --threads "
                f"{threads} for a {threads}-thread deployment"
            )

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
        with transaction(self._conn):
            meta = read_meta(self._conn, missing_ok=False, path=self.path) or {}
            ref = meta.get("reference")
            changed = True
            if ref is None:
                ref = {"kind": kind, "gate": gate, "unit_ms": float(unit_ms)}
            elif ref["kind"] != kind:
                raise UserError(
                    f"{self.path} was measured against reference {ref['kind']!r}, not {kind!r}"
                )
            elif not meta.get("complete") and unit_ms < ref["unit_ms"]:
                ref["unit_ms"] = float(unit_ms)
            else:
                changed = False  # a resumed or complete table is not rewritten
            if changed:
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
        with transaction(self._conn):
            info = read_meta(self._conn, missing_ok=False, path=self.path).get("info", {})
            info.update(items)
            self._conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('info', ?)", (json.dumps(info),)
            )

    def append_info(self, key: str, entry: Any, *, keep: int = 50) -> None:
        """Append ``entry`` to the list ``info[key]`` (atomically; the last ``keep`` kept)."""
        with transaction(self._conn):
            info = read_meta(self._conn, missing_ok=False, path=self.path).get("info", {})
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
        with transaction(self._conn):
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
        with transaction(self._conn):
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
            UserError: a timing the table would refuse to read (not a positive latency,
                say): it is not stored, and running the build again measures it again.
        """
        sid = self._sig_id(sig)
        scale = 1.0
        if self.reference is not None:
            if not unit_ms:
                raise ValueError("this table stores ratios to its reference: give unit_ms")
            scale = 1.0 / unit_ms
        values = [getattr(timing, f) * scale for f in TIMING_COLUMNS[:5]] + [timing.n]
        damage = point_damage(*values)
        if damage:
            raise UserError(
                f"not storing signature {sig.short()} point ({c_in}, {c_out}) in {self.path}: "
                f"it was measured with {damage}"
            )
        with transaction(self._conn):
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

    def stored_points(self) -> list[tuple[Any, ...]]:
        """Every measured point as the file stores it, for copying between tables:
        ``(signature key, c_in, c_out, median, p10, p90, mean, std, n, worker,
        measured_at)``, timings in the table's stored unit (see :attr:`unit_ms`), in
        plan order."""
        return self._conn.execute(
            "SELECT s.key, p.c_in, p.c_out, p.median_ms, p.p10_ms, p.p90_ms, p.mean_ms, "
            "p.std_ms, p.n, p.worker, p.measured_at FROM points p JOIN signatures s "
            "ON s.id = p.sig_id ORDER BY p.sig_id, p.c_in, p.c_out"
        ).fetchall()

    def add_stored_points(self, rows: Sequence[Sequence[Any]]) -> int:
        """Store points given as :meth:`stored_points` returns them (already in this
        table's unit), all in one transaction; points already stored are kept.

        Returns:
            How many points were stored.

        Raises:
            UserError: a signature the table does not plan, or a damaged value (nothing
                is stored).
        """
        values = []
        for key, c_in, c_out, *timing, worker, measured_at in rows:
            sig = LayerSignature.from_key(key)
            damage = point_damage(*timing)
            if damage:
                raise UserError(
                    f"not storing signature {sig.short()} point ({c_in}, {c_out}) in "
                    f"{self.path}: it was measured with {damage}"
                )
            values.append((self._sig_id(sig), int(c_in), int(c_out), *timing, worker, measured_at))
        with transaction(self._conn):
            before = self.count_points()
            self._conn.executemany(
                "INSERT OR IGNORE INTO points VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values
            )
            stored = self.count_points() - before
        self._surfaces.clear()
        return stored

    # -- lookups ---------------------------------------------------------------------------

    def use_lines(self) -> LatencyTable:
        """Fill every sparse grid with its lines whatever its probes chose, as tables
        built before probes were filled (:func:`~lut_builder.table.grid.fill`): to
        compare the two fills on the same measurements. Returns the table."""
        self._lines_only = True
        self._surfaces.clear()
        return self

    def _surface(self, sig: LayerSignature) -> Surface:
        surf = self._surfaces.get(sig)
        if surf is None:
            import dataclasses

            import numpy as np

            grid = self.grid(sig)
            if self._lines_only:
                grid = dataclasses.replace(grid, probes=())
            measured = {(p.c_in, p.c_out): p.timing.median_ms for p in self.points(sig)}
            f = fill(grid, measured)
            surf = Surface(
                grid,
                np.array(grid.c_in),
                np.array(grid.c_out),
                f.values,
                f.measured,
                f.model,
                f.probe_error,
            )
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
        out = interpolate(self._surface(sig), self.alignment, ci, co, sig)
        if np.isnan(out).any():
            k = int(np.flatnonzero(np.isnan(out))[0])
            raise IncompleteTableError(
                f"latency table {self.path} has no measurement near c_in={int(ci.ravel()[k])}, "
                f"c_out={int(co.ravel()[k])} of signature {sig.short()} yet (incomplete build)"
            )
        return out.reshape(ci.shape)

    def fill_summary(self, sig: LayerSignature) -> dict[str, Any]:
        """How a signature's unmeasured points are filled (``fill``: ``measured``,
        ``lines`` or ``bilinear``) and each fill's summed error on its measured probes
        (``probe_error_ms``; None without measured probes). See
        :func:`~lut_builder.table.grid.fill`."""
        surf = self._surface(sig)
        return {"fill": surf.model, "probe_error_ms": surf.probe_error}

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
                    **self.fill_summary(sig),
                }
            )
        meta = self._meta()
        return {
            "path": str(self.path),
            "format_version": self.format_version,
            "fingerprint": self.fingerprint,
            "threads": self.threads,
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


def register_plan(
    conn: sqlite3.Connection, path: Path, plan: Mapping[LayerSignature, Grid]
) -> None:
    """Give a table without a plan ``plan``'s signatures and planned points, or check that
    a table's plan is ``plan``. Runs inside the caller's transaction: all or nothing.

    Raises:
        UserError: the table plans other signatures, or the same on other grids (another
            model, input shape, grid step or strategy); nothing is written.
    """
    have = {k: g for k, g in conn.execute("SELECT key, grid FROM signatures")}
    want = {sig.key(): (sig, grid) for sig, grid in plan.items()}
    if not have:
        for key, (sig, grid) in want.items():
            cur = conn.execute(
                "INSERT INTO signatures (key, label, grid) VALUES (?, ?, ?)",
                (key, sig.short(), json.dumps(grid.to_dict())),
            )
            conn.executemany(
                "INSERT OR IGNORE INTO plan VALUES (?, ?, ?)",
                [(cur.lastrowid, a, b) for a, b in grid.points()],
            )
        if want:
            # A table that gains planned points is no longer complete.
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('complete', 'false')")
        return
    new = [sig.short() for k, (sig, _) in want.items() if k not in have]
    gone = len(set(have) - set(want))
    moved = [
        sig.short()
        for k, (sig, grid) in want.items()
        if k in have and Grid.from_dict(json.loads(have[k])) != grid
    ]
    if not (new or gone or moved):
        return
    why = []
    if moved:
        why.append(f"{_few(moved)} planned on another grid")
    if new:
        why.append(f"{_few(new)} not in it")
    if gone:
        why.append(f"{gone} of its {len(have)} signatures not in this build")
    raise UserError(
        f"{path} holds the plan of another model, input shape or grid ("
        + "; ".join(why)
        + "); building into it would change it: use another --out, or delete it to rebuild"
    )


def _few(labels: list[str]) -> str:
    shown = ", ".join(labels[:3]) + (f" and {len(labels) - 3} more" if len(labels) > 3 else "")
    return f"{len(labels)} signature{'s' if len(labels) > 1 else ''} ({shown})"


def recorded_timing_loops(info: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The timing loops a table's ``info`` records, one per process that measured points,
    without the process that recorded each (:attr:`LatencyTable.timing_loop`)."""
    return [{k: v for k, v in e.items() if k != "worker"} for e in info.get("timing_loops", [])]


def table_threads(fingerprint: Mapping[str, Any]) -> int | None:
    """The CPU thread count a table's fingerprint records, or None.

    ONNX Runtime tables keep it in ``options.threads``, torch tables on the CPU in
    ``threads``; GPU and analytic tables have none.
    """
    options = fingerprint.get("options")
    for v in (
        fingerprint.get("threads"),
        options.get("threads") if isinstance(options, Mapping) else None,
    ):
        if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            return v
    return None


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
