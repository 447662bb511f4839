"""Importance criteria: registry, HALP Taylor, weight-Taylor fallback, norms, SP-LAMP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from halp_trt.graph import ChannelGraph
from halp_trt.importance import (
    Importance,
    ImportanceError,
    get_importance,
    lamp_scores,
    list_importances,
    register_importance,
)
from halp_trt.models import resnet20

from .zoo import build


class NoBN(nn.Module):
    """Convolutions with biases and no BatchNorm: Taylor must fall back to weights."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = F.relu(self.b(F.relu(self.a(x))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = resnet20(num_classes=5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(1, 3, 32, 32)
    return model, ChannelGraph(model, x)


def backward(model, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 32, 32, generator=gen)
    y = torch.randint(0, 4, (4,), generator=gen)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()


def test_taylor_abs_sums_the_coupled_terms_magnitudes(resnet):
    model, graph = resnet
    plain, summed = get_importance("taylor")(graph), get_importance("taylor-abs")(graph)
    expected = {g.id: np.zeros(g.size) for g in graph.prunable}
    backward(model, 7)
    plain.accumulate()
    summed.accumulate()
    for g in graph.prunable:
        for ref in g.norms:
            bn = model.get_submodule(ref.layer)
            per = (bn.weight * bn.weight.grad + bn.bias * bn.bias.grad).double()
            expected[g.id] += per[list(ref.index)].detach().abs().numpy()
    a, b = plain.scores(), summed.scores()
    for g in graph.prunable:
        np.testing.assert_allclose(b[g.id], expected[g.id], rtol=1e-9, atol=1e-15)
        assert (b[g.id] >= a[g.id] - 1e-15).all()  # |sum| <= sum of |terms|
        if len(g.norms) == 1:
            np.testing.assert_allclose(a[g.id], b[g.id], rtol=1e-9, atol=1e-15)
    residual = [g for g in graph.prunable if len(g.norms) > 1]
    assert any((b[g.id] > a[g.id] * 1.01).any() for g in residual)  # terms that cancel


def test_taylor_abs_mean_averages_the_coupled_terms_magnitudes(resnet):
    model, graph = resnet
    summed, mean = get_importance("taylor-abs")(graph), get_importance("taylor-abs-mean")(graph)
    for seed in (3, 4):
        backward(model, seed)
        summed.accumulate()
        mean.accumulate()
    a, b = summed.scores(), mean.scores()
    for g in graph.prunable:
        np.testing.assert_allclose(b[g.id] * len(g.norms), a[g.id], rtol=1e-9, atol=1e-15)
    # A residual stream (several BNs) loses its lead over a one-BN group by that count.
    assert max(len(g.norms) for g in graph.prunable) > 1
    assert min(len(g.norms) for g in graph.prunable) == 1


def test_taylor_l2_is_the_coupled_terms_norm_between_mean_and_sum(resnet):
    model, graph = resnet
    names = ("taylor", "taylor-abs", "taylor-abs-mean", "taylor-l2")
    imps = {n: get_importance(n)(graph) for n in names}
    expected = {g.id: np.zeros(g.size) for g in graph.prunable}
    for seed in (5, 6):
        backward(model, seed)
        for imp in imps.values():
            imp.accumulate()
        per_batch = {g.id: np.zeros(g.size) for g in graph.prunable}
        for g in graph.prunable:
            for ref in g.norms:
                bn = model.get_submodule(ref.layer)
                per = (bn.weight * bn.weight.grad + bn.bias * bn.bias.grad).double()
                per_batch[g.id] += per[list(ref.index)].detach().numpy() ** 2
            expected[g.id] += np.sqrt(per_batch[g.id]) / 2  # averaged over the 2 batches
    s = {n: imp.scores() for n, imp in imps.items()}
    for g in graph.prunable:
        l2 = s["taylor-l2"][g.id]
        np.testing.assert_allclose(l2, expected[g.id], rtol=1e-9, atol=1e-15)
        assert (l2 <= s["taylor-abs"][g.id] * (1 + 1e-12)).all()
        assert (l2 >= s["taylor-abs-mean"][g.id] * (1 - 1e-12)).all()
        if len(g.norms) == 1:
            np.testing.assert_allclose(l2, s["taylor"][g.id], rtol=1e-9, atol=1e-15)
    residual = [g for g in graph.prunable if len(g.norms) > 1]
    assert residual
    assert all((s["taylor-l2"][g.id] < s["taylor-abs"][g.id] * 0.99).any() for g in residual)


