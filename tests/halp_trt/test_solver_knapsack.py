"""HALP's augmented knapsack on real channel graphs: budgets, bundles, minimums, frozen
and alive channels, SP-LAMP scores, both cost models, the exact final check."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from halp_trt.errors import PruningError
from halp_trt.graph import ChannelGraph
from halp_trt.models import resnet20
from halp_trt.solver import COST_MODELS, InfeasibleBudgetError, Plan, solve_budget
from lut_builder.backends.analytic import AnalyticBackend


class FakeTable:
    """A latency table computed on the fly by the analytic roofline backend (the solver
    only needs ``lookup_grid``, ``alignment`` and ``overhead_ms``)."""

    def __init__(
        self, alignment: int = 8, overhead_ms: float = 0.05, fn=None, scale: float = 1.0
    ) -> None:
        self.backend = AnalyticBackend(alignment=alignment)
        self.alignment = alignment
        self.overhead_ms = overhead_ms
        self.scale = scale
        self.fn = fn or self.backend.latency_ms
        self.calls = 0

    def lookup(self, sig, c_in, c_out) -> float:
        return float(self.fn(sig, int(c_in), int(c_out)))

    def lookup_grid(self, sig, c_in, c_out):
        self.calls += 1
        ci, co = np.broadcast_arrays(np.asarray(c_in), np.asarray(c_out))
        flat = [self.lookup(sig, a, b) for a, b in zip(ci.ravel(), co.ravel())]
        return np.array(flat, dtype=float).reshape(ci.shape)


def exact_ms(graph: ChannelGraph, table: FakeTable, widths) -> float:
    total = 0.0
    for name, info in graph.layers.items():
        c_in, c_out = widths[name]
        if c_in and c_out:
            total += table.lookup(info.signature, c_in, c_out)
    return table.scale * total + table.overhead_ms


def full_ms(graph: ChannelGraph, table: FakeTable) -> float:
    return exact_ms(graph, table, {n: (i.c_in, i.c_out) for n, i in graph.layers.items()})


def random_scores(graph: ChannelGraph, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {g.id: rng.gamma(2.0, size=g.size) for g in graph.prunable}


@pytest.fixture(scope="module")
def r20():
    torch.manual_seed(0)
    return ChannelGraph(resnet20(), torch.randn(1, 3, 32, 32))


class TwoBranches(nn.Module):
    """Two prunable groups that share no layer: every layer's latency depends on one
    prunable group only, so the joint cost model is exact for any plan."""

    def __init__(self) -> None:
        super().__init__()
        self.a1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.a2 = nn.Conv2d(16, 4, 3, padding=1)
        self.b1 = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24))
        self.b2 = nn.Conv2d(24, 4, 1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.a2(self.relu(self.a1(x))) + self.b2(self.relu(self.b1(x)))


# -- the plan meets the budget, exactly computed ------------------------------------------


@pytest.mark.parametrize("cost_model", COST_MODELS)
@pytest.mark.parametrize("fraction", [0.35, 0.6, 0.9])
def test_plan_within_budget_and_consistent(r20, cost_model, fraction):
    table = FakeTable()
    budget = fraction * full_ms(r20, table)
    scores = random_scores(r20)
    plan = solve_budget(r20, table, scores, budget, cost_model=cost_model)
    assert plan.cost_model == cost_model
    assert plan.predicted_ms <= budget
    assert plan.widths == r20.widths(plan.keep_counts)
    assert plan.predicted_ms == pytest.approx(exact_ms(r20, table, plan.widths), rel=1e-12)
    assert set(plan.keep) == {g.id for g in r20.prunable}
    for gid, kept in plan.keep.items():
        size = r20.groups[gid].size
        assert len(kept) == size or len(kept) % 8 == 0  # whole bundles, or all
        assert len(kept) >= 8  # at least one bundle by default
        # The kept channels are the most important ones.
        s = scores[gid]
        if len(kept) < size:
            dropped = sorted(set(range(size)) - set(kept))
            assert s[list(kept)].min() >= s[dropped].max()
    assert plan.value == pytest.approx(
        sum(scores[g][list(k)].sum() for g, k in plan.keep.items()), rel=1e-12
    )
    assert 0 < plan.retained <= 1


def test_both_cost_models_use_the_budget(r20, monkeypatch):
    """The joint model lands close under the budget. A single solve of the one-sided
    model, which ignores the consumers' savings, stays well below it (HALP's pricing
    alone); searching the knapsack's budget brings its plan close under it too."""
    from halp_trt.solver import knapsack

    table = FakeTable()
    budget = 0.5 * full_ms(r20, table)
    scores = random_scores(r20)
    joint = solve_budget(r20, table, scores, budget, cost_model="joint")
    one_sided = solve_budget(r20, table, scores, budget, cost_model="one-sided")
    assert 0.97 * budget <= joint.predicted_ms <= budget
    assert 0.97 * budget <= one_sided.predicted_ms <= budget
    assert one_sided.solves > 1
    # The one-sided model's own estimate overestimates: the knapsack was given more
    # than the budget to land within it.
    assert one_sided.model_ms > budget >= one_sided.predicted_ms
    monkeypatch.setattr(knapsack, "MAX_SOLVES", 1)
    single = solve_budget(r20, table, scores, budget, cost_model="one-sided")
    assert single.predicted_ms < 0.8 * budget
    assert single.value < one_sided.value
    assert single.model_ms <= budget  # the model thought it had spent the budget
    # A budget the whole model fits in: nothing to search for.
    monkeypatch.setattr(knapsack, "MAX_SOLVES", 20)
    whole = solve_budget(r20, table, scores, 1.5 * full_ms(r20, table), cost_model="one-sided")
    assert whole.solves == 1 and whole.retained == 1


