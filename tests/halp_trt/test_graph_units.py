"""Grouped convolutions pruned in whole groups, ConvNeXt-style channels-last blocks
(LayerNorm over channels, layer scale) and channel shuffle, on small synthetic models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from halp_trt.errors import PruningError
from halp_trt.graph import ChannelGraph, norms, uniform_keep
from halp_trt.prune import MaskSet
from lut_builder.signatures import model_layers

from .test_graph import random_plan
from .test_solver_knapsack import FakeTable
from .zoo import build


def _grouped_group(graph):
    return next(g for g in graph.prunable if g.unit > 1)


def test_grouped_conv_couples_its_sides_in_units_of_one_conv_group():
    model, x = build("resnext")
    graph = ChannelGraph(model, x)
    g = _grouped_group(graph)
    assert (g.size, g.unit) == (32, 8)  # 4 groups of 8 channels
    assert {"reduce.0", "grouped.0"} <= {r.layer for r in g.producers}
    assert {"grouped.0", "expand.0"} <= {r.layer for r in g.consumers}
    assert g.to_dict()["unit"] == 8
    assert all(gr.to_dict()["unit"] == 1 for gr in graph.groups if gr.id != g.id)
    with pytest.raises(PruningError, match="units of 8"):
        graph.widths({g.id: 12})
    with pytest.raises(PruningError, match="whole units of 8"):
        graph.mask({g.id: list(range(12))})
    assert graph.widths({g.id: 16})["grouped.0"] == (16, 16)


def test_whole_group_removal_shrinks_groups_and_matches_widths():
    model, x = build("resnext")
    graph = ChannelGraph(model, x)
    g = _grouped_group(graph)
    keep = {g.id: list(range(8, 16)) + list(range(24, 32))}  # conv groups 1 and 3
    assert graph.check(keep).passed
    predicted = graph.widths({g.id: 16})
    w = model.grouped[0].weight.detach().clone()
    graph.remove(keep)
    conv = model.grouped[0]
    assert (conv.in_channels, conv.out_channels, conv.groups) == (16, 16, 2)
    assert torch.equal(conv.weight, torch.cat([w[8:16], w[24:32]]))
    for name, info in model_layers(model, x).items():
        assert (info.c_in, info.c_out) == predicted[name], name
    sig = model_layers(model, x)["grouped.0"].signature
    assert sig.group_width == 8 and sig.groups_at(16) == 2


def test_grouped_chain_unit_spans_groups_of_both_convs():
    model, x = build("grouped_chain")
    graph = ChannelGraph(model, x)
    g = _grouped_group(graph)
    # gcd(4, 2) = 2 units of 16 channels: two groups of g1, one group of g2.
    assert (g.size, g.unit) == (32, 16)
    assert graph.check({g.id: list(range(16, 32))}).passed
    graph.remove({g.id: list(range(16, 32))})
    assert (model.g1[0].groups, model.g2[0].groups) == (2, 1)


def test_removing_the_wrong_conv_groups_is_caught_by_the_check(monkeypatch):
    from halp_trt.graph import channel_graph

    model, x = build("resnext")
    graph = ChannelGraph(model, x)
    g = _grouped_group(graph)
    keep = {g.id: list(range(8, 16)) + list(range(24, 32))}
    right = channel_graph._remove_conv_groups

    def first_groups(conv, drop, name):  # keeps groups 0 and 1 instead of 1 and 3
        right(conv, sorted(range(conv.out_channels - len(drop), conv.out_channels)), name)

    monkeypatch.setattr(channel_graph, "_remove_conv_groups", first_groups)
    assert not graph.check(keep).passed


def test_solver_and_uniform_plans_keep_whole_units():
    from halp_trt.solver import solve_budget

    model, x = build("regnet_y")
    graph = ChannelGraph(model, x)
    units = {g.id: g.unit for g in graph.prunable}
    assert sorted(set(units.values())) == [1, 8]
    rng = np.random.default_rng(0)
    scores = {g.id: rng.random(g.size) for g in graph.prunable}
    table = FakeTable(alignment=4)
    full = solve_budget(graph, table, scores, 1e9).predicted_ms
    plan = solve_budget(graph, table, scores, 0.97 * full)
    shrunk = [gid for gid, kept in plan.keep.items() if len(kept) < graph.group(gid).size]
    assert any(units[gid] == 8 for gid in shrunk)
    for gid, kept in plan.keep.items():
        u = units[gid]
        assert len(kept) % u == 0 and len({c // u for c in kept}) * u == len(kept)
    assert graph.check(plan.keep).passed
    for gid, kept in uniform_keep(graph, 0.5, 4, scores=scores).items():
        assert len(kept) % units[gid] == 0


def test_convnext_block_masked_equals_removed_and_layer_scale_is_sliced():
    model, x = build("convnext")
    graph = ChannelGraph(model, x)
    assert not graph.frozen or all(
        g.reason in ("model input", "model output (fc)") for g in graph.frozen
    )
    stream = next(g for g in graph.prunable if any(r.layer == "stage1.gamma" for r in g.norms))
    kinds = {r.kind for r in stream.norms}
    assert {"layernorm", "parameter"} <= kinds
    keep = random_plan(graph, np.random.default_rng(1))
    result = graph.check(keep)
    assert result.passed, result
    n_keep = len(keep[stream.id])
    graph.remove(keep)
    assert model.stage1.gamma.shape == (n_keep, 1, 1)
    assert model.stem[1].normalized_shape == (n_keep,)
    assert model.stage1.norm.normalized_shape == (n_keep,)


def test_layer_norm_needs_kept_channel_statistics(monkeypatch):
    # With plain zero masking (statistics over all channels) masked != removed: the
    # kept-channel LayerNorm is what makes the check pass.
    model, x = build("convnext")
    graph = ChannelGraph(model, x)
    keep = random_plan(graph, np.random.default_rng(1))
    monkeypatch.setattr(norms, "set_norm_mask", lambda *a, **k: None)
    assert not graph.check(keep).passed


def test_mask_set_matches_graph_mask_with_layer_norms():
    model, x = build("convnext")
    graph = ChannelGraph(model, x)
    keep = random_plan(graph, np.random.default_rng(2))
    ref = copy.deepcopy(model)
    graph.mask(keep)
    with torch.no_grad():
        expected = model(x)
    masks = MaskSet(ChannelGraph(ref, x), keep)
    masks.apply()
    with torch.no_grad():
        assert torch.allclose(ref(x), expected, atol=1e-6)
    # The graph is traced with plain LayerNorms even when masks are on.
    again = ChannelGraph(ref, x)
    assert [g.size for g in again.groups] == [g.size for g in graph.groups]
    norms.clear_norm_masks(ref)
    with torch.no_grad():
        assert not torch.allclose(ref(x), expected, atol=1e-6)


def test_channel_shuffle_freezes_its_groups_and_prunes_the_branches():
    model, x = build("shufflenet")
    graph = ChannelGraph(model, x)  # used to crash inside Torch-Pruning
    shuffled = [g for g in graph.frozen if (g.reason or "").startswith("a reshape")]
    assert shuffled and all("(2, 32, 8, 8) -> (2, 2, 16, 8, 8)" in g.reason for g in shuffled)
    behind = [g for g in graph.frozen if "come through: a reshape" in (g.reason or "")]
    assert behind and all("splits or merges the channel dimension" in g.reason for g in behind)
    branch = {r.layer for g in graph.prunable for r in g.producers}
    assert {"units.0.branch.0.0", "units.1.branch.0.0"} <= branch
    assert graph.check(random_plan(graph, np.random.default_rng(0))).passed


def test_errors_inside_the_trace_are_one_line():
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            raise ZeroDivisionError("integer division\nor modulo by zero")

    with pytest.raises(PruningError, match=r"cannot trace.*ZeroDivisionError") as info:
        ChannelGraph(Broken(), torch.randn(1, 3, 8, 8))
    assert "\n" not in str(info.value)


def test_table_measures_grouped_layers_at_whole_group_widths():
    from lut_builder.backends import conv_groups
    from lut_builder.build import plan_grids

    model, x = build("resnext")
    layers = model_layers(model, x)
    sig = layers["grouped.0"].signature
    assert (sig.group_mode, sig.groups, sig.group_width, sig.diagonal) == ("grouped", 0, 8, True)
    grid = plan_grids(layers, step=4, strategy="full")[sig]
    assert grid.diagonal and grid.points() == [(8, 8), (16, 16), (24, 24), (32, 32)]
    assert [conv_groups(sig, c) for c, _ in grid.points()] == [1, 2, 3, 4]
    # Tables built before whole-group pruning keep their keys.
    dense = layers["reduce.0"].signature
    assert "group_width" not in dense.key()


@pytest.mark.parametrize("name", ["regnet_y", "convnext"])
def test_pruner_trains_masked_and_finalizes_grouped_and_channels_last(name, tmp_path):
    from halp_trt.prune import Pruner

    from .test_prune_support import analytic_table, batches, train_iterations

    model, x = build(name)
    x = x[:1]
    table = analytic_table(tmp_path / "t.lut", copy.deepcopy(model), x)
    pruner = Pruner(model, x, table, "0.96x", steps=2, interval=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    classes = model.fc.out_features
    train_iterations(model, opt, pruner, batches(3, shape=tuple(x.shape[1:]), classes=classes))
    units = {g.id: g.unit for g in pruner.graph.prunable}
    assert any(len(k) < pruner.graph.group(g).size for g, k in pruner.keep.items())
    for gid, kept in pruner.keep.items():
        assert len(kept) % units[gid] == 0
    model.eval()
    slim, plan = pruner.finalize()
    assert plan.check["passed"]
    assert plan.predicted_ms <= plan.target_ms
    assert slim(x).shape == (1, classes)
    if name == "regnet_y":  # grouped convolutions keep two groups or more
        assert slim.b1.b[0].groups >= 2 and slim.b2.b[0].groups >= 2


def test_random_keep_widths_on_the_grid_whole_units_and_seeded():
    """Random-width plans (what a table's build checks its latency model on): every
    group at a multiple of lcm(alignment, unit) from a quarter of it up (or whole),
    whole units of grouped convolutions, removable, and a function of the seed."""
    import math

    from halp_trt.graph import check_variants, random_keep

    model, x = build("regnet_y")
    graph = ChannelGraph(model, x)
    plans = [random_keep(graph, np.random.default_rng(s), 4) for s in range(6)]
    assert plans[0] == random_keep(graph, np.random.default_rng(0), 4)
    widths = set()
    for keep in plans:
        assert graph.check(keep).passed
        for g in graph.prunable:
            kept, step = keep[g.id], math.lcm(4, g.unit)
            assert len(set(kept)) == len(kept) and set(kept) <= set(range(g.size))
            assert len(kept) == g.size or (
                len(kept) % step == 0 and len(kept) >= math.ceil(0.25 * g.size / step) * step
            )
            assert len({c // g.unit for c in kept}) * g.unit == len(kept)
            widths.add((g.id, len(kept)))
    assert len(widths) > len(graph.prunable)  # the widths vary, not one per group
    with pytest.raises(ValueError, match="min_keep"):
        random_keep(graph, np.random.default_rng(0), 4, min_keep=0.0)
    copies = check_variants(model, x, 4, 3)
    assert len(copies) == 3 and all(not c.training for c in copies)
    assert check_variants(model, x, 4, 0) == []
    with torch.no_grad():
        assert all(c(x).shape == model(x).shape for c in copies)