def test_taylor_fisher_averages_each_minibatchs_squared_taylor(resnet):
    """``taylor-fisher``: HALP's signed ``taylor`` per minibatch, squared, then averaged
    (at least the square of the average, by Jensen, and more where minibatches
    disagree); its state round-trips; and the signed sum is the same mask gradient the
    signed weight products of the layers that write and read a channel give (a writer's
    slice before a BatchNorm adds almost nothing: the BatchNorm's output is what is read)."""
    from halp_trt.importance.taylor import TaylorWeightsImportance

    class SignedWeights(TaylorWeightsImportance):
        abs_terms = False

        def __init__(self, graph):
            super().__init__(graph)
            self._sources = [(m, "weight", d, n) for m, _, d, n in self._sources]

    model, graph = resnet
    fisher = get_importance("taylor-fisher")(graph)
    signed = SignedWeights(graph)
    per_batch = []
    for seed in (11, 12, 13):
        plain = get_importance("taylor")(graph)
        backward(model, seed)
        for imp in (fisher, plain):
            imp.accumulate()
        signed.reset()
        signed.accumulate()
        per_batch.append((plain.scores(), signed.scores()))
    got = fisher.scores()
    for g in graph.prunable:
        squares = np.mean([p[g.id] ** 2 for p, _ in per_batch], axis=0)
        np.testing.assert_allclose(got[g.id], squares, rtol=1e-9, atol=1e-18)
        mean = np.mean([p[g.id] for p, _ in per_batch], axis=0)
        assert (got[g.id] >= mean**2 * (1 - 1e-12)).all()
        for p, w in per_batch:  # the mask gradient read on the weights, with signs
            np.testing.assert_allclose(w[g.id], p[g.id], rtol=5e-3, atol=1e-9)
    assert any((got[g.id] > mean**2 * 1.01).any() for g in graph.prunable)
    again = get_importance("taylor-fisher")(graph)
    again.load_state_dict(fisher.state_dict())
    assert all(np.array_equal(again.scores()[k], v) for k, v in got.items())


def test_registry_lists_and_rejects_unknown():
    assert {"taylor", "taylor-abs", "l1", "l2", "sp-lamp"} <= set(list_importances())
    assert list_importances("l*") == ["l1", "l2"]
    with pytest.raises(ImportanceError, match="unknown importance 'fisher'.*known: auto, l1, l2"):
        get_importance("fisher")
    assert get_importance("taylor").needs_gradients
    assert not get_importance("sp-lamp").needs_gradients


def test_register_custom_criterion_and_duplicate_name():
    @register_importance("test-ones")
    class Ones(Importance):
        def scores(self):
            return {g.id: np.ones(g.size) for g in self.groups}

    assert "test-ones" in list_importances()
    assert get_importance("test-ones") is Ones
    with pytest.raises(ValueError, match="already registered"):
        register_importance("test-ones")(type("Other", (Importance,), {}))


def test_taylor_is_abs_of_coupled_bn_sum_averaged_over_minibatches(resnet):
    model, graph = resnet
    imp = get_importance("taylor")(graph)
    expected = {g.id: np.zeros(g.size) for g in graph.prunable}
    for seed in range(3):
        backward(model, seed)
        imp.accumulate()
        for g in graph.prunable:
            total = torch.zeros(g.size, dtype=torch.float64)
            assert g.norms, g
            for ref in g.norms:
                bn = model.get_submodule(ref.layer)
                per = (bn.weight * bn.weight.grad + bn.bias * bn.bias.grad).double()
                total += per[list(ref.index)].detach()
            expected[g.id] += total.abs().numpy() / 3
    assert imp.count == 3
    scores = imp.scores()
    assert set(scores) == {g.id for g in graph.prunable}
    residual = [g for g in graph.prunable if len(g.norms) > 1]
    assert residual, "resnet20 has coupled residual groups"
    for gid, s in scores.items():
        np.testing.assert_allclose(s, expected[gid], rtol=1e-9, atol=1e-15)
        assert (s > 0).all()
    imp.reset()
    assert imp.count == 0
    with pytest.raises(ImportanceError, match="no minibatch"):
        imp.scores()