def test_joint_is_optimal_when_the_model_is_exact():
    model = TwoBranches()
    graph = ChannelGraph(model, torch.randn(1, 3, 16, 16))
    assert len(graph.prunable) == 2
    table = FakeTable(alignment=4)
    rng = np.random.default_rng(3)
    full = full_ms(graph, table)
    minimum = None
    for trial in range(12):
        scores = {g.id: rng.random(g.size) for g in graph.prunable}
        options = {g.id: list(range(4, g.size + 1, 4)) for g in graph.prunable}
        plans = []
        for counts in itertools.product(*options.values()):
            keep_counts = dict(zip(options, counts))
            value = sum(np.sort(scores[g])[::-1][:c].sum() for g, c in keep_counts.items())
            plans.append((exact_ms(graph, table, graph.widths(keep_counts)), value))
        minimum = min(ms for ms, _ in plans)
        budget = minimum + rng.random() * (full - minimum)
        plan = solve_budget(graph, table, scores, budget, cost_model="joint", resolution=10**6)
        best = max(v for ms, v in plans if ms <= budget)
        near = max(v for ms, v in plans if ms <= budget * (1 - 1e-5))
        assert plan.predicted_ms <= budget
        assert near - 1e-9 <= plan.value <= best + 1e-9, trial


def test_tightens_when_the_model_underestimates(r20):
    """A table whose latency grows as the input shrinks: holding inputs at full width,
    the one-sided model underestimates; the exact check must catch it and re-solve."""

    def odd(sig, c_in, c_out):
        return 1e-3 * c_out * (2.0 - c_in / 128.0) * sig.in_hw[0] / 32

    table = FakeTable(fn=odd, overhead_ms=0.0)
    budget = 0.6 * full_ms(r20, table)
    plan = solve_budget(r20, table, random_scores(r20), budget, cost_model="one-sided")
    assert plan.predicted_ms <= budget
    assert plan.solves > 1
    assert plan.predicted_ms == pytest.approx(exact_ms(r20, table, plan.widths), rel=1e-12)


