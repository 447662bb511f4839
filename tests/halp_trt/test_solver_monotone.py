"""The monotone envelope of a latency table: dips lifted, rises kept, the rest passed on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from halp_trt.solver.monotone import MonotoneTable
from lut_builder.errors import UserError


@dataclass(frozen=True)
class Sig:
    name: str
    group_mode: str = "dense"


DENSE, DEPTHWISE, GROUPED = Sig("1x1"), Sig("dw", "depthwise"), Sig("g", "grouped")


class DippyTable:
    """c_in * c_out microseconds, halved where c_out == 48 (a point measured low);
    below 16 input channels there is no measurement."""

    alignment = step = 16
    overhead_ms = 0.25
    scale = 1.5

    def lookup_grid(self, sig, c_in, c_out):
        ci, co = np.broadcast_arrays(np.asarray(c_in, dtype=float), np.asarray(c_out, dtype=float))
        if (ci < 16).any():
            raise UserError("below the measured range")
        if sig is DEPTHWISE:
            return ci * np.where(ci == 48, 0.5, 1.0) * 1e-3
        return ci * co * np.where(co == 48, 0.5, 1.0) * 1e-3


def test_dips_are_lifted_rises_kept_and_attributes_passed_on():
    table = DippyTable()
    mono = MonotoneTable(table, [(DENSE, 64, 64), (DEPTHWISE, 64, 64), (GROUPED, 64, 64)])
    assert table.lookup_grid(DENSE, 32, 48) < table.lookup_grid(DENSE, 32, 32)  # the dip
    assert mono.lookup(DENSE, 32, 48) == pytest.approx(32 * 32e-3)  # lifted to the 32 point
    assert mono.lookup(DENSE, 32, 64) == pytest.approx(32 * 64e-3)  # a rise: unchanged
    assert mono.lookup(DENSE, 64, 16) == pytest.approx(64 * 16e-3)
    got = mono.lookup_grid(DENSE, np.array([32, 48]), np.array([[48], [64]]))
    assert got == pytest.approx(np.array([[32 * 32, 48 * 32], [32 * 64, 48 * 64]]) * 1e-3)
    assert mono.lookup(DEPTHWISE, 48, 48) == pytest.approx(32e-3)
    assert mono.lookup(DEPTHWISE, 64, 64) == pytest.approx(64e-3)
    # Grouped signatures and signatures of no listed layer pass through.
    assert mono.lookup(GROUPED, 32, 48) == table.lookup_grid(GROUPED, 32, 48)
    other = Sig("3x3")
    assert mono.lookup(other, 32, 48) == table.lookup_grid(other, 32, 48)
    assert (mono.alignment, mono.overhead_ms, mono.scale) == (16, 0.25, 1.5)
    # Monotone in both widths over the lattice.
    cs = np.arange(16, 65, 16)
    grid = mono.lookup_grid(DENSE, cs[:, None], cs[None, :])
    assert (np.diff(grid, axis=0) >= 0).all() and (np.diff(grid, axis=1) >= 0).all()
    with pytest.raises(UserError):
        mono.lookup(DENSE, 8, 16)  # what the table cannot answer is still an error


def test_the_pruner_plans_on_the_envelope_when_told_to(tmp_path_factory):
    import torch

    from halp_trt.prune import Pruner

    from .test_prune_support import small_resnet, small_resnet_table

    table = small_resnet_table(tmp_path_factory)
    x = torch.randn(1, 3, 16, 16)
    mono = Pruner(small_resnet(), x, table, "0.6x", monotone_table=True)
    assert isinstance(mono.table, MonotoneTable) and mono.table.table is table
    plain = Pruner(small_resnet(), x, table, "0.6x")
    assert plain.table is table and not plain.monotone_table
