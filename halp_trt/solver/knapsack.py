"""HALP's augmented knapsack: which channels every group keeps under a latency budget.

Per prunable channel group, the (still alive) channels are sorted by a per-channel score
(any score: HALP's Taylor importance, magnitudes, SP-LAMP, ...) and cut into bundles of
``bundle`` channels, the channel alignment of the target (8 for FP16 tensor cores, the
table's measured step by default). Option ``k`` of a group keeps its ``k`` most important
bundles: value = sum of their scores, cost = latency from the table. Exactly one option
per group is chosen by :func:`halp_trt.solver.solve_mckp`. Kept counts are multiples of
the bundle size, or the group's full width.

Latency cost models
-------------------
A layer's latency ``T(c_in, c_out)`` depends on two groups: the one it produces (its
output channels) and the one it consumes (its input channels). A separable knapsack
cannot see that product, so the cost of a group is modelled around reference widths
``n*`` (``W*`` the layer widths they give):

``one-sided`` (HALP)
    A group's cost is the latency of its producer layers as a function of its own width,
    each producer's input width held at its current value (``n*`` = the alive widths).
    Layers that produce no prunable group are a constant. Consumers are ignored, so
    pruning a group is credited only with its producers' savings, and when both sides of
    a layer shrink the model overestimates its latency (tables grow with ``c_in``).

``joint``
    A group's cost covers its producers *and* its consumers, each with the layer's other
    width held at ``W*``: the first-order, separable expansion
    ``T(a, b) ~ T(a, b*) + T(a*, b) - T(a*, b*)``, exact whenever at most one side
    changes and exact for the whole network at ``n = n*``. Its error is second order,
    ``(a - a*)(b - b*)`` for a bilinear cost, and it underestimates when neighbours
    shrink together, so a single jump from the full model to a small budget overshoots
    and a plain re-solve around the answer can oscillate. Hence a continuation: the
    budget is approached in geometric steps from the current latency (at most
    ``HOMOTOPY_STEPS``, about ``HOMOTOPY_RATIO`` each), re-expanding around each step's
    plan; then the knapsack is solved again around its own answer until the widths stop
    changing (a fixed point, where the model equals the exact sum), a plan repeats, or
    ``MAX_SOLVES`` is reached. An iteration that has met no plan within the budget after
    ``TIGHTEN_AFTER`` solves (each re-expansion's plan drifting a few percent over it)
    stops re-expanding and searches the knapsack's budget, as the one-sided model does:
    without that it could end with nothing within the budget and return every group at
    its minimum (a fifth of the latency asked for, where half was). Should it still meet
    none (a bottleneck ResNet's re-solve at 0.48 of the dense latency did, and fell to
    0.07), the budget is solved again with the one-sided model, whose plans it meets.

Either way each plan's latency is computed exactly from every layer's widths via the
table (plus the table's overhead term). The one-sided model (and a joint iteration
searching) then solves again at another knapsack budget: tightened by the overshoot
while every plan is over the budget, loosened in proportion to the shortfall while every
plan is under it (a single one-sided solve lands at 0.55-0.9 of the budget: its model
overestimates whenever both sides of a layer shrink), interpolated between the largest
knapsack budget whose plan fit and the smallest whose plan did not once both are known;
until a plan lands within ``LOOSEN_WITHIN`` under the budget, the bracket is narrower
than ``BRACKET_RESOLUTION`` or ``MAX_SOLVES`` is reached. Among all plans met, the best
one within budget is returned. ``bench/cost_models.py`` compares the two models; its
result chose the default (see ``bench/results/cost_model_*.json``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from halp_trt.errors import PruningError

from .mckp import InfeasibleBudgetError, solve_mckp
from .plan import COST_MODELS, Plan

#: The default latency cost model, chosen by bench/cost_models.py.
DEFAULT_COST_MODEL = "joint"
#: Knapsack solves allowed per call (fixed-point iterations plus budget tightenings).
MAX_SOLVES = 20
#: Continuation of the joint model from the current latency down to the budget: at most
#: this many steps, each lowering the budget by about this factor.
HOMOTOPY_STEPS = 5
HOMOTOPY_RATIO = 1.25
#: Solves after which a joint iteration that has found no plan within the budget stops
#: re-expanding and tightens the knapsack's budget by each overshoot instead.
TIGHTEN_AFTER = 10
#: A plan within the budget and less than this fraction under it ends the search of the
#: knapsack's budget (the one-sided model, and a joint iteration tightening): further
#: solves could gain at most this much latency to spend.
LOOSEN_WITHIN = 0.005
#: The search of the knapsack's budget stops when the budgets that fit and that did not
#: are closer than this fraction of the budget: the knapsack's own discretisation.
BRACKET_RESOLUTION = 1e-4
#: Falling back to every group at its minimum (nothing the cost model proposed was within
#: the budget) warns when that leaves more than this fraction of the budget unspent: a
#: plan far faster than asked has given up importance the budget had room for.
FALLBACK_WARN = 0.1


class TableLike(Protocol):
    """What the solver needs from a latency table (``lut_builder.LatencyTable``)."""

    alignment: int

    def lookup_grid(self, sig: Any, c_in: np.ndarray, c_out: np.ndarray) -> np.ndarray: ...


@dataclass
class _Choice:
    """One group's options: keep the first ``counts[k]`` channels of ``order``."""

    gid: int
    order: np.ndarray  # alive channels, most important first (ties: lower index first)
    counts: np.ndarray  # kept channels per option, ascending
    values: np.ndarray  # retained score per option
    bundle: int

    def kept(self, k: int) -> tuple[int, ...]:
        return tuple(sorted(int(c) for c in self.order[: self.counts[k]]))