def test_a_joint_iteration_that_keeps_drifting_over_the_budget_tightens(r20, monkeypatch):
    """Re-expanding the joint model around each plan can drift: every plan a few percent
    over the budget and none repeated, so no cycle says to tighten. (Seen on a measured
    MobileNetV2 table: 20 solves over a budget of 0.48 of the dense latency, and the
    solver fell back to every group at its minimum, 0.195.) Here the model's costs
    shrink a little at every solve; the iteration must still return a plan within the
    budget and near it, not the minimum."""
    from halp_trt.solver import knapsack

    group_costs, calls = knapsack._group_costs, [0]

    def drifting(net, choices, ref, cost_model):
        costs, constant = group_costs(net, choices, ref, cost_model)
        calls[0] += 1
        shrink = 0.9 - 0.01 * calls[0]  # underestimates, differently every time
        return [c * shrink for c in costs], constant

    monkeypatch.setattr(knapsack, "_group_costs", drifting)
    table = FakeTable()
    budget = 0.4 * full_ms(r20, table)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fall back to the minimum, so no warning
        plan = solve_budget(r20, table, random_scores(r20), budget, cost_model="joint")
    # Without the tightening: 20 solves over the budget (below).
    assert budget * 0.9 <= plan.predicted_ms <= budget
    assert knapsack.TIGHTEN_AFTER < plan.solves <= knapsack.MAX_SOLVES

    # The loop as it was (never tightening): the joint model meets no plan within the
    # budget in 20 solves. The one-sided model's search does, near the budget, and a
    # warning says which model gave the plan (before it, every group at its minimum).
    calls[0] = 0
    monkeypatch.setattr(knapsack, "TIGHTEN_AFTER", knapsack.MAX_SOLVES + 1)
    with pytest.warns(UserWarning, match=r"no plan within the budget in 20 solves") as seen:
        fallen = solve_budget(r20, table, random_scores(r20), budget, cost_model="joint")
    assert budget * 0.9 <= fallen.predicted_ms <= budget
    assert fallen.cost_model == "one-sided"
    message = str(seen[0].message)
    assert "solved with the one-sided model instead" in message
    assert f"{fallen.predicted_ms / budget:.2f} of the budget" in message


def test_a_tightening_iteration_searches_for_the_plan_nearest_the_budget(r20, monkeypatch):
    """Once tightening (the joint model's re-expansions drifting over the budget), the
    solver does not stop at the first plan within the budget: it brackets the knapsack's
    budget between plans that fit and plans that did not, and ends within
    LOOSEN_WITHIN of the budget. Here the model drifts for 12 solves, then holds; the
    first plan within the budget, where the search used to stop, was 0.93 of it."""
    from halp_trt.solver import knapsack

    group_costs, calls = knapsack._group_costs, [0]

    def drifting(net, choices, ref, cost_model):
        costs, constant = group_costs(net, choices, ref, cost_model)
        calls[0] += 1
        shrink = 0.9 - 0.01 * min(calls[0], 12)
        return [c * shrink for c in costs], constant

    monkeypatch.setattr(knapsack, "_group_costs", drifting)
    budget = 0.4 * full_ms(r20, FakeTable())
    plan = solve_budget(r20, FakeTable(), random_scores(r20), budget, cost_model="joint")
    assert plan.solves > knapsack.TIGHTEN_AFTER
    assert budget * (1 - knapsack.LOOSEN_WITHIN) <= plan.predicted_ms <= budget


def test_the_search_of_the_knapsack_budget_brackets_and_stops():
    """_next_room: tighten by the overshoot, loosen in proportion to the shortfall,
    interpolate inside a bracket (kept off its ends), stop when it is too narrow."""
    from halp_trt.solver.knapsack import BRACKET_RESOLUTION, _next_room

    assert _next_room(10.0, None, None, 10.0, 0.5) == pytest.approx(9.5)
    assert _next_room(10.0, (12.0, 8.0), None, 12.0, -2.0) == pytest.approx(15.0)
    # Interpolated: the budget's latency is a quarter of the way from 8 to 16 ms.
    assert _next_room(10.0, (12.0, 8.0), (16.0, 16.0), 16.0, 6.0) == pytest.approx(13.0)
    # Kept off the ends when the latencies say the budget is right at one of them.
    assert _next_room(10.0, (12.0, 9.999), (16.0, 30.0), 16.0, 20.0) == pytest.approx(12.4)
    narrow = 12.0 + BRACKET_RESOLUTION * 10.0 / 2
    assert _next_room(10.0, (12.0, 9.0), (narrow, 11.0), narrow, 1.0) is None


