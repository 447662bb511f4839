"""With a grid step coarser than the table's alignment the solver keeps only widths
the table has measured."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from halp_trt.graph import ChannelGraph
from halp_trt.solver.knapsack import solve_budget

from .test_prune_support import analytic_table


def test_default_bundle_follows_a_coarse_grid_step(tmp_path):
    torch.manual_seed(0)
    # A 32-channel stem and a 160-channel body at step 64 (alignment 8): the grid
    # holds 32 for the stem and 64, 128, 160 for the body.
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 160, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(160, 10, 1),
    ).eval()
    x = torch.randn(1, 3, 8, 8)
    table = analytic_table(tmp_path / "t.db", model, x, step=64)
    assert (table.alignment, table.step) == (8, 64)
    graph = ChannelGraph(model, x)
    rng = np.random.default_rng(0)
    scores = {g.id: rng.random(g.size) for g in graph.prunable}
    full = sum(table.lookup_grid(i.signature, i.c_in, i.c_out) for i in graph.layers.values())
    plan = solve_budget(graph, table, scores, 0.7 * full)
    kept = {gid: len(k) for gid, k in plan.keep.items()}
    by_size = {g.size: g.id for g in graph.prunable}
    assert sorted(by_size) == [32, 160]
    stem, body = by_size[32], by_size[160]
    assert kept.get(stem, 32) == 32  # nothing narrower than 32 was measured for the stem
    assert kept[body] in (64, 128)