def _layer_ms(table: Any, sig: Any, c_in: np.ndarray, c_out: np.ndarray) -> np.ndarray:
    """Table latency for arrays of widths; a layer left with no channel costs nothing."""
    return _batched_ms(table, [(sig, c_in, c_out)])[0]


def _batched_ms(table: Any, requests: Sequence[tuple[Any, Any, Any]]) -> list[np.ndarray]:
    """Latencies for many ``(sig, c_in, c_out)`` width arrays, one table call per signature.

    A table lookup has a fixed cost per call, and networks repeat few signatures many
    times, so requests are pooled by signature. Zero widths (a removed layer) cost 0.
    """
    shaped = []
    pooled: dict[Any, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for i, (sig, c_in, c_out) in enumerate(requests):
        ci, co = np.broadcast_arrays(
            np.asarray(c_in, dtype=np.int64), np.asarray(c_out, dtype=np.int64)
        )
        shaped.append(ci.shape)
        pooled.setdefault(sig, []).append((i, ci.ravel(), co.ravel()))
    out: list[np.ndarray] = [np.zeros(0)] * len(requests)
    for sig, items in pooled.items():
        ci = np.concatenate([c for _, c, _ in items])
        co = np.concatenate([c for _, _, c in items])
        ms = np.zeros(ci.size)
        live = (ci > 0) & (co > 0)
        if live.any():
            ms[live] = np.asarray(table.lookup_grid(sig, ci[live], co[live]), dtype=float)
        start = 0
        for i, c, _ in items:
            out[i] = ms[start : start + c.size].reshape(shaped[i])
            start += c.size
    return out


class _Network:
    """The graph's layers, the table, and the exact network latency of any widths."""

    def __init__(self, graph: Any, table: Any) -> None:
        self.graph = graph
        self.table = table
        # The network latency model: scale * sum(layers) + overhead, calibrated on
        # whole-network measurements (overhead negative when layers timed alone cost
        # more than inside the network).
        self.overhead = float(getattr(table, "overhead_ms", None) or 0.0)
        self.scale = float(getattr(table, "scale", 1.0) or 1.0)
        if not math.isfinite(self.overhead):
            raise PruningError(f"the table's overhead_ms is not finite: {self.overhead!r}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise PruningError(f"the table's scale is not a positive number: {self.scale!r}")

    def total(self, layers_ms: float) -> float:
        """Network latency from the layers' sum."""
        return self.scale * layers_ms + self.overhead

    def layers_budget(self, budget_ms: float) -> float:
        """The largest layers' sum whose network latency is within ``budget_ms``."""
        return (budget_ms - self.overhead) / self.scale

    def widths(self, counts: Mapping[int, int]) -> dict[str, tuple[int, int]]:
        return self.graph.widths(counts)

    def layer_ms(self, widths: Mapping[str, tuple[int, int]]) -> dict[str, float]:
        names = list(self.graph.layers)
        ms = _batched_ms(self.table, [(self.graph.layers[n].signature, *widths[n]) for n in names])
        return {n: float(m) for n, m in zip(names, ms)}

    def latency(self, counts: Mapping[int, int]) -> float:
        """Exact predicted latency (every layer from the table, plus overhead)."""
        return self.total(math.fsum(self.layer_ms(self.widths(counts)).values()))


def _refs(group: Any, layers: Mapping[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    """Producer and consumer layers of a group with their multiplicities."""
    prod = {r.layer: r.multiplicity(group.size) for r in group.producers if r.layer in layers}
    cons = {r.layer: r.multiplicity(group.size) for r in group.consumers if r.layer in layers}
    return prod, cons


def _group_costs(
    net: _Network, choices: Sequence[_Choice], ref: Mapping[int, int], model: str
) -> tuple[list[np.ndarray], float]:
    """Per-group option costs around reference counts ``ref`` and the constant term.

    Returns ``(costs, constant)`` with ``sum_g costs[g][k_g] + constant`` the model's
    estimate of the layers' latency (overhead excluded); exact at ``ref``.
    """
    layers = net.graph.layers
    widths = net.widths(ref)
    base = net.layer_ms(widths)
    counted = dict.fromkeys(layers, 0)
    requests, owner = [], []
    for g, ch in enumerate(choices):
        group = net.graph.groups[ch.gid]
        prod, cons = _refs(group, layers)
        names = list(prod) if model == "one-sided" else list(dict.fromkeys([*prod, *cons]))
        removed = ref[ch.gid] - ch.counts  # channels removed relative to the reference
        for name in names:
            c_in, c_out = widths[name]
            ci = c_in - removed * cons[name] if name in cons else np.full_like(removed, c_in)
            co = c_out - removed * prod[name] if name in prod else np.full_like(removed, c_out)
            requests.append((layers[name].signature, ci, co))
            owner.append(g)
            counted[name] += 1
    costs = [np.zeros(ch.counts.size) for ch in choices]
    for g, ms in zip(owner, _batched_ms(net.table, requests)):
        costs[g] += ms
    constant = math.fsum((1 - counted[n]) * base[n] for n in layers)
    return costs, constant


def _bundle_for(table: Any, bundle: int | Mapping[int, int] | None, gid: int) -> int:
    if isinstance(bundle, Mapping):
        b = bundle.get(gid)
        if b is None:
            return _bundle_for(table, None, gid)
    elif bundle is None:
        # The table's alignment, or its grid step when coarser: a table built at
        # ``--step 64`` has measured nothing narrower than 64 channels in a wide layer.
        b = max(getattr(table, "alignment", None) or 1, getattr(table, "step", None) or 1)
    else:
        b = bundle
    if int(b) != b or b < 1:
        raise PruningError(f"bundle size must be a positive integer, got {b!r}")
    return int(b)


def _min_for(min_channels: int | Mapping[int, int] | None, gid: int, bundle: int) -> int:
    m = min_channels.get(gid) if isinstance(min_channels, Mapping) else min_channels
    if m is None:
        return bundle
    if int(m) != m or m < 1:
        raise PruningError(f"min_channels must be a positive integer, got {m!r}")
    return int(m)


def least_option(
    table: Any,
    group: Any,
    alive: int,
    bundle: int | Mapping[int, int] | None = None,
    min_channels: int | Mapping[int, int] | None = None,
    min_keep: float = 0.0,
) -> tuple[int, int]:
    """A group's knapsack bundle and fewest channels kept (its floor), of ``alive``.

    Counts are whole bundles: the table's alignment or grid step (or ``bundle``), a
    multiple of a grouped convolution's ``unit``; the floor is ``min_channels`` (by
    default one bundle) and ``min_keep`` of the group's full width, rounded up to whole
    bundles, at least two units, at most ``alive``.
    """
    b = _bundle_for(table, bundle, group.id)
    unit = getattr(group, "unit", 1)
    if unit > 1:
        b = math.lcm(b, unit)
    floor = max(_min_for(min_channels, group.id, b), math.ceil(min_keep * group.size - 1e-9))
    least = min(alive, -(-floor // b) * b)
    if unit > 1:
        # at least two units: one group left would be a dense convolution, a layer the
        # table did not measure
        least = max(least, min(alive, 2 * unit))
    return b, least


def check_min_keep(min_keep: float) -> float:
    """``min_keep`` as a float in [0, 1), or PruningError."""
    try:
        value = float(min_keep)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 <= value < 1.0:
        raise PruningError(f"min_keep must be a fraction in [0, 1), got {min_keep!r}")
    return value


def _choices(
    graph: Any,
    table: Any,
    scores: Mapping[int, Any],
    alive: Mapping[int, Sequence[int]],
    groups: Sequence[Any],
    bundle: int | Mapping[int, int] | None,
    min_channels: int | Mapping[int, int] | None,
    allow_removal: bool,
    min_keep: float = 0.0,
) -> list[_Choice]:
    out = []
    for group in groups:
        gid = group.id
        if gid not in scores:
            raise PruningError(f"no importance scores for channel group {gid}")
        score = np.asarray(scores[gid], dtype=np.float64).reshape(-1)
        if score.size != group.size:
            raise PruningError(
                f"channel group {gid} has {group.size} channels but {score.size} scores"
            )
        if not np.isfinite(score).all():
            raise PruningError(f"the importance scores of channel group {gid} are not finite")
        live = np.asarray(alive[gid], dtype=np.int64)
        # Most important first; equal scores keep the lower channel index first.
        order = live[np.argsort(-score[live], kind="stable")]
        n = live.size
        unit = getattr(group, "unit", 1)
        if unit > 1:
            # Whole units only (a grouped convolution's groups): units ranked by their
            # summed score, bundles of whole units.
            units = np.unique(live // unit)
            unit_score = np.array([score[u * unit : (u + 1) * unit].sum() for u in units])
            ranked = units[np.argsort(-unit_score, kind="stable")]
            order = (ranked[:, None] * unit + np.arange(unit)).reshape(-1)
        # Counts are whole bundles, rounded up from the minimum, or every alive channel.
        b, least = least_option(table, group, n, bundle, min_channels, min_keep)
        counts = [c for c in range(b, n, b) if c >= least]
        counts.append(n)
        if allow_removal:
            counts.insert(0, 0)
        counts = np.array(counts, dtype=np.int64)
        prefix = np.concatenate([[0.0], np.cumsum(score[order])])
        out.append(_Choice(gid, order, counts, prefix[counts], b))
    return out


def _alive(graph: Any, alive: Mapping[int, Sequence[int]] | None) -> dict[int, list[int]]:
    out = {g.id: list(range(g.size)) for g in graph.prunable}
    for gid, kept in (alive or {}).items():
        if gid not in out:
            raise PruningError(f"channel group {gid} is not a prunable group of the graph")
        kept = sorted({int(c) for c in kept})
        size = graph.groups[gid].size
        if not kept or kept[0] < 0 or kept[-1] >= size:
            raise PruningError(f"alive channels of group {gid} must be in 0..{size - 1}")
        out[gid] = kept
    return out


def _next_room(
    budget_ms: float,
    under: tuple[float, float] | None,
    above: tuple[float, float] | None,
    room: float,
    over: float,
) -> float | None:
    """The knapsack budget to solve at next, searching for the plan nearest under
    ``budget_ms``: ``under`` and ``above`` are the (knapsack budget, exact latency) of the
    largest budget whose plan fit and the smallest whose plan did not. Tightening alone
    moves down by the overshoot (and a hair more, so that progress is certain);
    loosening alone scales up by the shortfall (the one-sided model overestimates in
    proportion); between the two, interpolated and kept off the ends. None: the bracket
    is too narrow for another solve to find a different plan."""
    hair = 1e-9 * max(1.0, abs(budget_ms))
    if under is None:
        return room - over - hair
    lo, lo_ms = under
    if above is None:
        if lo_ms > 0 and lo > 0:
            return lo * budget_ms / lo_ms
        return lo + (budget_ms - lo_ms) + hair
    hi, hi_ms = above
    if hi - lo <= BRACKET_RESOLUTION * max(abs(budget_ms), hair):
        return None
    t = (budget_ms - lo_ms) / (hi_ms - lo_ms) if hi_ms > lo_ms else 0.5
    return lo + min(0.9, max(0.1, t)) * (hi - lo)


def solve_budget(
    graph: Any,
    table: Any,
    scores: Mapping[int, Any],
    budget_ms: float,
    *,
    cost_model: str = DEFAULT_COST_MODEL,
    bundle: int | Mapping[int, int] | None = None,
    min_channels: int | Mapping[int, int] | None = None,
    min_keep: float = 0.0,
    allow_removal: bool = False,
    frozen: Collection[int] = (),
    alive: Mapping[int, Sequence[int]] | None = None,
    resolution: int | None = None,
) -> Plan:
    """Keep the most importance within a latency budget (HALP's augmented knapsack).

    Args:
        graph: a :class:`halp_trt.graph.ChannelGraph` of the model.
        table: a latency table (``lut_builder.LatencyTable`` or anything with
            ``lookup_grid(sig, c_in, c_out)``, ``alignment`` and ``overhead_ms``).
        scores: group id to a per-channel score vector (group coordinates, length =
            group size) for every prunable group; any non-negative-or-not finite
            scores: Taylor, magnitude, SP-LAMP (whose strongest channel, scoring 1, is
            always kept: it is in the first bundle, which every option keeps).
        budget_ms: latency budget of the whole network, in the table's milliseconds
            (the table's overhead term included).
        cost_model: ``"one-sided"`` (HALP) or ``"joint"``; see the module docstring.
        bundle: channels per knapsack item, for all groups or per group id; ``None``
            takes the table's ``alignment``, or its grid ``step`` when that is larger.
        min_channels: fewest channels a group keeps (rounded up to whole bundles); by
            default one bundle. An int for all groups or a mapping per group id.
        min_keep: fewest channels a group keeps as a fraction of its full width (also
            rounded up to whole bundles), on top of ``min_channels``. 0 (default): no
            floor. See :data:`halp_trt.prune.pruner.DEFAULT_MIN_KEEP` for why the pruner
            sets one.
        allow_removal: also allow keeping no channel at all (the group's layers then
            cost nothing). Off by default. ``ChannelGraph.mask``/``remove`` do not apply
            an empty group yet, so such plans serve latency exploration only.
        frozen: ids of prunable groups that must keep all their alive channels.
        alive: group id to the channels still available (earlier pruning steps);
            pruned channels never come back. Default: every channel.
        resolution: passed to :func:`halp_trt.solver.solve_mckp`.

    Returns:
        A :class:`~halp_trt.solver.plan.Plan` listing every prunable group of the graph,
        whose ``predicted_ms`` (exact table sum plus overhead) is within ``budget_ms``.
        The same inputs always give the same plan.

    Raises:
        InfeasibleBudgetError: even every group at its minimum exceeds the budget (the
            message states that smallest latency).
        PruningError: missing or non-finite scores, bad bundle/minimum/alive settings,
            an unknown cost model.
        UserError: the table cannot price a layer (raised by the table).
    """
    if cost_model not in COST_MODELS:
        raise PruningError(
            f"unknown cost model {cost_model!r}; choose one of {', '.join(COST_MODELS)}"
        )
    if not math.isfinite(budget_ms):
        raise PruningError(f"the latency budget must be a finite number, got {budget_ms!r}")
    unknown = set(frozen) - {g.id for g in graph.prunable}
    if unknown:
        raise PruningError(f"frozen groups are not prunable groups: {sorted(unknown)}")
    live = _alive(graph, alive)
    solved = [g for g in graph.prunable if g.id not in set(frozen)]
    min_keep = check_min_keep(min_keep)
    choices = _choices(
        graph, table, scores, live, solved, bundle, min_channels, allow_removal, min_keep
    )
    net = _Network(graph, table)
    fixed = {gid: len(kept) for gid, kept in live.items()}  # unsolved groups stay so

    def counts_of(pick: Sequence[int]) -> dict[int, int]:
        return {**fixed, **{ch.gid: int(ch.counts[k]) for ch, k in zip(choices, pick)}}

    least = [0] * len(choices)  # every group at its smallest option
    min_ms = net.latency(counts_of(least))
    if min_ms > budget_ms:
        raise InfeasibleBudgetError(
            budget_ms,
            min_ms,
            what="latency",
            unit=" ms",
            detail="every prunable group at its minimum width"
            + (f", at least {min_keep:g} of its channels" if min_keep else ""),
        )

    found: list[tuple[tuple[int, ...], float, float]] = []  # (pick, exact ms, model ms)

    def solve(ref: Mapping[int, int], room_ms: float) -> tuple[tuple[int, ...], float]:
        costs, constant = _group_costs(net, choices, ref, cost_model)
        room = net.layers_budget(room_ms) - constant
        try:
            sol = solve_mckp([ch.values for ch in choices], costs, room, resolution)
            pick = sol.choice
        except InfeasibleBudgetError:  # the model thinks nothing fits; the minimum does
            pick = tuple(least)
        model = math.fsum(float(c[k]) for c, k in zip(costs, pick)) + constant
        return pick, net.total(model)

    ref = dict(fixed)
    solves = 0
    if cost_model == "joint":
        # Continuation: approach the budget in geometric steps from the current latency,
        # re-expanding the model around each step's plan, so that every step moves the
        # widths little and the expansion's second-order error stays small.
        start = net.latency(ref)
        if start > budget_ms > 0:
            n = math.ceil(math.log(start / budget_ms) / math.log(HOMOTOPY_RATIO))
            n = min(HOMOTOPY_STEPS, n)
            for t in range(1, n):
                step_ms = start ** (1 - t / n) * budget_ms ** (t / n)
                pick, _ = solve(ref, step_ms)
                solves += 1
                ref = counts_of(pick)
    offset = 0.0
    seen: set[tuple[tuple[int, ...], float]] = set()
    under: tuple[float, float] | None = None  # (knapsack budget, exact ms): largest that fit
    above: tuple[float, float] | None = None  # smallest knapsack budget whose plan did not
    while solves < MAX_SOLVES:
        room = budget_ms - offset
        pick, model_ms = solve(ref, room)
        solves += 1
        counts = counts_of(pick)
        exact = net.latency(counts)
        found.append((pick, exact, model_ms))
        over = exact - budget_ms
        stuck = solves >= TIGHTEN_AFTER and not any(e <= budget_ms for _, e, _ in found)
        if cost_model == "one-sided" or stuck or under is not None or above is not None:
            # Search the knapsack's own budget, the expansion held (a joint iteration
            # that re-expanded this long without meeting the budget keeps its expansion
            # from here on): its plan's exact latency is what must fit.
            if over <= 0:
                widest = all(k == len(ch.counts) - 1 for ch, k in zip(choices, pick))
                if widest or exact >= budget_ms * (1 - LOOSEN_WITHIN):
                    break  # near the budget, or every group keeps all it can
                if under is None or room > under[0]:
                    under = (room, exact)
            elif above is None or room < above[0]:
                above = (room, exact)
            nxt = _next_room(budget_ms, under, above, room, over)
            if nxt is None:
                break
            offset = budget_ms - nxt
            continue
        if over <= 0 and counts == ref:
            break  # a fixed point: the model is exact here
        if (pick, offset) in seen:
            if over <= 0 or any(e <= budget_ms for _, e, _ in found):
                break  # the iteration cycles; the best plan within budget is kept
            # A cycle of plans over budget: tighten, which the next expansion keeps.
            offset += over + 1e-9 * max(1.0, abs(budget_ms))
        seen.add((pick, offset))
        # Re-expand around the plan: the model becomes exact there, so an overshoot that
        # came from the expansion's error needs no tightening.
        ref = counts

    feasible = [(i, f) for i, f in enumerate(found) if f[1] <= budget_ms]
    if feasible:
        # Best value; then lower latency; then the earliest found.
        def key(item: tuple[int, tuple]) -> tuple[float, float, int]:
            i, (pick, exact, _) = item
            value = math.fsum(float(ch.values[k]) for ch, k in zip(choices, pick))
            return (-value, exact, i)

        _, (pick, exact, model_ms) = min(feasible, key=key)
    elif cost_model == "joint":
        # Nothing the joint model proposed fit. The one-sided model overestimates where
        # both sides of a layer shrink, so its search of the knapsack's budget meets plans
        # within the budget; better its plan than every group at its minimum.
        plan = solve_budget(
            graph,
            table,
            scores,
            budget_ms,
            cost_model="one-sided",
            bundle=bundle,
            min_channels=min_channels,
            min_keep=min_keep,
            allow_removal=allow_removal,
            frozen=frozen,
            alive=alive,
            resolution=resolution,
        )
        warnings.warn(
            f"the knapsack found no plan within the budget in {solves} solves (the joint "
            f"cost model's plans all over it); solved with the one-sided model instead: "
            f"{plan.predicted_ms / budget_ms:.2f} of the budget "
            f"({plan.predicted_ms:.4g} of {budget_ms:.4g} ms)",
            stacklevel=2,
        )
        return plan
    else:  # nothing the model proposed fit: every group at its minimum does
        pick = tuple(least)
        exact, model_ms = min_ms, min_ms
        if min_ms < budget_ms * (1 - FALLBACK_WARN):
            warnings.warn(
                f"the knapsack found no plan within the budget in {solves} solves "
                f"(the {cost_model} cost model's plans all over it); returning every group "
                f"at its minimum width, {min_ms / budget_ms:.2f} of the budget "
                f"({min_ms:.4g} of {budget_ms:.4g} ms)",
                stacklevel=2,
            )

    counts = counts_of(pick)
    keep: dict[int, tuple[int, ...]] = {gid: tuple(kept) for gid, kept in live.items()}
    bundles: dict[int, int] = {}
    for ch, k in zip(choices, pick):
        keep[ch.gid] = ch.kept(k)
        bundles[ch.gid] = ch.bundle
    kept_scores, all_scores = [], []
    for ch in choices:
        s = np.asarray(scores[ch.gid], dtype=np.float64)
        kept_scores.extend(s[list(keep[ch.gid])].tolist())
        all_scores.extend(s[ch.order].tolist())
    return Plan(
        keep=keep,
        sizes={gid: graph.groups[gid].size for gid in keep},
        widths=net.widths(counts),
        predicted_ms=exact,
        budget_ms=float(budget_ms),
        value=math.fsum(kept_scores),
        total_value=math.fsum(all_scores),
        cost_model=cost_model,
        model_ms=model_ms,
        overhead_ms=net.overhead,
        scale=net.scale,
        bundles=bundles,
        solves=solves,
    )