def test_negative_overhead_is_part_of_the_prediction(r20):
    table = FakeTable(overhead_ms=-0.01)
    budget = 0.6 * full_ms(r20, table)
    plan = solve_budget(r20, table, random_scores(r20), budget)
    assert plan.overhead_ms == -0.01
    assert plan.predicted_ms <= budget
    assert plan.predicted_ms == pytest.approx(exact_ms(r20, table, plan.widths), rel=1e-12)


@pytest.mark.parametrize("cost_model", ["joint", "one-sided"])
def test_affine_latency_model_scale_is_part_of_the_prediction(r20, cost_model):
    """With ``scale * layers + overhead`` the plan stays within budget, its prediction is
    exact, and it is the plan of the same problem stated additively."""
    affine = FakeTable(overhead_ms=-0.02, scale=1.3)
    budget = 0.6 * full_ms(r20, affine)
    plan = solve_budget(r20, affine, random_scores(r20), budget, cost_model=cost_model)
    assert (plan.scale, plan.overhead_ms) == (1.3, -0.02)
    assert plan.predicted_ms <= budget
    assert plan.predicted_ms == pytest.approx(exact_ms(r20, affine, plan.widths), rel=1e-12)
    if cost_model == "joint":  # one-sided HALP pricing leaves budget unspent by design
        assert plan.predicted_ms >= 0.9 * budget
    # The same problem stated additively (budget mapped through the line) gives the
    # same widths: the scale only changes units.
    plain = FakeTable(overhead_ms=0.0, scale=1.0)
    same = solve_budget(
        r20, plain, random_scores(r20), (budget + 0.02) / 1.3, cost_model=cost_model
    )
    assert same.keep_counts == plan.keep_counts


# -- scores: any vector; SP-LAMP keeps its strongest channel ----------------------------


def sp_lamp(norms: np.ndarray) -> np.ndarray:
    """SP-LAMP: squared norms sorted ascending, score = own / sum of it and all larger."""
    sq = norms.astype(float) ** 2
    order = np.argsort(sq, kind="stable")
    suffix = np.cumsum(sq[order][::-1])[::-1]
    scores = np.empty_like(sq)
    scores[order] = sq[order] / suffix
    return scores


@pytest.mark.parametrize("cost_model", COST_MODELS)
def test_sp_lamp_strongest_channel_always_kept(r20, cost_model):
    rng = np.random.default_rng(5)
    table = FakeTable()
    full = full_ms(r20, table)
    for fraction in (0.3, 0.45, 0.7):
        scores = {g.id: sp_lamp(rng.lognormal(size=g.size)) for g in r20.prunable}
        for s in scores.values():
            assert s.max() == 1.0
        plan = solve_budget(r20, table, scores, fraction * full, cost_model=cost_model)
        for gid, kept in plan.keep.items():
            assert int(np.argmax(scores[gid])) in kept


def test_sp_lamp_scores_of_the_importance_registry(r20):
    """The project's own SP-LAMP criterion: its strongest channel per group scores 1 and
    survives every budget."""
    importance = pytest.importorskip("halp_trt.importance")
    scores = importance.get_importance("sp-lamp")(r20).scores()
    table = FakeTable()
    minimum = exact_ms(r20, table, r20.widths({g.id: 8 for g in r20.prunable}))
    for budget in (minimum, 0.4 * full_ms(r20, table), 0.6 * full_ms(r20, table)):
        plan = solve_budget(r20, table, scores, budget)
        for gid, kept in plan.keep.items():
            assert scores[gid].max() == pytest.approx(1.0)
            assert int(np.argmax(scores[gid])) in kept


def test_any_score_vector_is_accepted(r20):
    table = FakeTable()
    budget = 0.5 * full_ms(r20, table)
    rng = np.random.default_rng(6)
    signed = {g.id: rng.normal(size=g.size) for g in r20.prunable}  # negative scores too
    plan = solve_budget(r20, table, signed, budget)
    assert plan.predicted_ms <= budget
    as_lists = {g: s.tolist() for g, s in signed.items()}
    assert solve_budget(r20, table, as_lists, budget) == plan