def test_weight_taylor_fallback_without_bn():
    torch.manual_seed(1)
    model = NoBN()
    graph = ChannelGraph(model, torch.randn(1, 3, 8, 8))
    imp = get_importance("taylor")(graph)
    F.cross_entropy(model(torch.randn(3, 3, 8, 8)), torch.tensor([0, 1, 2])).backward()
    imp.accumulate()
    scores = imp.scores()
    by_layer = {g.producers[0].layer: g.id for g in graph.prunable}
    assert set(by_layer) == {"a", "b"}
    for name, gid in by_layer.items():
        conv = getattr(model, name)
        manual = (conv.weight * conv.weight.grad).sum((1, 2, 3)) + conv.bias * conv.bias.grad
        np.testing.assert_allclose(scores[gid], manual.abs().detach().double().numpy(), rtol=1e-6)


def weight_terms(model, graph, per_group):
    """Add each group's |w * dw| per channel, summed over its producers' rows (and
    biases) and its consumers' columns (depthwise convolutions as producers only)."""
    for g in graph.prunable:
        for refs, dim in ((g.producers, 0), (g.consumers, 1)):
            for ref in refs:
                layer = model.get_submodule(ref.layer)
                if dim == 1 and getattr(layer, "groups", 1) > 1:
                    continue
                prod = (layer.weight * layer.weight.grad).detach().double().abs()
                rows = prod.transpose(0, dim)[list(ref.index)].reshape(g.size, -1).sum(1)
                if dim == 0 and layer.bias is not None:
                    b = (layer.bias * layer.bias.grad).detach().double().abs()
                    rows += b[list(ref.index)].reshape(g.size, -1).sum(1)
                per_group[g.id] += rows.numpy()


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_taylor_weights_sums_every_coupled_weights_terms_magnitudes(resnet, name):
    if name == "resnet20":
        model, graph = resnet
        x = None
    else:
        model, x = build(name)
        graph = ChannelGraph(model, x)
        model.train()
    imp = get_importance("taylor-weights")(graph)
    expected = {g.id: np.zeros(g.size) for g in graph.prunable}
    for seed in (8, 9):
        if x is None:
            backward(model, seed)
        else:
            model.zero_grad()
            xb = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
            F.cross_entropy(model(xb), torch.arange(x.shape[0]) % 3).backward()
        imp.accumulate()
        weight_terms(model, graph, expected)
    scores = imp.scores()
    for g in graph.prunable:
        np.testing.assert_allclose(scores[g.id], expected[g.id] / 2, rtol=1e-6)  # float32 sums
    # Not the BatchNorms: their gradients do not move it.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.grad.mul_(10)
    again = get_importance("taylor-weights")(graph)
    again.accumulate()
    fresh = {g.id: np.zeros(g.size) for g in graph.prunable}
    weight_terms(model, graph, fresh)
    for g in graph.prunable:
        np.testing.assert_allclose(again.scores()[g.id], fresh[g.id], rtol=1e-6)
    if x is not None:  # the depthwise convolutions are scored
        dw = [
            g
            for g in graph.prunable
            if {r.layer for r in g.producers} & {r.layer for r in g.consumers}
        ]
        assert dw and all((scores[g.id] > 0).all() for g in dw)


