"""The affine calibration's narrowed copies stay on the table's grid when the grid
step is coarser than the backend's alignment."""

from __future__ import annotations

import torch
import torch.nn as nn

from lut_builder import build_table


def test_calibration_copies_follow_a_coarse_grid_step(tmp_path):
    # Widths 32 and 40 at step 32: the grid holds 32 and 40 only. Copies rounded to the
    # backend's alignment (16) would ask for 16 and 24, below the measured range.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 40, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(40, 4, 1),
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    seen = []

    def variants(m, example, alignment):
        seen.append(alignment)
        from halp_trt.graph import calibration_variants

        return calibration_variants(m, example, alignment)

    result = build_table(tmp_path / "t.db", model, x, "onnxruntime", step=32, variants=variants)
    assert seen == [32]
    assert result.complete and result.overhead_ms is not None