def test_equal_scores_keep_the_lower_indices(r20):
    table = FakeTable()
    flat = {g.id: np.ones(g.size) for g in r20.prunable}
    plan = solve_budget(r20, table, flat, 0.5 * full_ms(r20, table))
    for kept in plan.keep.values():
        assert kept == tuple(range(len(kept)))


# -- options: bundles, minimums, frozen and alive channels, removal ---------------------


def test_bundle_from_table_alignment_or_given(r20):
    scores = random_scores(r20)
    table = FakeTable(alignment=4)
    budget = 0.5 * full_ms(r20, table)
    plan = solve_budget(r20, table, scores, budget)
    assert set(plan.bundles.values()) == {4}
    assert all(len(k) % 4 == 0 for k in plan.keep.values())
    plan = solve_budget(r20, table, scores, 1.4 * budget, bundle=16)
    assert set(plan.bundles.values()) == {16}
    assert all(len(k) % 16 == 0 for k in plan.keep.values())
    gid = r20.prunable[0].id
    plan = solve_budget(r20, table, scores, budget, bundle={gid: 2})
    assert plan.bundles[gid] == 2 and plan.bundles[r20.prunable[1].id] == 4


def test_min_channels(r20):
    table = FakeTable()
    scores = random_scores(r20)
    full = full_ms(r20, table)
    low = solve_budget(r20, table, scores, 0.6 * full, min_channels=12)
    assert all(len(k) >= 16 for k in low.keep.values())  # 12 rounded up to whole bundles
    gid = r20.prunable[0].id
    per_group = solve_budget(r20, table, scores, 0.3 * full, min_channels={gid: 16})
    assert len(per_group.keep[gid]) >= 16