def test_taylor_weights_mean_averages_each_channels_terms_over_its_layers():
    """``taylor-weights-mean`` is ``taylor-weights`` divided, channel by channel, by the
    number of layers that write or read it: a residual stream's channel by more than a
    block's inner one."""
    model, x = build("mobilenetv2")
    graph = ChannelGraph(model, x)
    model.train()
    summed = get_importance("taylor-weights")(graph)
    averaged = get_importance("taylor-weights-mean")(graph)
    for seed in (3, 4):
        model.zero_grad()
        xb = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
        F.cross_entropy(model(xb), torch.arange(x.shape[0]) % 3).backward()
        summed.accumulate()
        averaged.accumulate()
    s, a = summed.scores(), averaged.scores()
    counts = {}
    for g in graph.prunable:
        layers = {r.layer for r in g.producers} | {r.layer for r in g.consumers}
        assert (a[g.id] > 0).all()
        np.testing.assert_allclose(s[g.id] / a[g.id], len(layers), rtol=1e-9)
        counts[g.id] = len(layers)
    assert max(counts.values()) >= 4 > min(counts.values())  # streams and inner widths


def test_masked_channels_score_zero_for_every_criterion(resnet):
    model, graph = resnet
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        keep = {g.id: list(range(0, g.size, 2)) for g in graph.prunable}
        graph.mask(keep)
        backward(model, 7)
        for name in ("taylor", "taylor-weights", "l1", "l2", "sp-lamp"):
            imp = get_importance(name)(graph)
            imp.accumulate()
            for gid, s in imp.scores().items():
                dropped = s[1::2]
                assert (dropped == 0).all(), (name, gid)
                assert (s[0::2] > 0).all(), (name, gid)
    finally:
        model.load_state_dict(state)


def test_filter_norms_sum_over_coupled_producers(resnet):
    model, graph = resnet
    g = max(graph.prunable, key=lambda g: len(g.producers))
    assert len(g.producers) > 1
    sq = np.zeros(g.size)
    ab = np.zeros(g.size)
    for ref in g.producers:
        w = model.get_submodule(ref.layer).weight.detach().double()
        rows = w[list(ref.index)].reshape(g.size, -1)
        sq += rows.pow(2).sum(1).numpy()
        ab += rows.abs().sum(1).numpy()
    np.testing.assert_allclose(get_importance("l1")(graph).scores()[g.id], ab, rtol=1e-9)
    np.testing.assert_allclose(get_importance("l2")(graph).scores()[g.id], np.sqrt(sq), rtol=1e-9)
    np.testing.assert_allclose(
        get_importance("sp-lamp")(graph).scores()[g.id], lamp_scores(sq), rtol=1e-12
    )


def test_lamp_scores_formula_and_strongest_is_one():
    v = np.array([4.0, 1.0, 3.0, 2.0])
    # ascending 1, 2, 3, 4 with suffix sums 10, 9, 7, 4
    np.testing.assert_allclose(lamp_scores(v), [1.0, 0.1, 3 / 7, 2 / 9])
    ties = lamp_scores(np.array([2.0, 2.0, 0.0]))
    assert ties.tolist() == [0.5, 1.0, 0.0]
    assert lamp_scores(np.zeros(3)).tolist() == [0.0, 0.0, 1.0]


def test_sp_lamp_strongest_channel_of_every_group_scores_one(resnet):
    _, graph = resnet
    for gid, s in get_importance("sp-lamp")(graph).scores().items():
        assert s.max() == 1.0 and (s == 1.0).sum() == 1, gid
        assert (s > 0).all() and (s <= 1).all()


def test_flatten_linear_consumer_and_depthwise_groups_are_scored():
    for name in ("vgg", "mobilenetv2"):
        model, x = build(name)
        graph = ChannelGraph(model, x)
        model.train()
        F.cross_entropy(model(x), torch.zeros(x.shape[0], dtype=torch.long)).backward()
        for crit in ("taylor", "l1", "sp-lamp"):
            imp = get_importance(crit)(graph)
            imp.accumulate()
            scores = imp.scores()
            assert {g.id: s.size for g, s in zip(graph.prunable, scores.values())} == {
                g.id: g.size for g in graph.prunable
            }
            assert all(np.isfinite(s).all() for s in scores.values())


