"""The latency table store: one SQLite file of T(signature, c_in, c_out) for one target.

- :mod:`.store`: :class:`LatencyTable` (create, join, open with fingerprint checks,
  plan, add points, lookups); its errors (:class:`IncompleteTableError`,
  :class:`FingerprintMismatchError`) are in :mod:`lut_builder.errors`.
- :mod:`.grid`: :class:`Grid` (the planned axes of a signature), :func:`fill_surface`
  (a sparse grid's missing points) and the step-aware interpolation of lookups.
- :mod:`.merge`: :func:`merge_tables` joins shard tables measured on separate machines.
- :mod:`.db`: the file layout (:data:`FORMAT_VERSION`), creating and joining a file,
  and the SQLite plumbing.

The network latency model built on a table is :mod:`lut_builder.latency_model`; the
end-to-end measurements it is compared with are :mod:`lut_builder.end_to_end`.
"""

from ..errors import FingerprintMismatchError, IncompleteTableError
from .db import FORMAT_VERSION
from .grid import Grid, fill_surface
from .merge import MergeResult, merge_tables
from .store import LatencyTable, Point, fingerprint_mismatches, table_threads

__all__ = [
    "FORMAT_VERSION",
    "FingerprintMismatchError",
    "Grid",
    "IncompleteTableError",
    "LatencyTable",
    "MergeResult",
    "Point",
    "fill_surface",
    "fingerprint_mismatches",
    "merge_tables",
    "table_threads",
]
