"""The multiple-choice knapsack: optimality against brute force and an exact MILP (HiGHS),
the 0.5 % budget guarantee, exact budget adherence, determinism and user errors."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from halp_trt.errors import PruningError, UserError
from halp_trt.solver import InfeasibleBudgetError, Solution, solve_mckp
from halp_trt.solver import mckp as mckp_module

KINDS = ("random", "stair", "cumsum")


# -- reference solutions ---------------------------------------------------------------


def exact_cost(costs, choice) -> Fraction:
    return sum((Fraction(float(costs[g][k])) for g, k in enumerate(choice)), Fraction(0))


def brute_force(values, costs, budget: float) -> float | None:
    """The true optimum (None when nothing fits), with exact cost arithmetic."""
    best = None
    for choice in itertools.product(*[range(len(v)) for v in values]):
        if exact_cost(costs, choice) <= Fraction(budget):
            value = math.fsum(values[g][k] for g, k in enumerate(choice))
            best = value if best is None else max(best, value)
    return best


def milp_upper_bound(values, costs, budget: float) -> float | None:
    """An upper bound on the optimum at ``budget`` from HiGHS (its dual bound); None if
    the MILP is infeasible. With a 1e-7 gap this is the optimum up to that gap, and being
    an upper bound it can only make the test stricter."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix

    sizes = [len(v) for v in values]
    n = sum(sizes)
    v = np.concatenate([np.asarray(x, float) for x in values])
    c = np.concatenate([np.asarray(x, float) for x in costs])
    rows = np.repeat(np.arange(len(values)), sizes)
    one_each = csr_matrix((np.ones(n), (rows, np.arange(n))), shape=(len(values), n))
    res = milp(
        -v,
        constraints=[
            LinearConstraint(one_each, 1, 1),
            LinearConstraint(c[None, :], -np.inf, budget),
        ],
        integrality=np.ones(n),
        bounds=Bounds(0, 1),
        options={"mip_rel_gap": 1e-7, "time_limit": 120},
    )
    if res.status == 2:  # infeasible
        return None
    assert res.status == 0, res.message
    return -float(res.mip_dual_bound)


def guarantee_budget(costs, budget: float) -> float:
    """The budget at which the default resolution promises the true optimum."""
    c_min = math.fsum(float(np.min(c)) for c in costs)
    return budget - 0.005 * max(abs(budget), budget - c_min)


def instance(rng: np.random.Generator, kind: str, n_groups: int, max_options: int):
    """A random instance of one of three shapes, with a budget between min and max cost.

    random: non-monotone values and costs, some costs negative, some exactly equal.
    stair:  HALP-like: concave increasing values (sorted importances), staircase costs
            (latency steps every few bundles), so many options share a cost.
    cumsum: increasing values and costs with random increments (hard for reductions).
    """
    values, costs = [], []
    for _ in range(n_groups):
        k = int(rng.integers(1, max_options + 1))
        if kind == "random":
            v = rng.random(k) * rng.uniform(0.1, 10)
            c = rng.normal(size=k) * rng.uniform(0.1, 5)
            if k > 2:
                c[rng.integers(k)] = c[rng.integers(k)]  # a duplicate cost
        elif kind == "stair":
            v = np.cumsum(np.sort(rng.random(k))[::-1])
            step = int(rng.integers(1, 17))
            c = rng.uniform(0.01, 1.0) * np.ceil(np.arange(1, k + 1) / step)
        else:
            v = np.cumsum(rng.random(k))
            c = np.cumsum(rng.random(k))
        values.append(v)
        costs.append(c)
    lo = math.fsum(float(c.min()) for c in costs)
    hi = math.fsum(float(c.max()) for c in costs)
    budget = lo + rng.uniform(0.05, 0.95) * (hi - lo)
    return values, costs, max(budget, lo + 1e-9 * max(1.0, abs(lo)))


def check_solution(sol: Solution, values, costs, budget: float) -> None:
    assert len(sol.choice) == len(values)
    assert all(0 <= k < len(v) for k, v in zip(sol.choice, values))
    assert exact_cost(costs, sol.choice) <= Fraction(budget)
    assert sol.value == math.fsum(values[g][k] for g, k in enumerate(sol.choice))
    assert sol.cost == math.fsum(costs[g][k] for g, k in enumerate(sol.choice))


# -- optimality ------------------------------------------------------------------------


def test_integer_costs_match_brute_force_exactly():
    rng = np.random.default_rng(11)
    for _ in range(300):
        n_groups = int(rng.integers(1, 5))
        values = [rng.normal(size=int(rng.integers(1, 5))) for _ in range(n_groups)]
        costs = [rng.integers(-5, 11, size=v.size).astype(float) for v in values]
        budget = float(rng.integers(-10, 25))
        best = brute_force(values, costs, budget)
        if best is None:
            with pytest.raises(InfeasibleBudgetError):
                solve_mckp(values, costs, budget)
            continue
        sol = solve_mckp(values, costs, budget)
        check_solution(sol, values, costs, budget)
        assert sol.value == pytest.approx(best, rel=1e-12, abs=1e-12)