def test_min_keep_is_a_floor_per_group_as_a_fraction_of_its_width(r20):
    table = FakeTable()
    scores = random_scores(r20)
    full = full_ms(r20, table)
    free = solve_budget(r20, table, scores, 0.3 * full)
    assert min(len(k) for k in free.keep.values()) == 8  # without a floor: one bundle
    half = {g.id: min(g.size, -(-g.size // 2 // 8) * 8) for g in r20.prunable}  # bundles
    floor = solve_budget(r20, table, scores, 0.45 * full, min_keep=0.5)
    assert all(len(kept) >= half[gid] for gid, kept in floor.keep.items())
    assert floor.predicted_ms <= 0.45 * full
    free = solve_budget(r20, table, scores, 0.45 * full)
    assert any(len(kept) < half[gid] for gid, kept in free.keep.items())
    # The floor makes a budget infeasible that was not, and the error says why.
    with pytest.raises(InfeasibleBudgetError, match="at least 0.9 of its channels"):
        solve_budget(r20, table, scores, 0.3 * full, min_keep=0.9)


def test_frozen_and_alive_groups(r20):
    table = FakeTable()
    scores = random_scores(r20)
    budget = 0.5 * full_ms(r20, table)
    frozen = r20.prunable[1].id
    plan = solve_budget(r20, table, scores, budget, frozen=[frozen])
    assert plan.keep[frozen] == tuple(range(r20.groups[frozen].size))
    assert frozen not in plan.bundles
    # Channels pruned before never come back; a frozen group keeps its alive ones.
    alive = {g: k[: max(8, len(k) - 8)] for g, k in plan.keep.items()}
    again = solve_budget(r20, table, scores, 0.8 * budget, alive=alive, frozen=[frozen])
    for gid, kept in again.keep.items():
        assert set(kept) <= set(alive[gid])
    assert again.keep[frozen] == tuple(alive[frozen])
    assert again.predicted_ms <= 0.8 * budget


def test_whole_group_removal_only_when_asked(r20):
    table = FakeTable()
    scores = random_scores(r20)
    full = full_ms(r20, table)
    default = solve_budget(r20, table, scores, 0.3 * full)
    assert min(len(k) for k in default.keep.values()) >= 8
    # Make one group worthless: with removal allowed, it goes entirely.
    gid = r20.prunable[-3].id
    cheap = {**scores, gid: np.zeros(r20.groups[gid].size)}
    removed = solve_budget(r20, table, cheap, 0.3 * full, allow_removal=True)
    assert removed.keep[gid] == ()
    assert removed.predicted_ms <= 0.3 * full
    assert removed.predicted_ms == pytest.approx(exact_ms(r20, table, removed.widths))


# -- determinism and errors --------------------------------------------------------------


@pytest.mark.parametrize("cost_model", COST_MODELS)
def test_same_inputs_same_plan(r20, cost_model):
    table = FakeTable()
    budget = 0.45 * full_ms(r20, table)
    a = solve_budget(r20, table, random_scores(r20, 9), budget, cost_model=cost_model)
    b = solve_budget(r20, table, random_scores(r20, 9), budget, cost_model=cost_model)
    assert a == b and a.to_dict() == b.to_dict()


def test_infeasible_budget_names_the_smallest_latency(r20):
    table = FakeTable()
    scores = random_scores(r20)
    minimum = exact_ms(r20, table, r20.widths({g.id: 8 for g in r20.prunable}))
    with pytest.raises(InfeasibleBudgetError) as info:
        solve_budget(r20, table, scores, 0.5 * minimum)
    assert isinstance(info.value, PruningError)
    assert info.value.min_cost == pytest.approx(minimum)
    assert f"{minimum:.6g} ms" in str(info.value)
    # Exactly the minimum is feasible, and gives every group its minimum.
    plan = solve_budget(r20, table, scores, minimum)
    assert set(plan.keep_counts.values()) == {8}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cost_model": "both"}, "cost model"),
        ({"bundle": 0}, "bundle"),
        ({"min_channels": 0}, "min_channels"),
        ({"min_keep": 1.0}, "min_keep"),
        ({"min_keep": -0.1}, "min_keep"),
        ({"min_keep": "half"}, "min_keep"),
        ({"frozen": [999]}, "frozen"),
        ({"alive": {999: [0]}}, "not a prunable group"),
        ({"budget_ms": float("nan")}, "finite"),
    ],
)
def test_bad_settings(r20, kwargs, match):
    table = FakeTable()
    args = {"budget_ms": 0.5 * full_ms(r20, table), **kwargs}
    with pytest.raises(PruningError, match=match):
        solve_budget(r20, table, random_scores(r20), **args)


def test_bad_scores(r20):
    table = FakeTable()
    budget = 0.5 * full_ms(r20, table)
    scores = random_scores(r20)
    gid = r20.prunable[0].id
    with pytest.raises(PruningError, match="no importance"):
        solve_budget(r20, table, {g: s for g, s in scores.items() if g != gid}, budget)
    with pytest.raises(PruningError, match="channels but"):
        solve_budget(r20, table, {**scores, gid: scores[gid][:-1]}, budget)
    nan = scores[gid].copy()
    nan[0] = math.nan
    with pytest.raises(PruningError, match="not finite"):
        solve_budget(r20, table, {**scores, gid: nan}, budget)


# -- a real latency table ------------------------------------------------------------------


def test_with_a_lut_builder_table(tmp_path):
    """The table lut-builder writes (here filled by the analytic backend)."""
    build = pytest.importorskip("lut_builder.build")
    from lut_builder import LatencyTable, predict_latency

    torch.manual_seed(0)
    model, x = resnet20(), torch.randn(1, 3, 32, 32)
    build.build_table(tmp_path / "t.db", model, x, AnalyticBackend(alignment=8))
    graph = ChannelGraph(model, x)
    with LatencyTable.open(tmp_path / "t.db") as table:
        full = predict_latency(
            table, [(i.signature, i.c_in, i.c_out) for i in graph.layers.values()]
        )
        for cost_model in COST_MODELS:
            plan = solve_budget(
                graph, table, random_scores(graph), 0.5 * full, cost_model=cost_model
            )
            layers = [(graph.layers[n].signature, *plan.widths[n]) for n in graph.layers]
            assert plan.predicted_ms == pytest.approx(predict_latency(table, layers), rel=1e-9)
            assert plan.predicted_ms <= 0.5 * full
            assert Plan.from_dict(plan.to_dict()) == plan
