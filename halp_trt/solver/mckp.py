"""Exact multiple-choice knapsack (MCKP) by dynamic programming over a discretised budget.

Every group offers options with a value and a real cost; exactly one option per group is
chosen so that the total value is as large as possible and the total cost stays within
the budget. HALP's channel selection is such a problem (option k of a layer = keep its k
most important channel bundles), but nothing here knows about channels.

Discretisation and its guarantee
--------------------------------
Costs are real numbers (latencies in milliseconds), so the budget is cut into cells of
width ``u`` and each option's cost is rounded *up* to whole cells. First every group is
shifted by its cheapest option (``c' = c - min_k c``, so zero, negative and non-monotone
costs all become non-negative and the cheapest option weighs nothing); the shifted
budget is ``B' = B - C_min`` with ``C_min`` the sum of the groups' minima. The DP then
keeps, for every whole number of cells ``b <= Cap = floor(B'/u)``, the best value whose
rounded weight is at most ``b``.

*Never over budget.* A choice of rounded weight ``<= Cap`` has real shifted cost
``<= Cap * u <= B'``. Floating-point rounding cannot break this: weights are inflated by
a relative ``1e-9`` before rounding up, ``Cap`` is deflated by the same, and the chosen
plan's cost is finally checked in exact rational arithmetic (``fractions.Fraction``);
if that check ever failed, the DP would run again with a smaller capacity.

*Near-optimal.* Let ``G`` be the number of groups that have a real choice (some option
costs more than the group's cheapest and is worth more). Rounding up adds less than one
cell per such group. So any plan ``x`` whose real cost is at most ``B - s`` has rounded
weight ``< (B' - s)/u + G``, which is at most ``Cap`` as soon as ``s >= (G + 2) u`` (the
``+ 2`` absorbs the ``1e-9`` inflations). The DP therefore finds a value at least the
true optimum at budget ``B - s``. The default resolution takes
``s = 0.005 * max(|B|, B - C_min)`` (at least 0.5 % of the budget, and of the shifted
budget when costs are negative) and ``u = s / (G + 2)``, i.e. about ``200 (G + 2)`` cells.
With an explicit ``resolution`` (cells across ``B - C_min``), ``s = (G + 2) u`` with
``u = (B - C_min) / resolution``. When every cost is an integer and ``u <= 1``, cells of
width 1 are used instead: no rounding at all, so the DP is exact.

*Exact reduction first.* For any multiplier ``lam >= 0`` and any plan ``x`` within the
budget, ``value(x) <= L - sum_g gap_g(x_g)`` with ``L = lam B + sum_g top_g``,
``top_g = max_k (v_gk - lam c_gk)`` and ``gap_g(k) = top_g - (v_gk - lam c_gk) >= 0``.
A feasible incumbent of value ``z`` (the Lagrangian plan at a ``lam`` found by bisection)
therefore rules out every option whose gap exceeds ``L - z``: no plan better than the
incumbent uses it. The DP runs on the options that remain (shifted by their own minima,
``G`` counted over them, ``s`` unchanged: the argument above goes through, with a
coarser grid); the better of its answer and the incumbent is returned, so the guarantee
holds as stated. When the best option of every
group fits together, that choice is returned directly (it is optimal).

Speed
-----
Per group: options are first rounded, then dominated ones dropped (an option survives
only if it is worth strictly more than every option of no larger weight), so a staircase
of latencies collapses to its steps. The DP row update ``new[b] = max_k old[b - w_k] +
v_k`` runs as two in-place NumPy passes per surviving option. Each row only covers the
cells that matter: no more than the heaviest weight the groups so far can reach, and
no fewer than the capacity minus the heaviest weight the remaining groups can add
(lighter states can never reach the capacity, where backtracking starts). Instead of an
argmax array per group the rows are kept (float64) and the choice is recovered by
recomputing the same float sums while backtracking: the recomputation is bit-for-bit
the forward one, so equality is exact. When rows would take more than ``_ROW_MEMORY``
bytes, only every s-th row is kept and the ones in between are recomputed during
backtracking (about one more DP pass).

Ties are broken deterministically: options are ordered by (cost, -value, index) within
a group; backtracking starts at the capacity and takes, from the last group to the
first, the lightest option that reaches the optimum (then the cheapest in real cost,
then the lowest index); between the DP's plan and the incumbent the higher value wins,
then the lower cost, then the DP's plan.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from halp_trt.errors import PruningError

#: Default guarantee: the value is at least the optimum at this fraction less budget.
DEFAULT_SLACK = 0.005
#: Relative inflation of weights (and deflation of the capacity) that absorbs float error.
_FUZZ = 1e-9
#: Above this many bytes of DP rows, keep only checkpoints and recompute while backtracking.
_ROW_MEMORY = 256 * 2**20


class InfeasibleBudgetError(PruningError):
    """No choice fits the budget: even the cheapest option of every group costs more.

    Attributes:
        budget: the budget that was asked for.
        min_cost: the smallest achievable total cost.
    """

    def __init__(
        self,
        budget: float,
        min_cost: float,
        *,
        what: str = "cost",
        unit: str = "",
        detail: str = "every group at its cheapest option",
    ) -> None:
        self.budget = budget
        self.min_cost = min_cost
        b, m = _distinct(budget, min_cost)
        super().__init__(
            f"infeasible budget {b}{unit}: the smallest achievable {what} is {m}{unit} ({detail})"
        )


def _distinct(a: float, b: float) -> tuple[str, str]:
    """Format two numbers with as few digits (at least 6) as tell them apart."""
    for digits in range(6, 18):
        sa, sb = f"{a:.{digits}g}", f"{b:.{digits}g}"
        if sa != sb:
            break
    return sa, sb


@dataclass(frozen=True)
class Solution:
    """One option per group.

    Attributes:
        choice: ``choice[g]`` is the index of the option taken in group ``g``.
        value: the total value of the choice (``math.fsum`` of the chosen values).
        cost: the total cost of the choice (``math.fsum`` of the chosen costs).
    """

    choice: tuple[int, ...]
    value: float
    cost: float


@dataclass
class _Group:
    """A group after shifting, rounding and dominance pruning (options by weight)."""

    index: np.ndarray  # original option indices, ascending weight
    weight: np.ndarray  # int64, strictly ascending, weight[0] == 0
    value: np.ndarray  # float64, strictly ascending


def _as_groups(values, costs) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if len(values) != len(costs):
        raise ValueError(f"values has {len(values)} groups but costs has {len(costs)}")
    vs, cs = [], []
    for g, (v, c) in enumerate(zip(values, costs)):
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        c = np.asarray(c, dtype=np.float64).reshape(-1)
        if v.shape != c.shape:
            raise ValueError(f"group {g}: {v.size} values but {c.size} costs")
        if v.size == 0:
            raise ValueError(f"group {g} has no options")
        if not (np.isfinite(v).all() and np.isfinite(c).all()):
            raise ValueError(f"group {g} has a non-finite value or cost")
        vs.append(v)
        cs.append(c)
    return vs, cs


def _prune(index: np.ndarray, weight: np.ndarray, value: np.ndarray, cost: np.ndarray) -> _Group:
    """Keep options worth strictly more than every option of no larger weight."""
    # Sort by weight, then best value, then cheapest real cost, then index.
    order = np.lexsort((index, cost, -value, weight))
    w, v, i = weight[order], value[order], index[order]
    # An option survives if its value beats the running maximum of all lighter options;
    # the first of each weight (the best) is the only candidate at that weight.
    prev_best = np.maximum.accumulate(v)
    keep = np.ones(v.size, dtype=bool)
    keep[1:] = v[1:] > prev_best[:-1]
    return _Group(index=i[keep], weight=w[keep], value=v[keep])


@dataclass
class _Row:
    """DP over the first g groups: ``value[i]`` is the best value of weight ``<= lo + i``.

    Cells below ``lo`` are never needed (the remaining groups cannot bring a plan back up
    to the capacity from there); above ``lo + len - 1`` the value no longer grows.
    """

    lo: int
    value: np.ndarray

    @property
    def hi(self) -> int:
        return self.lo + self.value.size - 1


def _advance(old: _Row, grp: _Group, lo: int, hi: int, tmp: np.ndarray) -> _Row:
    """One DP step onto cells ``[lo, hi]``: ``new[b] = max_k old[b - w_k] + v_k``."""
    n = hi - lo + 1
    src = old.value
    if hi > old.hi:  # past its end the old row stays at its last value
        src = np.concatenate([src, np.full(hi - old.hi, src[-1])])
    base = lo - old.lo  # >= 0: lo never decreases from one group to the next
    new = src[base : base + n] + grp.value[0]  # weight[0] == 0
    for w, v in zip(grp.weight[1:].tolist(), grp.value[1:].tolist()):
        d = base - w  # new cell i reads old cell i + d
        i0 = max(0, -d)  # cells lighter than w cannot take this option
        if i0 >= n:
            break
        m = n - i0
        np.add(src[i0 + d : i0 + d + m], v, out=tmp[:m])
        np.maximum(new[i0:], tmp[:m], out=new[i0:])
    return _Row(lo, new)


def _pick(old: _Row, grp: _Group, b: int, target: float) -> tuple[int, int]:
    """The lightest option k with ``old[b - w_k] + v_k == target``; returns (k, b - w_k).

    The sums are the forward pass's own float operations, so equality is exact.
    """
    ks = np.flatnonzero(grp.weight <= b - old.lo)
    rest = b - grp.weight[ks]
    cand = old.value[np.minimum(rest, old.hi) - old.lo] + grp.value[ks]
    hit = np.flatnonzero(cand == target)
    if hit.size == 0:
        raise AssertionError("MCKP backtracking lost the optimum")
    j = int(hit[0])
    return int(ks[j]), int(rest[j])


def _exact_sum(xs: Sequence[float]) -> Fraction:
    return sum((Fraction(x) for x in xs), Fraction(0))


class _Flat:
    """All options in one array, each group sorted by (cost, -value, index).

    With that order the first option of a group that maximises ``value - lam * cost`` is
    the cheapest such option, which makes every plan derived here deterministic.
    """

    def __init__(self, vs: list[np.ndarray], cs: list[np.ndarray]) -> None:
        orders = [np.lexsort((np.arange(v.size), -v, c)) for v, c in zip(vs, cs)]
        self.index = np.concatenate(orders)  # option index within its group
        self.value = np.concatenate([v[o] for v, o in zip(vs, orders)])
        self.cost = np.concatenate([c[o] for c, o in zip(cs, orders)])
        sizes = np.array([v.size for v in vs])
        self.starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.group = np.repeat(np.arange(len(vs)), sizes)
        self.positions = np.arange(self.value.size)

    def best(self, lam: float) -> tuple[np.ndarray, np.ndarray]:
        """Per group, the max of ``value - lam * cost`` and the first position reaching it."""
        r = self.value - lam * self.cost if lam else self.value
        top = np.maximum.reduceat(r, self.starts)
        pos = np.where(r == top[self.group], self.positions, self.positions.size)
        return top, np.minimum.reduceat(pos, self.starts)

    def cost_of(self, pos: np.ndarray) -> float:
        return math.fsum(self.cost[pos].tolist())


def _lagrangian(flat: _Flat, budget: float) -> tuple[float, np.ndarray, np.ndarray]:
    """A multiplier ``lam >= 0`` near the LP optimum, with the bound's pieces.

    Returns ``(lam, top, plan)``: ``top[g] = max_k v - lam c`` and ``plan`` (flat
    positions) maximises it per group and fits the budget (in floating point; the caller
    checks it exactly). Any ``lam >= 0`` gives a valid bound, so the search only needs to
    be close, not exact.
    """

    def feasible(lam: float) -> bool:
        return flat.cost_of(flat.best(lam)[1]) <= budget

    hi = 1.0
    while not feasible(hi):
        hi *= 16.0
        if hi > 1e200:
            break
    while hi > 1e-200 and feasible(hi / 16.0):
        hi /= 16.0
    lo = hi / 16.0 if hi > 1e-200 else 0.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if feasible(mid):
            hi = mid
        else:
            lo = mid
    top, plan = flat.best(hi)
    return hi, top, plan


def _weights(groups, shifted, slack_budget, unit, slack) -> tuple[list[np.ndarray], int]:
    """Integer weights (costs rounded up to cells) and the capacity in cells."""
    n_choice = 0  # groups with a real choice: an affordable option beats the best free one
    for (_, v, _), sc in zip(groups, shifted):
        better = (sc > 0.0) & (sc <= slack_budget) & (v > v[sc == 0.0].max())
        n_choice += bool(better.any())
    if unit is None:
        unit = slack / (n_choice + 2)
    if n_choice == 0 or slack_budget == 0.0 or unit <= 0.0:
        return [np.where(sc == 0.0, 0, 1).astype(np.int64) for sc in shifted], 0
    integral = slack_budget < 2.0**52 and all(bool(np.all(sc == np.floor(sc))) for sc in shifted)
    if integral and unit <= 1.0:
        # Integer costs: cells of width 1 are exact and no finer than asked for.
        cap = int(math.floor(slack_budget))
        return [np.minimum(sc, cap + 1.0).astype(np.int64) for sc in shifted], cap
    cap = int(min(math.floor(slack_budget / unit * (1.0 - _FUZZ)), 2**62))
    weights = []
    for sc in shifted:
        # Clip before the cast: huge costs would overflow int64 (and are unaffordable).
        w = np.minimum(np.ceil(sc * (1.0 + _FUZZ) / unit), cap + 1.0).astype(np.int64)
        w[(sc > 0.0) & (w == 0)] = 1  # a positive cost must never weigh nothing
        weights.append(w)
    return weights, cap


def _dp(
    groups: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    budget: float,
    exact_budget: Fraction,
    unit: float | None,
    slack: float | None,
) -> list[int] | None:
    """Solve the discretised MCKP on ``groups`` of (option id, value, cost) arrays.

    Exactly one of ``unit`` (cell width) and ``slack`` (guarantee; the cell width is then
    ``slack / (G + 2)``) is given. Returns the chosen option ids, or None when no choice
    fits the budget.
    """
    mins = [float(c.min()) for _, _, c in groups]
    if _exact_sum(mins) > exact_budget:
        return None
    slack_budget = max(budget - math.fsum(mins), 0.0)
    shifted = [c - m for (_, _, c), m in zip(groups, mins)]  # exactly 0 where c == min
    weights, cap = _weights(groups, shifted, slack_budget, unit, slack)
    pruned = []
    for (_, v, c), w in zip(groups, weights):
        ok = np.flatnonzero(w <= cap)  # positions within the group's arrays
        pruned.append(_prune(ok, w[ok], v[ok], c[ok]))
    heaviest = np.array([int(p.weight[-1]) for p in pruned], dtype=np.int64)

    while True:
        choice = _dp_pass(pruned, heaviest, min(cap, int(heaviest.sum())))
        costs = [float(c[k]) for (_, _, c), k in zip(groups, choice)]
        if _exact_sum(costs) <= exact_budget:
            return [int(idx[k]) for (idx, _, _), k in zip(groups, choice)]
        if cap == 0:  # every group at an exact minimum, which was checked to fit
            raise AssertionError("MCKP chose an over-budget plan at capacity 0")
        # Only reachable through float rounding far beyond _FUZZ: solve again with less.
        cap -= max(1, cap // 1000)


def _dp_pass(pruned: list[_Group], heaviest: np.ndarray, cap: int) -> list[int]:
    """Forward DP over cells ``[0, cap]`` and backtracking from ``cap``."""
    n_groups = len(pruned)
    after = np.concatenate([[0], np.cumsum(heaviest)])  # after[g]: max weight of g groups
    rest = after[-1] - after  # rest[g]: max weight of the groups from g on
    lo = np.maximum(0, cap - rest)  # lighter states cannot reach cap any more
    hi = np.minimum(cap, after)
    cells = int(np.sum(hi - lo + 1))
    every = 1  # keep every row, or every `every`-th one when they would not fit in memory
    if 8.0 * cells > _ROW_MEMORY:
        every = max(1, math.isqrt(n_groups))
    tmp = np.empty(int(np.max(hi - lo)) + 1)
    rows: dict[int, _Row] = {0: _Row(0, np.zeros(1))}  # rows[g]: DP over the first g groups
    row = rows[0]
    for g, grp in enumerate(pruned):
        row = _advance(row, grp, int(lo[g + 1]), int(hi[g + 1]), tmp)
        if (g + 1) % every == 0 or g + 1 == n_groups:
            rows[g + 1] = row

    def row_before(g: int) -> _Row:
        """DP row over the first g groups, recomputed from the last checkpoint if needed."""
        if g not in rows:
            start = (g // every) * every
            r = rows[start]
            for h in range(start, g):
                r = _advance(r, pruned[h], int(lo[h + 1]), int(hi[h + 1]), tmp)
                rows[h + 1] = r
        return rows[g]

    choice = [0] * n_groups
    b = cap
    target = rows[n_groups].value[-1]
    for g in range(n_groups - 1, -1, -1):
        old = row_before(g)
        k, b = _pick(old, pruned[g], b, target)
        choice[g] = int(pruned[g].index[k])
        target = old.value[min(b, old.hi) - old.lo]
        if every > 1 and g % every == 0:  # drop the rows recomputed for this segment
            for h in [h for h in rows if h % every and h != n_groups]:
                del rows[h]
    return choice


def solve_mckp(
    values: Sequence[Sequence[float]],
    costs: Sequence[Sequence[float]],
    budget: float,
    resolution: int | None = None,
) -> Solution:
    """Choose one option per group, maximising total value with total cost <= budget.

    Args:
        values: ``values[g][k]`` is the value of option ``k`` of group ``g`` (finite reals).
        costs: ``costs[g][k]`` is its cost; any finite reals (zero, negative and
            non-monotone costs are fine).
        budget: the largest allowed total cost.
        resolution: number of DP cells across ``budget - C_min`` (``C_min``: every group
            at its cheapest option); the value is then at least the true optimum at
            budget ``budget - (G + 2) * (budget - C_min) / resolution``. ``None`` picks
            the cell width per instance so that the value is at least the true optimum
            at budget ``budget - 0.005 * max(|budget|, budget - C_min)``, i.e. 0.5 % less
            budget (see the module docstring for the proof).

    Returns:
        A :class:`Solution`. Its cost never exceeds ``budget`` in exact arithmetic.
        The same inputs always give the same choice.

    Raises:
        InfeasibleBudgetError: even the cheapest option of every group exceeds the
            budget; the message states the smallest achievable cost.
        ValueError: malformed input (mismatched lengths, empty groups, NaN/inf,
            non-positive resolution).
    """
    vs, cs = _as_groups(values, costs)
    if not math.isfinite(budget):
        raise ValueError(f"budget must be finite, got {budget!r}")
    if resolution is not None and (int(resolution) != resolution or resolution < 1):
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    budget = float(budget)
    mins = [float(c.min()) for c in cs]
    exact_budget = Fraction(budget)
    if _exact_sum(mins) > exact_budget:
        raise InfeasibleBudgetError(budget, math.fsum(mins))
    if not vs:
        return Solution(choice=(), value=0.0, cost=0.0)

    flat = _Flat(vs, cs)

    def solution(pos: np.ndarray) -> Solution:
        return Solution(
            choice=tuple(int(i) for i in flat.index[pos]),
            value=math.fsum(flat.value[pos].tolist()),
            cost=flat.cost_of(pos),
        )

    def fits(pos: np.ndarray) -> bool:
        return _exact_sum(flat.cost[pos].tolist()) <= exact_budget

    # The best value of every group, cheapest first: optimal whenever it fits.
    _, greedy = flat.best(0.0)
    if fits(greedy):
        return solution(greedy)

    # Reduction (exact): for lam >= 0 and any plan x within budget,
    #   value(x) <= L - sum_g gap_g(x_g),  L = lam*B + sum_g top_g,
    #   gap_g(k) = top_g - (v_gk - lam*c_gk) >= 0.
    # So a plan worth more than a feasible incumbent z uses no option whose gap exceeds
    # L - z. The DP runs on the remaining options; the incumbent covers the rest.
    lam, top, incumbent = _lagrangian(flat, budget)
    if not fits(incumbent):  # float sums can mislead the search; the minima always fit
        incumbent = flat.starts
    z = math.fsum(flat.value[incumbent].tolist())
    bound = lam * budget + math.fsum(top.tolist())
    scale = math.fsum(np.abs(top).tolist()) + lam * (
        abs(budget) + math.fsum(np.maximum.reduceat(np.abs(flat.cost), flat.starts).tolist())
    )
    gap = top[flat.group] - (flat.value - lam * flat.cost)
    keep = gap <= (bound - z) + 1e-9 * scale + 1e-300
    keep[incumbent] = True

    reduced = []
    for g, start in enumerate(flat.starts.tolist()):
        stop = start + vs[g].size
        sel = np.flatnonzero(keep[start:stop]) + start
        reduced.append((sel, flat.value[sel], flat.cost[sel]))
    c_min = math.fsum(mins)
    if resolution is None:
        unit, slack = None, DEFAULT_SLACK * max(abs(budget), budget - c_min)
    else:
        unit, slack = max(budget - c_min, 0.0) / int(resolution), None
    found = _dp(reduced, budget, exact_budget, unit, slack)

    best = solution(incumbent)
    if found is not None:
        other = solution(np.asarray(found, dtype=np.int64))
        if (other.value, -other.cost) >= (best.value, -best.cost):
            best = other
    return best