def test_nan_importance_is_a_user_error_or_skipped(resnet):
    model, graph = resnet
    imp = get_importance("taylor")(graph)
    backward(model, 0)
    imp.accumulate()
    bn = model.layer1[0].bn1
    saved = bn.weight.grad.clone()
    bn.weight.grad[3] = float("nan")
    imp.accumulate(skip_nonfinite=True)  # an AMP overflow step: dropped, not counted
    assert imp.count == 1
    assert all(np.isfinite(s).all() for s in imp.scores().values())
    imp.accumulate()
    with pytest.raises(ImportanceError, match=r"group \d+ \(layer layer1\.0\.conv1\) is NaN"):
        imp.scores()
    bn.weight.grad.copy_(saved)
    with torch.no_grad():
        w = model.layer2[0].conv1.weight
        old = w[0, 0, 0, 0].item()
        w[0, 0, 0, 0] = float("inf")
        try:
            with pytest.raises(ImportanceError, match="l2 importance .* infinite"):
                get_importance("l2")(graph).scores()
        finally:
            w[0, 0, 0, 0] = old


def test_taylor_state_round_trip(resnet):
    model, graph = resnet
    a = get_importance("taylor")(graph)
    for seed in range(2):
        backward(model, seed)
        a.accumulate()
    b = get_importance("taylor")(graph)
    b.load_state_dict(a.state_dict())
    assert b.count == 2
    for gid, s in a.scores().items():
        np.testing.assert_array_equal(b.scores()[gid], s)
    with pytest.raises(ImportanceError, match="channels"):
        b.load_state_dict({"sum": torch.zeros(3), "n": 1.0})


def test_stream_width_ratio_reads_the_residual_streams_against_the_layers_they_feed():
    """MobileNetV2's streams are a sixth of the expansions they feed, a ConvNeXt's a
    quarter, a ResNet-18's as wide as its blocks (their first convolutions; the next
    stage's are twice as wide), a bottleneck ResNet's four times; a network without
    residual sums has none."""
    from halp_trt.graph import ChannelGraph
    from halp_trt.importance import stream_width_ratio
    from halp_trt.models import create_model

    def ratio(model):
        return stream_width_ratio(ChannelGraph(model.eval(), torch.randn(1, 3, 16, 16)))

    assert ratio(create_model("mobilenetv2_cifar")) == pytest.approx(1 / 6)
    # each stream feeds its stage's second block (1) and, but the last, the next stage's
    # first (1/2): eight pairs, three halvings
    assert ratio(create_model("resnet18_cifar")) == pytest.approx(0.5 ** (3 / 8))
    assert ratio(create_model("resnet26_bottleneck_cifar")) == pytest.approx(2.972, abs=1e-3)
    # a ConvNeXt's streams feed only its blocks' 4x expansions (the depthwise 7x7 on the
    # stream writes the stream's own channels; the stride-2 convolutions write streams)
    assert ratio(create_model("convnext_cifar")) == pytest.approx(0.25)
    # one stream per stage, written by its blocks' last convolutions and its shortcut
    graph = ChannelGraph(
        create_model("resnet26_bottleneck_cifar").eval(), torch.randn(1, 3, 16, 16)
    )
    assert sorted(graph.group(g).size for g in graph.residual_streams) == [128, 256, 512, 1024]
    plain = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU()
    )
    assert ratio(plain) is None


def test_auto_below_the_switch_chooses_by_the_streams():
    from halp_trt.graph import ChannelGraph
    from halp_trt.importance import AUTO_ABOVE, AUTO_FISHER_BELOW, choose_importance
    from halp_trt.models import create_model

    def graph(name):
        return ChannelGraph(create_model(name).eval(), torch.randn(1, 3, 16, 16))

    narrow, wide = graph("mobilenetv2_cifar"), graph("resnet26_bottleneck_cifar")
    level = graph("resnet18_cifar")
    assert choose_importance("auto", 0.3, narrow) == "taylor-fisher"
    assert choose_importance("auto", 0.3, graph("convnext_cifar")) == "taylor-fisher"
    assert choose_importance("auto", 0.3, level) == AUTO_ABOVE
    assert choose_importance("auto", 0.3, wide) == AUTO_ABOVE
    # from the switch up, and for a named criterion, the streams' width does not matter
    assert choose_importance("auto", AUTO_FISHER_BELOW, narrow) == AUTO_ABOVE
    assert choose_importance("l2", 0.3, wide) == "l2"
    plain = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3))
    assert choose_importance("auto", 0.3, ChannelGraph(plain, torch.randn(1, 3, 16, 16))) == (
        "taylor-fisher"
    )


