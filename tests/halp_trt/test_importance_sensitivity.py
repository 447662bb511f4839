"""The measuring criterion: each group's accuracy or loss at each width, before training."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from halp_trt.errors import PruningError
from halp_trt.graph import ChannelGraph
from halp_trt.importance import ImportanceError, get_importance
from halp_trt.importance.sensitivity import (
    Sensitivity,
    curve_scores,
    measured_widths,
    upper_hull,
)
from halp_trt.prune import Pruner
from halp_trt.train import evaluate, recalibrate_bn

from .test_prune_support import batches, small_resnet, small_resnet_table


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return small_resnet_table(tmp_path_factory)


def fresh(seed: int = 0):
    """ResNet-8 whose BatchNorm statistics differ from what a batch gives (so that the
    re-estimation matters), in eval mode, and its input."""
    torch.manual_seed(seed)
    model = small_resnet()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model.eval(), torch.randn(1, 3, 16, 16)


def test_measured_widths_are_whole_bundles_from_the_floor_spread_evenly():
    assert measured_widths(960, 16, 288) == [288, 416, 544, 688, 816, 944]
    assert measured_widths(64, 16, 32) == [32, 48]
    assert measured_widths(16, 16, 16) == []
    assert measured_widths(48, 8, 8, points=10) == [8, 16, 24, 32, 40]
    assert measured_widths(48, 8, 0, points=10) == [8, 16, 24, 32, 40]  # one bundle at least


def test_upper_hull_is_the_least_concave_majorant():
    xs = np.array([0.0, 2.0, 3.0, 5.0, 8.0])
    ys = np.array([0.0, 1.0, 3.0, 3.5, 3.0])
    got = upper_hull(xs, ys)
    # brute force: the majorant at k is the best chord through two points around it
    want = [
        max(
            ys[i] + (ys[j] - ys[i]) * (k - xs[i]) / (xs[j] - xs[i]) if j > i else ys[i]
            for i in range(len(xs))
            for j in range(i, len(xs))
            if xs[i] <= k <= xs[j]
        )
        for k in range(9)
    ]
    assert got == pytest.approx(want)
    assert (np.diff(got, 2) <= 1e-12).all()


def test_curve_scores_follow_the_curve_in_order_and_stay_positive():
    order = np.array([3, 0, 5, 1, 4, 2, 7, 6])
    # a flat group: nothing lost down to the floor, every channel still worth keeping
    flat = curve_scores(8, order, [2, 4, 6], [0.0, 0.0, 0.0])
    assert (flat > 0).all() and (np.argsort(-flat, kind="stable") == order).all()
    # a concave curve: the prefix sums from each width to the full one are what it loses
    s = curve_scores(8, order, [2, 4, 6], [0.6, 0.2, 0.05])
    ranked = s[order]
    assert (np.diff(ranked) <= 0).all()
    for k, lost in ((2, 0.6), (4, 0.2), (6, 0.05)):
        assert ranked[k:].sum() == pytest.approx(lost, abs=1e-6)
    # a width measured better than a wider one: the hull's fall is floored at zero
    dip = curve_scores(8, order, [2, 4, 6], [0.3, -0.1, 0.0])
    assert (dip > 0).all() and dip[order][4:].sum() == pytest.approx(0.0, abs=1e-6)
    # to a power, the drop's power is what a width loses
    p = curve_scores(8, order, [2, 4, 6], [0.6, 0.2, 0.05], power=2.0)
    assert p[order][2:].sum() == pytest.approx(0.36, abs=1e-6)


def scored_on(model, x, keep, data) -> tuple[float, float]:
    """Loss and accuracy of ``model`` with ``keep`` masked and its BatchNorm statistics
    re-estimated over ``data``, independently of the criterion."""
    m = copy.deepcopy(model)
    if keep:
        ChannelGraph(m, (x,)).mask(keep)
    recalibrate_bn(m, data, len(data), "cpu")
    images = TensorDataset(torch.cat([xb for xb, _ in data]), torch.cat([yb for _, yb in data]))
    return evaluate(m, images)


@pytest.mark.parametrize("name, power, weight", [
    ("sensitivity", 1.0, 0.0), ("sensitivity", 1.0, 0.5), ("sensitivity-loss", 1.0, 0.0),
    ("sensitivity-loss", 4.0, 0.0)])  # fmt: skip
def test_scores_add_up_to_what_each_width_measures(name, power, weight):
    """Each group alone, masked at its measured widths in L2 order with the BatchNorm
    statistics re-estimated: the scores summed from a width to the full group are what
    that width loses (accuracy dropped or loss gained, plus ``weight`` times the loss
    gained, on the concave majorant of the measured points), measured again here on a
    copy; the model is left as it was."""
    model, x = fresh()
    graph = ChannelGraph(model, (x,))
    data = batches(3, seed=2, batch=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    crit = get_importance(name)(graph, power=power, loss_weight=weight)
    options = {g.id: (8, 8) for g in graph.prunable}
    crit.measure(data, options)
    scores = crit.scores()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not model.training
    widths = {g.id: measured_widths(g.size, 8, 8) for g in graph.prunable}
    assert crit.evaluations == 1 + sum(len(w) for w in widths.values())
    full = scored_on(model, x, {}, data)
    assert crit.full == pytest.approx(full)
    at, sign = (1, -1.0) if name == "sensitivity" else (0, 1.0)
    l2 = get_importance("l2")(graph).scores()
    for group in graph.prunable:
        order = np.argsort(-l2[group.id], kind="stable")
        assert (np.argsort(-scores[group.id], kind="stable") == order).all()
        curve = crit.curves[group.id]
        assert curve["widths"] == widths[group.id]
        again = [scored_on(model, x, {group.id: sorted(order[:k].tolist())}, data)
                 for k in widths[group.id]]  # fmt: skip
        assert curve["loss"] == pytest.approx([v[0] for v in again])
        assert curve["accuracy"] == pytest.approx([v[1] for v in again])
        lost = np.array(
            [sign * (v[at] - full[at]) + weight * (v[0] - full[0]) for v in again] + [0.0]
        )
        value = -lost if power == 1 else -(np.maximum(lost, 0) ** power)
        hull = upper_hull(np.array([*widths[group.id], group.size], dtype=float), value)
        ranked = scores[group.id][order]
        for k in widths[group.id]:
            rise = np.maximum(np.diff(hull), 0)[k - widths[group.id][0] :].sum()
            assert ranked[k:].sum() == pytest.approx(rise, rel=1e-4, abs=1e-6)  # float32 sums
        assert (scores[group.id] > 0).all()


def test_the_pruner_measures_before_training_and_plans_within_the_budget(table):
    model, x = fresh(1)
    before = copy.deepcopy(model.state_dict())
    pruner = Pruner(
        model, x, table, "0.6x", importance="sensitivity", schedule="oneshot",
        calibration_batches=2, min_keep=0.25,
    )  # fmt: skip
    record = pruner.calibrate(iter(batches(3, seed=4, batch=8)))
    assert pruner.done and record.predicted_ms <= pruner.target_ms * (1 + 1e-9)
    crit = pruner.importance
    assert crit.evaluations == 1 + sum(len(c["widths"]) for c in crit.curves.values())
    for group in pruner.graph.prunable:  # measured from the pruner's floor, its bundles
        widths = crit.curves[group.id]["widths"]
        assert not widths or widths[0] >= 0.25 * group.size
    assert all(torch.equal(v, before[k]) for k, v in model.named_buffers())
    for k, v in model.named_parameters():  # unchanged but for the masked channels' zeros
        moved = v.detach() != before[k]
        assert (v.detach()[moved] == 0).all(), k
    slim, _ = pruner.finalize()
    with torch.no_grad():
        assert torch.allclose(slim.eval()(x), model.eval()(x), atol=1e-5)


def test_bad_use_is_refused_with_a_clear_error(table):
    model, x = fresh()
    with pytest.raises(PruningError, match="importance sensitivity measures subnets"):
        Pruner(model, x, table, "0.6x", importance="sensitivity", schedule="oneshot")
    pruner = Pruner(
        model, x, table, "0.6x", importance="sensitivity", schedule="oneshot",
        calibration_batches=4,
    )  # fmt: skip
    with pytest.raises(PruningError, match="asked for 4 minibatches and got 2"):
        pruner.calibrate(batches(2))
    assert pruner.importance.evaluations == 0 and not pruner.done
    with pytest.raises(ImportanceError, match="has measured nothing"):
        pruner.importance.scores()
    graph = ChannelGraph(model, (x,))
    with pytest.raises(ImportanceError, match="metric must be 'accuracy' or 'loss'"):
        Sensitivity(graph, metric="f1")
    with pytest.raises(ImportanceError, match="unknown importance 'l3'"):
        Sensitivity(graph, ranking="l3")
    with pytest.raises(ImportanceError, match="ranking must read the weights alone"):
        Sensitivity(graph, ranking="taylor")
    for weight in (-0.1, float("nan")):
        with pytest.raises(ImportanceError, match="loss_weight must be a number >= 0"):
            Sensitivity(graph, loss_weight=weight)
    with pytest.raises(ImportanceError, match="to the accuracy metric only"):
        get_importance("sensitivity-loss")(graph, loss_weight=0.1)
    crit = Sensitivity(graph)
    with pytest.raises(ImportanceError, match="no widths for groups"):
        crit.measure(batches(1), {})
    options = {g.id: (8, 8) for g in graph.prunable}
    # soft targets: no top-1 to score, the loss still measures
    soft = [(xb, torch.softmax(torch.randn(len(xb), 10), 1)) for xb, _ in batches(1)]
    with pytest.raises(ImportanceError, match="use sensitivity-loss"):
        crit.measure(soft, options)
    loss = get_importance("sensitivity-loss")(graph)
    loss.measure(soft, options)
    assert np.isnan(loss.full[1]) and all(np.isfinite(s).all() for s in loss.scores().values())


def test_a_prune_config_asks_for_calibration_batches():
    from halp_trt.config import ConfigError, PruneConfig

    with pytest.raises(ConfigError, match="must be at least 1 with importance sensitivity"):
        PruneConfig(target="0.5x", importance="sensitivity")
    cfg = PruneConfig(
        target="0.5x", importance="sensitivity-loss", schedule="oneshot", calibration_batches=8
    )
    assert cfg.calibration_batches == 8


def test_scores_survive_a_state_dict_round_trip():
    model, x = fresh()
    graph = ChannelGraph(model, (x,))
    crit = Sensitivity(graph)
    assert crit.state_dict() == {"scores": None}
    crit.measure(batches(1, batch=8), {g.id: (8, 8) for g in graph.prunable})
    other = Sensitivity(graph)
    other.load_state_dict(crit.state_dict())
    assert all(np.array_equal(other.scores()[g], s) for g, s in crit.scores().items())
    bad = crit.state_dict()
    bad["scores"] = {g: s[:-1] for g, s in bad["scores"].items()}
    with pytest.raises(ImportanceError, match="fit another model"):
        other.load_state_dict(bad)
