"""ChannelGraph: coupled groups, frozen groups with reasons, exact removal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from halp_trt.errors import PruningError
from halp_trt.graph import ChannelGraph

from .zoo import MIXING, ZOO, build


def random_plan(graph, rng, low=0.3, high=0.6):
    """Remove a random fraction of every prunable group's units (whole conv groups)."""
    keep = {}
    for g in graph.prunable:
        n = g.size // g.unit
        n_keep = max(1, n - int(round(n * rng.uniform(low, high))))
        units = rng.choice(n, n_keep, replace=False).tolist()
        keep[g.id] = sorted(u * g.unit + r for u in units for r in range(g.unit))
    return keep


@pytest.fixture(scope="module", params=sorted(ZOO))
def zoo_graph(request):
    model, x = build(request.param)
    return request.param, ChannelGraph(model, x)


def test_zoo_random_plans_removed_equals_masked(zoo_graph):
    name, graph = zoo_graph
    assert graph.prunable, f"{name}: nothing prunable"
    for seed in range(3):
        keep = random_plan(graph, np.random.default_rng(seed), 0.0, 0.95)
        result = graph.check(keep, seed=seed)
        assert result.passed, (name, seed, result)
        assert result.max_rel_err <= 1e-4


@pytest.mark.parametrize("extreme", ["one", "all"])
def test_zoo_extreme_plans(zoo_graph, extreme):
    name, graph = zoo_graph
    keep = {
        g.id: (
            [(g.size // g.unit - 1) * g.unit + r for r in range(g.unit)]
            if extreme == "one"
            else range(g.size)
        )
        for g in graph.prunable
    }
    result = graph.check(keep)
    assert result.passed, (name, extreme, result)
    if extreme == "all":
        assert result.max_abs_err == 0.0


def test_removed_widths_match_prediction():
    model, x = build("densenet")
    graph = ChannelGraph(model, x)
    keep = random_plan(graph, np.random.default_rng(3))
    predicted = graph.widths({g: len(k) for g, k in keep.items()})
    graph.remove(keep)
    for name, (c_in, c_out) in predicted.items():
        m = model.get_submodule(name)
        actual = (
            (m.in_channels, m.out_channels)
            if isinstance(m, nn.Conv2d)
            else (m.in_features, m.out_features)
        )
        assert actual == (c_in, c_out), name
    # The slim model still runs on the original input shape.
    assert model(x).shape == (x.shape[0], 5)


def test_widths_of_flattened_linear_counts_spatial_positions():
    model, x = build("vgg")
    graph = ChannelGraph(model, x)
    last = next(g for g in graph.prunable if any(r.layer == "classifier.0" for r in g.consumers))
    widths = graph.widths({last.id: 10})
    assert widths["classifier.0"] == (10 * 4 * 4, 64)


def test_mask_keeps_shapes_and_zeroes_dropped_slices():
    model, x = build("cifar_resnet20")
    graph = ChannelGraph(model, x)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    g = graph.prunable[0]
    graph.mask({g.id: [0, 1]})
    assert {n: p.shape for n, p in model.named_parameters()} == shapes
    prod = model.get_submodule(g.producers[0].layer)
    dropped = g.producers[0].positions(range(2, g.size), g.size)
    assert torch.count_nonzero(prod.weight[dropped]) == 0
    assert torch.count_nonzero(prod.weight[g.producers[0].positions([0, 1], g.size)]) > 0


@pytest.mark.parametrize("name", sorted(MIXING))
def test_channel_mixing_freezes_and_check_detects_forced_removal(name):
    # These models mix channels (a flip, a mean over channels, a shuffle, a chunk the
    # trace gets wrong): the group in front must be frozen. Forcing it open must make
    # the self-check fail, which shows the check can fail.
    model, x = build(name)
    graph = ChannelGraph(model, x)
    mixed = [g for g in graph.frozen if MIXING[name] in (g.reason or "") and g.producers]
    assert len(mixed) == 1, [(g.id, g.reason) for g in graph.frozen]
    g = mixed[0]
    g.prunable, g.reason = True, None
    result = graph.check({g.id: list(range(0, g.size, 2))})
    assert not result.passed
    assert result.max_rel_err > 1e-3


def test_frozen_groups_have_reasons():
    model, x = build("ssd")
    graph = ChannelGraph(model, x)
    reasons = {g.reason for g in graph.frozen}
    assert all(r for r in reasons)
    heads = [g for g in graph.frozen if (g.reason or "").startswith("model output")]
    head_layers = {r.layer for g in heads for r in g.producers}
    assert {"cls_heads.0", "cls_heads.1", "box_heads.0", "box_heads.1"} <= head_layers
    assert any(
        g.reason == "model input" and g.consumers[0].layer == "backbone.0.0" for g in graph.frozen
    )


def test_every_conv_and_linear_is_accounted_for():
    # Never silently skipped: each layer's outputs and inputs belong to some group.
    for name in ZOO:
        model, x = build(name)
        graph = ChannelGraph(model, x)
        outs = {r.layer for g in graph.groups for r in g.producers}
        ins = {r.layer for g in graph.groups for r in g.consumers}
        for layer in graph.layers:
            assert layer in outs, (name, layer, "output channels")
            assert layer in ins, (name, layer, "input channels")


def test_user_frozen_layers_and_bad_plans():
    model, x = build("cifar_resnet20")
    graph = ChannelGraph(model, x, frozen_layers=["layer1.0.conv1"])
    g = next(g for g in graph.groups if any(r.layer == "layer1.0.conv1" for r in g.producers))
    assert not g.prunable and "frozen by the user" in g.reason
    with pytest.raises(PruningError, match="frozen"):
        graph.mask({g.id: [0]})
    ok = graph.prunable[0]
    with pytest.raises(PruningError, match="keep no channel"):
        graph.mask({ok.id: []})
    with pytest.raises(PruningError, match="out of range"):
        graph.mask({ok.id: [ok.size]})
    with pytest.raises(PruningError, match="no channel group"):
        graph.widths({999: 1})
    with pytest.raises(PruningError, match="not in the model"):
        ChannelGraph(model, x, frozen_layers=["nope"])


def test_signatures_found_by_forward_pass():
    model, x = build("mobilenetv2")
    graph = ChannelGraph(model, x)
    dw = graph.layers["blocks.1.block.3"].signature
    assert dw.group_mode == "depthwise" and dw.stride == (2, 2) and dw.in_hw == (16, 16)
    assert graph.layers["classifier.1"].signature.op == "linear"
    assert graph.layers["stem.0"].signature.batch == 2


def test_batch_of_one_traces_the_batched_model():
    model, x = build("plain_convs_batch1")
    graph = ChannelGraph(model, x)
    assert sorted(g.size for g in graph.prunable) == [8, 16]
    assert {g.reason for g in graph.frozen} == {"model output (4)", "model input"}