def test_real_costs_within_bound_of_brute_force():
    rng = np.random.default_rng(12)
    for _ in range(300):
        n_groups = int(rng.integers(1, 5))
        values = [rng.normal(size=int(rng.integers(1, 6))) for _ in range(n_groups)]
        costs = [rng.normal(size=v.size) for v in values]
        budget = float(rng.normal() * 2)
        best = brute_force(values, costs, budget)
        if best is None:
            with pytest.raises(InfeasibleBudgetError):
                solve_mckp(values, costs, budget)
            continue
        sol = solve_mckp(values, costs, budget)
        check_solution(sol, values, costs, budget)
        assert sol.value <= best + 1e-12
        reference = brute_force(values, costs, guarantee_budget(costs, budget))
        if reference is not None:
            assert sol.value >= reference - 1e-12


@pytest.mark.parametrize("kind", KINDS)
def test_within_bound_of_milp(kind):
    """70 instances per kind (210 in all): 2-60 groups, 1-256 options, total options
    capped at 600 so that HiGHS stays fast; the slow sweep below lifts the cap."""
    rng = np.random.default_rng(KINDS.index(kind))
    checked = 0
    for _ in range(70):
        n_groups = int(rng.integers(2, 61))
        max_options = int(np.exp(rng.uniform(0, math.log(256))))
        max_options = max(1, min(max_options, 600 // n_groups))
        values, costs, budget = instance(rng, kind, n_groups, max_options)
        sol = solve_mckp(values, costs, budget)
        check_solution(sol, values, costs, budget)
        upper = milp_upper_bound(values, costs, guarantee_budget(costs, budget))
        if upper is not None:
            assert sol.value >= upper - 1e-9 * max(1.0, abs(upper)), (n_groups, max_options)
            checked += 1
    assert checked >= 50  # most budgets leave room for the 0.5 % reference


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_within_bound_of_milp_full_size(kind):
    rng = np.random.default_rng(100 + KINDS.index(kind))
    for _ in range(8):
        n_groups = int(rng.integers(2, 61))
        values, costs, budget = instance(rng, kind, n_groups, 256)
        sol = solve_mckp(values, costs, budget)
        check_solution(sol, values, costs, budget)
        upper = milp_upper_bound(values, costs, guarantee_budget(costs, budget))
        if upper is not None:
            assert sol.value >= upper - 1e-9 * max(1.0, abs(upper))
        optimum = milp_upper_bound(values, costs, budget)
        assert sol.value <= optimum + 1e-9 * max(1.0, abs(optimum))


def test_explicit_resolution_keeps_its_weaker_bound():
    rng = np.random.default_rng(13)
    for _ in range(100):
        n_groups = int(rng.integers(1, 4))
        values = [rng.random(int(rng.integers(1, 6))) for _ in range(n_groups)]
        costs = [rng.random(v.size) for v in values]
        c_min = math.fsum(float(c.min()) for c in costs)
        budget = c_min + float(rng.random()) * n_groups
        sol = solve_mckp(values, costs, budget, resolution=20)
        check_solution(sol, values, costs, budget)
        # (G + 2) cells of loss at most, G counting every group here (an upper bound).
        reference = brute_force(values, costs, budget - (n_groups + 2) * (budget - c_min) / 20)
        if reference is not None:
            assert sol.value >= reference - 1e-12


def test_finer_resolution_never_does_worse_than_the_guarantee():
    rng = np.random.default_rng(14)
    values, costs, budget = instance(rng, "cumsum", 20, 40)
    coarse = solve_mckp(values, costs, budget, resolution=50)
    fine = solve_mckp(values, costs, budget, resolution=200_000)
    default = solve_mckp(values, costs, budget)
    for sol in (coarse, fine, default):
        check_solution(sol, values, costs, budget)
    assert fine.value >= default.value - 0.005 * fine.value
    assert fine.value >= coarse.value


# -- budget, determinism, special inputs ----------------------------------------------


def test_large_offsets_never_exceed_the_budget():
    """Costs near 1e12 with differences near 1e-3: float sums are inexact here."""
    rng = np.random.default_rng(15)
    for _ in range(50):
        values = [rng.random(8) for _ in range(6)]
        costs = [1e12 + np.cumsum(rng.random(8)) * 1e-3 for _ in range(6)]
        budget = math.fsum(float(c.min()) for c in costs) + float(rng.random()) * 0.02
        try:
            sol = solve_mckp(values, costs, budget)
        except InfeasibleBudgetError:
            assert sum(Fraction(float(c.min())) for c in costs) > Fraction(budget)
            continue
        check_solution(sol, values, costs, budget)


def test_same_inputs_same_plan():
    rng = np.random.default_rng(16)
    for kind in KINDS:
        values, costs, budget = instance(rng, kind, 30, 64)
        first = solve_mckp(values, costs, budget)
        as_lists = solve_mckp([v.tolist() for v in values], [c.tolist() for c in costs], budget)
        assert first == as_lists == solve_mckp(values, costs, budget)


def test_ties_go_to_the_cheapest_option():
    # Every option worth the same: the cheapest of each group, whatever the budget.
    values = [[1.0, 1.0, 1.0], [2.0, 2.0]]
    costs = [[3.0, 1.0, 2.0], [5.0, 4.0]]
    assert solve_mckp(values, costs, 100.0).choice == (1, 1)
    # Equal value and equal cost: the lower index.
    assert solve_mckp([[1.0, 1.0]], [[2.0, 2.0]], 2.0).choice == (0,)


def test_zero_negative_and_non_monotone_costs():
    values = [[0.0, 5.0, 3.0], [1.0, 4.0], [2.0]]
    costs = [[0.0, -1.0, 2.0], [3.0, -2.0], [0.0]]
    # Options with negative cost pay for others: the best of everything costs -3.
    sol = solve_mckp(values, costs, -3.0)
    assert sol.choice == (1, 1, 0)
    assert sol.value == 11.0 and sol.cost == -3.0
    with pytest.raises(InfeasibleBudgetError):
        solve_mckp(values, costs, -3.5)


def test_budget_exactly_at_the_minimum():
    values = [[1.0, 9.0], [4.0, 2.0, 7.0]]
    costs = [[0.1, 0.2], [0.3, 0.3, 0.7]]
    sol = solve_mckp(values, costs, 0.1 + 0.3)
    assert sol.choice == (0, 0)  # the cheapest options; among equal cost the better value


def test_unconstrained_budget_takes_the_best_of_each_group():
    rng = np.random.default_rng(17)
    values = [rng.random(10) for _ in range(5)]
    costs = [rng.random(10) for _ in range(5)]
    sol = solve_mckp(values, costs, 1e9)
    assert sol.choice == tuple(int(np.argmax(v)) for v in values)


def test_no_groups():
    assert solve_mckp([], [], 0.0) == Solution(choice=(), value=0.0, cost=0.0)
    with pytest.raises(InfeasibleBudgetError):
        solve_mckp([], [], -1.0)


def test_infeasible_budget_names_the_smallest_cost():
    values = [[1.0, 2.0], [1.0]]
    costs = [[2.5, 3.0], [1.25]]
    with pytest.raises(InfeasibleBudgetError) as info:
        solve_mckp(values, costs, 3.0)
    err = info.value
    assert isinstance(err, PruningError) and isinstance(err, UserError)
    assert err.min_cost == 3.75 and err.budget == 3.0
    assert "3.75" in str(err) and "3" in str(err)
    assert "\n" not in str(err)


def test_infeasible_message_tells_nearly_equal_numbers_apart():
    costs = [[0.1], [0.2]]
    with pytest.raises(InfeasibleBudgetError) as info:
        solve_mckp([[1.0], [1.0]], costs, 0.3)  # 0.1 + 0.2 > 0.3 in exact arithmetic
    budget_text, min_text = str(info.value).split(":")[0], str(info.value).split(":")[1]
    assert budget_text.split()[-1] != min_text.split()[-1]


@pytest.mark.parametrize(
    ("values", "costs", "budget", "resolution", "match"),
    [
        ([[1.0]], [[1.0], [2.0]], 1.0, None, "groups"),
        ([[1.0, 2.0]], [[1.0]], 1.0, None, "values"),
        ([[]], [[]], 1.0, None, "no options"),
        ([[float("nan")]], [[1.0]], 1.0, None, "non-finite"),
        ([[1.0]], [[float("inf")]], 1.0, None, "non-finite"),
        ([[1.0]], [[1.0]], float("nan"), None, "budget"),
        ([[1.0]], [[1.0]], 1.0, 0, "resolution"),
        ([[1.0]], [[1.0]], 1.0, 2.5, "resolution"),
    ],
)
def test_malformed_input(values, costs, budget, resolution, match):
    with pytest.raises(ValueError, match=match):
        solve_mckp(values, costs, budget, resolution=resolution)


# -- internal safety paths -------------------------------------------------------------


def test_checkpointed_rows_give_the_same_plan(monkeypatch):
    rng = np.random.default_rng(18)
    values, costs, budget = instance(rng, "cumsum", 25, 30)
    full = solve_mckp(values, costs, budget)
    monkeypatch.setattr(mckp_module, "_ROW_MEMORY", 1)
    assert solve_mckp(values, costs, budget) == full


def test_an_over_budget_dp_answer_is_replaced(monkeypatch):
    """If float rounding ever let the DP pick an over-budget plan, the exact check would
    make it solve again with less capacity. Force one such answer."""
    rng = np.random.default_rng(19)
    values, costs, budget = instance(rng, "cumsum", 10, 20)
    real_pass = mckp_module._dp_pass
    calls = []

    def first_answer_heaviest(pruned, heaviest, cap):
        calls.append(cap)
        if len(calls) == 1:
            return [int(p.index[-1]) for p in pruned]
        return real_pass(pruned, heaviest, cap)

    monkeypatch.setattr(mckp_module, "_dp_pass", first_answer_heaviest)
    sol = solve_mckp(values, costs, budget)
    check_solution(sol, values, costs, budget)
    assert len(calls) >= 2 and calls[1] < calls[0]