def test_auto_runs_fisher_at_every_target_where_depthwise_convolutions_read_the_streams():
    """A ConvNeXt's depthwise 7x7 reads each block's stream: ``auto`` runs
    ``taylor-fisher`` there from the switch up too, at its floor (0.1); a MobileNetV2's
    depthwise convolutions read the expansions and its upper branch is unchanged."""
    from halp_trt.graph import ChannelGraph
    from halp_trt.importance import (
        AUTO_ABOVE,
        AUTO_FISHER_BELOW,
        auto_choice,
        choose_importance,
        depthwise_streams,
    )
    from halp_trt.models import create_model
    from halp_trt.prune.pruner import AUTO_ABOVE_MIN_KEEP, AUTO_MIN_KEEP, default_min_keep

    def graph(model):
        return ChannelGraph(model.eval(), torch.randn(1, 3, 16, 16))

    convnext, mnv2 = graph(create_model("convnext_cifar")), graph(create_model("mobilenetv2_cifar"))
    assert depthwise_streams(convnext)
    assert not depthwise_streams(mnv2) and not depthwise_streams(
        graph(create_model("resnet18_cifar"))
    )
    for fraction in (AUTO_FISHER_BELOW, 0.7, 0.9):
        assert auto_choice(fraction, convnext) == (
            "taylor-fisher",
            ", depthwise convolutions on the streams",
        )
        assert default_min_keep("auto", "taylor-fisher", convnext, fraction) == AUTO_MIN_KEEP
        assert choose_importance("auto", fraction, mnv2) == AUTO_ABOVE
        assert default_min_keep("auto", AUTO_ABOVE, mnv2, fraction) == AUTO_ABOVE_MIN_KEEP
    assert choose_importance("auto", 0.3, convnext) == "taylor-fisher"  # below: as before
    assert choose_importance("l2", 0.7, convnext) == "l2"

    class DepthwiseOnStream(nn.Module):
        """Two blocks adding a depthwise-then-pointwise branch to a 16-channel stream."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.dw = nn.ModuleList(nn.Conv2d(16, 16, 3, padding=1, groups=16) for _ in range(2))
            self.pw = nn.ModuleList(nn.Conv2d(16, 16, 1) for _ in range(2))
            self.head = nn.Conv2d(16, 8, 1)  # the stream is not the output: prunable

        def forward(self, x):
            x = self.stem(x)
            for dw, pw in zip(self.dw, self.pw):
                x = x + pw(torch.relu(dw(x)))
            return self.head(x)

    assert depthwise_streams(graph(DepthwiseOnStream()))
    plain = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 3, groups=16), nn.Conv2d(16, 8, 1))
    assert not depthwise_streams(graph(plain))  # a depthwise conv, but no residual stream


def test_auto_names_a_criterion_once_the_target_is_known():
    from halp_trt.importance import (
        AUTO_FISHER_BELOW,
        ImportanceError,
        choose_importance,
        get_importance,
        resolve_importance,
    )

    assert choose_importance("auto", 0.3) == "taylor-fisher"
    assert choose_importance("auto", AUTO_FISHER_BELOW - 0.01) == "taylor-fisher"
    assert choose_importance("auto", AUTO_FISHER_BELOW) == "taylor-weights-mean"
    assert choose_importance("auto", AUTO_FISHER_BELOW * (1 - 1e-12)) == "taylor-weights-mean"
    assert choose_importance("auto", 0.9) == "taylor-weights-mean"
    cls = get_importance("l2")
    assert choose_importance("l2", 0.3) == "l2" and choose_importance(cls, 0.3) is cls
    factory, name = resolve_importance("auto")
    assert name == "auto"
    with pytest.raises(ImportanceError, match="chosen from the latency target"):
        factory(None)
    with pytest.raises(ImportanceError, match="known: auto, "):
        resolve_importance("nope")
