"""HALP's pruning loop for the user's own training loop.

Usage (the order of the calls matters)::

    pruner = Pruner(model, example_input, table, "0.5x", importance="taylor-weights",
                    steps=30, interval=40, schedule="exp")
    for x, y in loader:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        pruner.accumulate()      # after backward: gradient-based importance
        optimizer.step()
        pruner.step()            # after optimizer.step(): re-mask, prune when due
    slim, plan = pruner.finalize("plan.json")

Or prune once before training, scored on a few minibatches with nothing updated, so that
the whole run trains the final widths::

    pruner = Pruner(model, example_input, table, "0.5x", schedule="oneshot",
                    calibration_batches=8)
    pruner.calibrate(loader)    # (inputs, targets) minibatches; prunes (masks) here
    slim, plan = pruner.finalize()   # then train slim as usual

``step()`` must come *after* ``optimizer.step()``: it zeroes the pruned channels'
parameters again, so momentum and weight decay cannot bring them back. With mixed
precision call ``scaler.unscale_(optimizer)`` before ``accumulate(skip_nonfinite=True)``
(the importance must see true gradients; overflowed steps are skipped, as the scaler
skips them). Under ``torchrun`` give the pruner the model before wrapping it in
``DistributedDataParallel`` (or the wrapper: its ``.module`` is used) and call every
method on every rank; importances are averaged over ranks, rank 0 solves, and its
decision is broadcast.

Pruning steps happen at iterations ``start + interval * t`` for ``t = 1..steps``; step
``t`` solves the knapsack at the schedule's budget ``L_t`` with the importance
accumulated since the previous step, restricted to the channels still alive (pruned
channels never come back). ``finalize()`` removes the channels physically, checks the
slim model against the masked one, and returns it with the plan; called as
``finalize(optimizer=optimizer)`` once ``pruner.done`` (after the optimizer step), it
also points the optimizer at the slim parameters with their state sliced
(:mod:`.optim_state`), so the slim model can train on for the rest of the run.

Why this module is longer than 500 lines: :class:`Pruner` is one protocol (set-up
checks, ``accumulate``, ``step``, ``finalize``, ``state_dict``) over one state (masks,
importance, schedule, history); most of its length is the docstrings of what each call
takes, does to the model and raises.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..errors import PruningError, UserError
from ..graph import ChannelGraph
from ..importance import (
    AUTO_IMPORTANCE,
    DEFAULT_IMPORTANCE,
    Importance,
    ImportanceError,
    auto_choice,
    auto_upper_branch,
    resolve_importance,
    stream_width_ratio,
)
from . import distributed as ddp
from . import optim_state
from .masks import MaskSet
from .plan_file import PrunePlan, StepRecord
from .schedule import SCHEDULES, parse_target, schedule_targets

#: Version of :meth:`Pruner.state_dict`'s layout.
STATE_VERSION = 1


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def network_latency(table: Any, layers: Mapping[str, Any], widths: Mapping[str, tuple]) -> float:
    """Predicted latency (ms) of a model's layers at given widths.

    The formula is the table's network latency model,
    :func:`lut_builder.predict_latency` (``scale * sum of layer lookups + overhead``);
    this adapts a layer map and widths to it. Layers pruned to zero width are left out.

    Args:
        table: the latency table.
        layers: layer name to :class:`lut_builder.LayerInfo` (its ``signature``).
        widths: layer name to ``(c_in, c_out)``.

    Raises:
        PruningError: the table does not cover a layer (the message names it).
    """
    from lut_builder import predict_latency

    live = [
        (name, info.signature, int(widths[name][0]), int(widths[name][1]))
        for name, info in layers.items()
        if widths[name][0] > 0 and widths[name][1] > 0
    ]
    try:
        return predict_latency(table, [(sig, c_in, c_out) for _, sig, c_in, c_out in live])
    except UserError as exc:
        for name, sig, c_in, c_out in live:
            try:
                table.lookup(sig, c_in, c_out)
            except UserError as layer_exc:
                raise PruningError(
                    f"the latency table does not cover layer {name} ({sig.short()}, "
                    f"{c_in}->{c_out} channels): {layer_exc}"
                ) from exc
        raise


#: Fewest channels a group keeps by default, as a fraction of its width. The knapsack
#: values a group by the sum of its channels' first-order (Taylor) scores, which is
#: additive and local: it does not see that cutting a residual stream or an early
#: full-resolution layer to one bundle starves every layer around it, and those are the
#: groups the latency table prices highest. On the MobileNetV2 of bench/pareto.py at
#: 0.3x, with no floor the plan cut every block output and the stem to 16 channels and
#: kept the expanded layers at 90%; it scored 0.78 against 0.96 for Torch-Pruning, and
#: ran 15% slower than predicted (such narrow layers are where the additive latency
#: model errs most). A floor of 0.3 gave 0.95 at the same predicted latency; at 0.5x and
#: 0.7x the floor hardly binds. See the README's "Accuracy against measured latency".
#: It stays the floor wherever :data:`AUTO_MIN_KEEP` and :data:`AUTO_ABOVE_MIN_KEEP`
#: are not: every criterion named by the caller was measured with it (``taylor-weights``
#: at 0.1 on the harder digits' MobileNetV2 at 0.3x scored 0.8340 against 0.8477 at 0.3,
#: Zen 3), and so was ``taylor-weights-mean``, which cuts streams (``auto`` runs it below
#: 0.55x on wide streams): at 0.1 it scored level on the ResNet-18 (+0.13 at 0.5x; -0.34
#: [-0.74, +0.06] at 0.3x, where its lead over FastNAS went from +0.61 to +0.09), the
#: bottleneck ResNet-26 (-0.45, +0.52) and the MobileNetV2 at 0.7x (-0.05, three seeds;
#: from 0.55x up ``auto`` now keeps half), six seeds each elsewhere, on the Xeon.
DEFAULT_MIN_KEEP = 0.3
#: The floor where ``auto`` (the default criterion) runs ``taylor-fisher`` on a network
#: with narrow residual streams (below 0.55x): FastNAS's narrowest choice. There the
#: criterion keeps the streams itself, which is what the 0.3 floor was for, and that
#: floor only held the plans out of FastNAS's corner (streams whole, expansions to a
#: tenth): at 0.1, seed by seed over 0.3, +0.51 [+0.02, +1.00] on the MobileNetV2 at
#: 0.5x (FastNAS's mean had led the default there; at 0.1 it is 0.26 behind) and +0.55
#: [-0.06, +1.17] on a ConvNeXt at 0.3x (FastNAS 0.75 ahead, resolved, at 0.3; level at
#: 0.1); -0.09 on the MobileNetV2 at 0.3x, +0.00 on the ConvNeXt at 0.5x (bench/PARETO.md,
#: "The floor at 0.1 on the ResNets and at 0.5x and 0.7x", Xeon, six seeds each).
AUTO_MIN_KEEP = 0.1


#: The floor where ``auto`` runs its upper branch (``taylor-weights-mean``, from
#: :data:`~halp_trt.importance.base.AUTO_FISHER_BELOW` of the unpruned latency up): no
#: group below half its width. At 0.3 every plan of that branch on record put the
#: MobileNetV2's first expansions, at the input's full resolution, at the floor (32 of
#: 96, 48 of 144, where the table prices a channel highest), on three CPUs, and the same
#: path on a MACs table, which keeps the first wider (48-64), led it at 0.7x (-0.61 [-1.3,
#: +0.1] over twelve seeds on a Zen 4; HALP's ``taylor-abs`` path -0.78 [-1.3, -0.3] on a
#: Zen 5). At 0.5, at equal measured latency on the Zen 4: +0.50 [+0.0, +1.0] over 0.3
#: at 0.7x (10 of 12 seeds), level with the MACs table (-0.12) and uniform width (-0.03,
#: where 0.3 was -0.51); +0.15 [-0.8, +1.1] over 0.3 at 0.6x (5 of 6) and +0.31 over
#: uniform width. The target's own fraction (0.7 at 0.7x) scored 0.67 under 0.5 (six
#: seeds). bench/PARETO.md "Half of each group where little is cut". On the ResNet-18
#: at 0.7x the plans at 0.3 cut a group below half once in eight (the Xeon's five, the
#: Zen 4's three: the second stage's stream to 48 of 128); at 0.5 +0.25 [-0.8, +1.3] over
#: 0.3 on the Zen 4 (three seeds). Where it leaves the target out of reach the pruner
#: takes :data:`DEFAULT_MIN_KEEP`.
AUTO_ABOVE_MIN_KEEP = 0.5


def default_min_keep(
    importance: Any,
    chosen: str | None = None,
    graph: Any = None,
    fraction: float | None = None,
) -> float:
    """The per-group floor a pruner takes when none is given, where ``importance`` is
    ``auto``: :data:`AUTO_MIN_KEEP` where the criterion it chose (``chosen``) is
    ``taylor-fisher`` and ``graph`` has residual streams (``auto`` chooses so below
    :data:`~halp_trt.importance.base.AUTO_FISHER_BELOW` where they are narrower than
    :data:`~halp_trt.importance.base.AUTO_MEAN_STREAMS` of the layers they feed, and at
    every target where depthwise convolutions read them,
    :func:`~halp_trt.importance.base.depthwise_streams`),
    :data:`AUTO_ABOVE_MIN_KEEP` for a target of ``fraction`` of the unpruned latency at
    or above :data:`~halp_trt.importance.base.AUTO_FISHER_BELOW` (the upper branch);
    :data:`DEFAULT_MIN_KEEP` everywhere else (a named criterion, ``auto`` below 0.55x on
    wide streams, a network without residual streams below 0.55x: the other floors
    were not run there)."""
    if not (isinstance(importance, str) and importance == AUTO_IMPORTANCE):
        return DEFAULT_MIN_KEEP
    if chosen == "taylor-fisher" and graph is not None and stream_width_ratio(graph) is not None:
        return AUTO_MIN_KEEP
    if fraction is not None and auto_upper_branch(fraction):
        return AUTO_ABOVE_MIN_KEEP
    return DEFAULT_MIN_KEEP


#: The last step warns when its plan lands more than this fraction under the target
#: (measured, with feedback; else as the table predicts it): a model far faster than
#: asked has given up accuracy the budget had room for (coarse bundles that jump past
#: the target, or a solver that found nothing nearer).
LANDING_WARN = 0.1


def next_budget(tries: Sequence[tuple[float, float]], aim: float, error: float) -> float:
    """The predicted ratio the feedback's next solve aims at, from the plans measured so
    far as ``(predicted ratio, measured ratio)`` pairs.

    Scaled by the latest plan's error (``aim / error``) as long as every plan measured on
    one side of ``aim``: a table's error that is the same for every plan near the target
    lands in one re-solve. Where the error changes from plan to plan (on a ResNet-18 with
    a floor of 0.1, the table's ratios measured 1.46, 1.14, 1.39 and 1.10 times over in
    four tries at 0.3x, the wider plans the more under-priced), that rule jumps from one
    side of the aim to the other and stops where its tries run out: 0.23 of the dense
    latency for a target of 0.3. Once plans measured on both sides of the aim, the
    budget stays between the nearest measured below and the nearest above it: on the
    line through the two plans measured nearest the aim (the secant) where that falls
    between them, else on the line between the bracket's two plans (false position,
    which alone closes slowly where one side's plan stays far off). A bracket not
    ordered the same way in both ratios (the noise of two near plans) falls back to the
    error. It closes on the aim where plans between the bracket's exist; on that
    ResNet-18's table they did not (plans predicted at 0.20 measured 0.21-0.23, the next
    ones the knapsack gave, at 0.21-0.235, measured 0.23-0.37), and with this rule too its
    plans ended at 0.22-0.24 for 0.3: a table that wrong between neighbouring plans needs
    rebuilding, not more tries.
    """
    below = [t for t in tries if t[1] < aim]
    above = [t for t in tries if t[1] > aim]
    if not below or not above:
        return aim / error
    (p_lo, m_lo), (p_hi, m_hi) = max(below, key=lambda t: t[1]), min(above, key=lambda t: t[1])
    if not p_lo < p_hi:
        return aim / error
    (p1, m1), (p2, m2) = sorted(tries, key=lambda t: abs(t[1] - aim))[:2]
    if p1 != p2 and (m2 - m1) / (p2 - p1) > 0:
        secant = p1 + (aim - m1) * (p2 - p1) / (m2 - m1)
        if p_lo < secant < p_hi:
            return secant
    return p_lo + (aim - m_lo) * (p_hi - p_lo) / (m_hi - m_lo)


class Pruner:
    """Latency-constrained structured pruning inside a training loop (HALP).

    Args:
        model: the network (or its DDP wrapper). Its parameters are masked in place
            during training and its channels removed in place by :meth:`finalize`.
        example_inputs: an input (tensor or tuple) of the shape the latency is for:
            the table's batch size and image size.
        table: a latency table (``lut_builder.LatencyTable``) covering every layer.
        target: ``"0.5x"`` (fraction of the unpruned predicted latency), ``"3ms"``, or
            milliseconds as a number.
        importance: a criterion: a registered name (see
            :func:`halp_trt.importance.list_importances`), ``"auto"`` (the default:
            one of two by the target, :func:`halp_trt.importance.choose_importance`;
            :attr:`importance_name` says which), ``"module:attr"``, an
            :class:`~halp_trt.importance.Importance` subclass, or a factory called with
            the pruner's :class:`~halp_trt.graph.ChannelGraph` that returns one.
        steps: pruning steps (HALP: 30). ``oneshot`` prunes once.
        interval: training iterations between pruning steps (HALP: 40); importance is
            accumulated over the iterations of each interval.
        schedule: ``"exp"`` (HALP), ``"linear"`` or ``"oneshot"``.
        start: iterations to train before the first accumulation window opens.
        frozen_layers: layers whose channels must not be pruned.
        min_keep: fewest channels any group keeps, as a fraction of its width (rounded
            up to whole bundles); None: :func:`default_min_keep` (0.1 where ``auto``
            runs ``taylor-fisher`` on narrow residual streams, 0.5 where it runs
            ``taylor-weights-mean`` from 0.55x up, else 0.3), 0: no floor.
        cost_model, bundle, min_channels: passed to
            :func:`halp_trt.solver.solve_budget` (defaults: the solver's).
        monotone_table: plan on the table's monotone envelope
            (:class:`halp_trt.solver.monotone.MonotoneTable`: a wider layer never costs
            less than a narrower one), so the knapsack cannot pick widths for a point
            measured low by chance. Off by default: on the MobileNetV2 of
            bench/pareto.py it halved the table's error on the plans but, with
            feedback on, cost 1.9 points at 0.5x and 0.3x (3 seeds).
        feedback: a callable taking a slim model and returning its measured latency as
            a ratio to the unpruned model (:class:`halp_trt.prune.MeasuredLatency`), or
            None. Each step's plan is then measured; the next budgets are divided by
            the table's error there (measured / predicted), and the last step tightens
            its plan until it measures within 1% above and 1.5% below the target.
        calibration_batches: 0 (default): prune while training, as above. N > 0: a
            one-step schedule whose step comes before training: :meth:`calibrate`
            scores the model as it is on N minibatches (no weight updated) and prunes
            there, so that the whole run trains the final widths (the built-in trainer
            calls it before its first iteration); ``step()`` refuses to run before it.

    Raises:
        PruningError: a model that is not an ``nn.Module`` or a table that is not a
            latency table; nothing prunable, a table that does not cover the model, a
            target that is malformed, not below the unpruned latency, or below what
            the table says is reachable; bad schedule settings.
        ImportanceError: an unknown criterion, or a factory that builds no
            :class:`~halp_trt.importance.Importance`.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        table: Any,
        target: str | float,
        *,
        importance: Any = DEFAULT_IMPORTANCE,
        steps: int = 30,
        interval: int = 40,
        schedule: str = "exp",
        start: int = 0,
        frozen_layers: Sequence[str] = (),
        cost_model: str | None = None,
        bundle: int | Mapping[int, int] | None = None,
        min_channels: int | Mapping[int, int] | None = None,
        min_keep: float | None = None,
        feedback: Any = None,
        monotone_table: bool = False,
        calibration_batches: int = 0,
    ) -> None:
        if schedule not in SCHEDULES:
            raise PruningError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
        for name, value, least in (
            ("steps", steps, 1),
            ("interval", interval, 1),
            ("start", start, 0),
            ("calibration_batches", calibration_batches, 0),
        ):
            if (
                not isinstance(value, numbers.Integral)
                and not (isinstance(value, float) and value.is_integer())
                or value < least
            ):
                raise PruningError(f"{name} must be an integer >= {least}, not {value!r}")
        self.module = unwrap(model)
        if not isinstance(self.module, nn.Module):
            raise PruningError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        if not callable(getattr(table, "lookup", None)):
            raise PruningError(
                f"table must be a latency table (lut_builder.LatencyTable.open(path)), not "
                f"{type(table).__name__}"
            )
        self.example_inputs = example_inputs
        self.table = table
        criterion, self.importance_name = resolve_importance(importance)
        self.schedule = schedule
        self.interval = int(interval)
        self.start = int(start)
        self._solver_options: dict[str, Any] = {
            "bundle": bundle,
            "min_channels": min_channels,
        }
        if cost_model is not None:
            self._solver_options["cost_model"] = cost_model
        self.graph = ChannelGraph(self.module, example_inputs, frozen_layers=frozen_layers)
        if not self.graph.prunable:
            reasons = "; ".join(sorted({g.reason or "?" for g in self.graph.frozen}))
            raise PruningError(f"the model has no prunable channel group ({reasons})")
        if monotone_table:
            from ..solver.monotone import MonotoneTable

            full_layers = [(i.signature, i.c_in, i.c_out) for i in self.graph.layers.values()]
            self.table = table = MonotoneTable(table, full_layers)
        self.monotone_table = bool(monotone_table)
        full = self.graph.widths({})
        self.base_ms = network_latency(table, self.graph.layers, full)
        self.target = str(target)
        self.target_ms = parse_target(target, self.base_ms)
        self.budgets = schedule_targets(schedule, self.base_ms, self.target_ms, int(steps))
        self.steps = len(self.budgets)
        self.calibration_batches = int(calibration_batches)
        if self.calibration_batches and self.steps != 1:
            raise PruningError(
                f"calibration prunes once, before training: it needs a one-step schedule "
                f"(oneshot, or steps=1), not {self.steps} steps"
            )
        #: What was asked for (``"auto"`` included); :attr:`importance_name` is what runs,
        #: :attr:`importance_label` how logs name it (``taylor-fisher, auto at 0.40x,
        #: streams 0.17x the width of the layers they feed``).
        self.importance_asked = self.importance_label = self.importance_name
        fraction = self.target_ms / self.base_ms
        chosen = None
        if isinstance(importance, str) and importance == AUTO_IMPORTANCE:
            chosen, why = auto_choice(fraction, self.graph)
            criterion, self.importance_name = resolve_importance(chosen)
            self.importance_label = f"{self.importance_name}, {importance} at {fraction:.2f}x{why}"
        from ..solver.knapsack import check_min_keep

        #: The per-group floor (:func:`default_min_keep` where ``min_keep`` is None).
        self.min_keep = check_min_keep(
            default_min_keep(importance, chosen, self.graph, fraction)
            if min_keep is None
            else min_keep
        )
        self.min_keep_asked = min_keep
        self._solver_options["min_keep"] = self.min_keep
        try:
            self._check_feasible()
        except PruningError:
            if min_keep is not None or self.min_keep <= DEFAULT_MIN_KEEP:
                raise
            # the upper branch's floor leaves this target out of reach: the common one
            self.min_keep = self._solver_options["min_keep"] = DEFAULT_MIN_KEEP
            self._check_feasible()
        self.importance = criterion(self.graph)
        if not isinstance(self.importance, Importance):
            raise ImportanceError(
                f"importance {self.importance_name} built a {type(self.importance).__name__}, "
                "not an Importance"
            )
        if self.importance.needs_batches and not self.calibration_batches:
            raise PruningError(
                f"importance {self.importance_name} measures subnets on calibration "
                "minibatches and prunes once, before training: set calibration_batches "
                "(--calibration-batches N) and a one-step schedule"
            )
        self.keep: dict[int, tuple[int, ...]] = {
            g.id: tuple(range(g.size)) for g in self.graph.prunable
        }
        self.total_channels = sum(g.size for g in self.graph.prunable)
        self._masks = MaskSet(self.graph, {})
        self._shapes = self._param_shapes()
        self.iteration = 0
        self.steps_done = 0
        self.history: list[StepRecord] = []
        self.plan: Any = None  # the solver's plan of the last pruning step
        self.finalized = False
        self._final: tuple[nn.Module, PrunePlan] | None = None
        #: Wall seconds spent in the pruner: accumulate, per-iteration masking, steps.
        self.timers = {"accumulate": 0.0, "mask": 0.0, "prune": 0.0}
        #: Measures a slim model's latency as a ratio to the unpruned one, or None.
        self.feedback = feedback
        #: Measured over predicted latency ratio of the last measured plan (1: none yet).
        self.latency_error = 1.0

    @classmethod
    def from_config(
        cls,
        model: nn.Module,
        example_inputs: Any,
        table: Any,
        config: Any,
        *,
        total_iterations: int | None = None,
        iterations_per_epoch: int | None = None,
        say: Any = print,
    ) -> Pruner:
        """A pruner set up by a :class:`halp_trt.PruneConfig` for one training run.

        With ``config.interval`` unset, the steps are fitted to the run: spread over
        the first ``config.prune_window`` of ``total_iterations`` (half by default;
        HALP's recipe prunes in about the first 1% of a long run), or one every
        ``config.interval_epochs`` epochs; a run too short for ``config.steps`` gets
        fewer steps, and ``say`` prints a one-line note.

        Args:
            model, example_inputs, table: as for :class:`Pruner`.
            config: a :class:`halp_trt.PruneConfig`.
            total_iterations: training iterations (optimizer steps) of the run;
                needed unless ``config.interval`` is given.
            iterations_per_epoch: needed with ``config.interval_epochs``.
            say: where the note goes (``print``; a no-op silences it).

        Raises:
            ConfigError: no ``total_iterations`` where it is needed, or an interval
                longer than the run. Otherwise as :class:`Pruner`.
        """
        from ..config import ConfigError, PruneConfig

        if not isinstance(config, PruneConfig):
            raise TypeError(f"config must be a PruneConfig, not {type(config).__name__}")
        if total_iterations is None:
            if config.interval is None:
                raise ConfigError(
                    "PruneConfig", "interval",
                    "must be given when the run's total_iterations is not", None,
                )  # fmt: skip
            steps, interval = config.steps, config.interval
        else:
            fit = config.fit_schedule(total_iterations, iterations_per_epoch)
            if fit.note:
                say(f"note: {fit.note}")
            steps, interval = fit.steps, fit.interval
        return cls(
            model,
            example_inputs,
            table,
            config.target,
            steps=steps,
            interval=interval,
            **config.pruner_options(),
        )

    # -- set-up checks --------------------------------------------------------------------

    def _solve(
        self, scores: Mapping[int, np.ndarray], budget_ms: float, alive=None, clamp=False
    ) -> Any:
        """The knapsack's plan; ``clamp``: a budget below the smallest reachable latency
        gives the smallest plan instead of an error (a budget corrected by feedback)."""
        from ..solver.knapsack import solve_budget
        from ..solver.mckp import InfeasibleBudgetError

        options = {k: v for k, v in self._solver_options.items() if v is not None}
        try:
            return solve_budget(self.graph, self.table, scores, budget_ms, alive=alive, **options)
        except InfeasibleBudgetError as exc:
            if clamp:
                warnings.warn(
                    f"the measured latency asks for {budget_ms:.4g} ms of the table, below "
                    f"the smallest it allows ({exc.min_cost:.4g} ms): pruning to that",
                    stacklevel=4,
                )
                floor = exc.min_cost * (1 + 1e-9)
                return solve_budget(self.graph, self.table, scores, floor, alive=alive, **options)
            raise PruningError(
                f"latency target {self.target} ({budget_ms:.4g} ms) is infeasible: the "
                f"smallest latency the table allows for this model is {exc.min_cost:.4g} ms "
                f"(unpruned: {self.base_ms:.4g} ms"
                + (
                    f"; every group keeping at least {self.min_keep:g} of its channels: "
                    "lower min_keep (--min-keep) to go further)"
                    if self.min_keep
                    else ")"
                )
            ) from exc

    def _check_feasible(self) -> None:
        # Uniform scores: only feasibility matters here, and the solve is cheap.
        ones = {g.id: np.ones(g.size) for g in self.graph.prunable}
        self._solve(ones, self.target_ms)

    def _param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(n, tuple(p.shape)) for n, p in self.module.named_parameters()]

    def _check_shapes(self) -> None:
        now = self._param_shapes()
        if now == self._shapes:
            return
        before = dict(self._shapes)
        for name, shape in now:
            if before.get(name) != shape:
                was = before.get(name)
                raise PruningError(
                    f"the model changed size since the pruner was created (parameter {name}: "
                    f"{'absent' if was is None else tuple(was)} -> {shape}); create the "
                    "Pruner after any change to the architecture"
                )
        missing = sorted(set(before) - {n for n, _ in now})
        raise PruningError(
            f"the model changed since the pruner was created (parameters gone: "
            f"{', '.join(missing[:3])}); create the Pruner after any change to the architecture"
        )

    def _check_calibrated(self) -> None:
        if self.calibration_batches and not self.done:
            raise PruningError("a pruner built with calibration_batches: calibrate() first")

    def _check_live(self) -> None:
        if self.finalized:
            raise PruningError("the pruner is finalized: its model has been slimmed")

    # -- the training-loop interface -------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once every pruning step of the schedule has run."""
        return self.steps_done >= self.steps

    @property
    def next_step_iteration(self) -> int | None:
        """The iteration (value of :attr:`iteration` after ``step()``) of the next pruning
        (0: :meth:`calibrate`, before training)."""
        if self.done:
            return None
        if self.calibration_batches:
            return 0
        return self.start + self.interval * (self.steps_done + 1)

    @property
    def last_iteration(self) -> int:
        """The iteration at which the last pruning step of the schedule runs (0:
        :meth:`calibrate`, before training)."""
        return 0 if self.calibration_batches else self.start + self.interval * self.steps

    @property
    def when(self) -> str:
        """When the schedule prunes, in words, for a trainer's opening line."""
        if self.calibration_batches:
            return f"one step before training, scored on {self.calibration_batches} minibatches"
        return f"{self.steps} {self.schedule} steps every {self.interval} iterations"

    def accumulate(self, *, skip_nonfinite: bool = False) -> None:
        """Add this minibatch's gradients to the importance (call after ``backward()``).

        A no-op for criteria that read only weights, before ``start`` and once every
        pruning step has run.

        Args:
            skip_nonfinite: drop a minibatch with NaN/inf gradients (mixed precision
                overflow) instead of failing at the next pruning step.
        """
        self._check_live()
        if self.done or self.iteration < self.start or not self.importance.needs_gradients:
            return
        t0 = time.perf_counter()
        self.importance.accumulate(skip_nonfinite=skip_nonfinite)
        self.timers["accumulate"] += time.perf_counter() - t0

    def calibrate(self, batches: Any, loss_fn: Any = None, *, batch_loss: Any = None) -> StepRecord:
        """The one pruning step of a pruner built with ``calibration_batches``, before
        training: the importance accumulated over the first ``calibration_batches`` of
        ``batches`` on the model as it is, then the knapsack (and the feedback's
        measurements) to the target, the pruned channels masked.

        Each minibatch runs forward and backward in training mode; no weight changes, and
        the BatchNorm running statistics are put back as they were. The gradients are
        cleared afterwards. A measuring criterion (``sensitivity``: ``needs_batches``)
        gets the minibatches instead, with each group's bundle and floor, and scores
        its subnets on them (the model put back as it was). Under ``torchrun`` each
        rank scores its own minibatches (call it on every rank with the pruner's
        module, not its DDP wrapper); the scores are averaged over ranks, as in a step.

        Args:
            batches: an iterable of ``(inputs, targets)`` on the model's device; with
                ``batch_loss``, of whatever that takes.
            loss_fn: ``loss_fn(outputs, targets)``, a scalar to differentiate;
                default cross-entropy.
            batch_loss: ``batch_loss(batch)``, the scalar loss of one minibatch computed
                through the pruner's module (a training step's loss, e.g. a
                LightningModule's ``training_step``), in place of ``loss_fn``; for
                criteria that read gradients or weights, not for a measuring one.

        Returns:
            The step's :class:`StepRecord` (iteration 0).

        Raises:
            PruningError: not built to calibrate, already pruned or trained, fewer
                minibatches than asked, both ``loss_fn`` and ``batch_loss``,
                ``batch_loss`` with a measuring criterion or returning no tensor, or the
                target infeasible.
            ImportanceError: NaN/inf importances.
        """
        import torch.nn.functional as F

        self._check_live()
        if not self.calibration_batches:
            raise PruningError("this pruner prunes while training (calibration_batches=0)")
        if self.steps_done or self.iteration:
            raise PruningError("calibrate() comes before the first training iteration, once")
        if batch_loss is not None and loss_fn is not None:
            raise PruningError("calibrate() takes loss_fn or batch_loss, not both")
        if batch_loss is not None and self.importance.needs_batches:
            raise PruningError(
                f"{self.importance_name} measures subnets on (inputs, targets) minibatches "
                "with a loss_fn; batch_loss serves the criteria that read gradients"
            )
        loss_fn = F.cross_entropy if loss_fn is None else loss_fn
        module = self.module
        if batch_loss is None:
            batch_loss = lambda batch: loss_fn(module(batch[0]), batch[1])  # noqa: E731
        params = {name for name, _ in module.named_parameters()}
        saved = {k: v.clone() for k, v in module.state_dict().items() if k not in params}
        was_training, used = module.training, 0
        try:
            module.train()
            if self.importance.needs_batches:
                used = self._measure_importance(batches, loss_fn)
            elif self.importance.needs_gradients:
                for batch in batches:
                    if used == self.calibration_batches:
                        break
                    module.zero_grad(set_to_none=True)
                    loss = batch_loss(batch)
                    if not isinstance(loss, torch.Tensor):
                        raise PruningError(
                            f"the calibration loss of a minibatch is {type(loss).__name__}, "
                            "not a tensor to differentiate"
                        )
                    loss.backward()
                    t0 = time.perf_counter()  # the pruner's share, as in a training loop
                    self.importance.accumulate()
                    self.timers["accumulate"] += time.perf_counter() - t0
                    used += 1
        except BaseException:
            self.importance.reset()  # a retry starts from nothing
            raise
        finally:
            module.zero_grad(set_to_none=True)
            module.load_state_dict(saved, strict=False)
            module.train(was_training)
        needs_data = self.importance.needs_gradients or self.importance.needs_batches
        if needs_data and used < self.calibration_batches:
            self.importance.reset()
            raise PruningError(
                f"calibration asked for {self.calibration_batches} minibatches and got "
                f"{used}: fewer calibration batches, or a larger training set"
            )
        return self._prune(self.budgets[0])

    def _measure_importance(self, batches: Any, loss_fn: Any) -> int:
        """Hand a measuring criterion (``needs_batches``) the first
        ``calibration_batches`` minibatches and every group's knapsack bundle and floor;
        the number of minibatches it got (fewer than asked: nothing measured)."""
        from ..solver.knapsack import least_option

        taken = []
        for inputs, targets in batches:
            if len(taken) == self.calibration_batches:
                break
            taken.append((inputs, targets))
        if len(taken) < self.calibration_batches:
            return len(taken)
        bundle, least = self._solver_options["bundle"], self._solver_options["min_channels"]
        options = {
            g.id: least_option(self.table, g, g.size, bundle, least, self.min_keep)
            for g in self.graph.prunable
        }
        t0 = time.perf_counter()
        self.importance.measure(taken, options, loss_fn)
        self.timers["accumulate"] += time.perf_counter() - t0
        return len(taken)

    def step(self) -> StepRecord | None:
        """Advance one iteration (call after ``optimizer.step()``).

        Re-applies the masks, then runs a pruning step if one is due.

        Returns:
            The :class:`StepRecord` of the pruning step run now, or None.

        Raises:
            PruningError: the model changed size, the target became infeasible, or a
                pruner built to calibrate was not calibrated first.
            ImportanceError: NaN/inf importances, or no minibatch accumulated for a
                gradient-based criterion.
        """
        self._check_live()
        self._check_calibrated()
        t0 = time.perf_counter()
        self._check_shapes()
        self.iteration += 1
        if len(self._masks):
            self._masks.apply()
        self.timers["mask"] += time.perf_counter() - t0
        if self.done or self.iteration != self.next_step_iteration:
            return None
        return self._prune(self.budgets[self.steps_done])

    def _prune(self, budget_ms: float) -> StepRecord:
        t0 = time.perf_counter()
        minibatches = self.importance.count
        scores = ddp.all_reduce_scores(self.importance.scores())
        plan = self._solve_on_rank0(
            scores, budget_ms / self.latency_error, clamp=self.latency_error != 1.0
        )
        self.steps_done += 1
        measured = halfwidth = None
        tries: list[tuple[float, float, float]] = []
        if self.feedback is not None:
            plan, measured, halfwidth = self._feedback(scores, plan, tries)
        if self.steps_done == self.steps:
            self._warn_far_below(plan, measured, len(tries))
        self._apply(plan)
        self.importance.reset()
        elapsed = time.perf_counter() - t0
        self.timers["prune"] += elapsed
        record = StepRecord(
            step=self.steps_done,
            iteration=self.iteration,
            budget_ms=float(budget_ms),
            predicted_ms=float(plan.predicted_ms),
            retained=float(plan.retained),
            kept=sum(len(k) for k in self.keep.values()),
            total=self.total_channels,
            minibatches=minibatches,
            solve_s=elapsed,
            measured_ratio=measured,
            measured_halfwidth=halfwidth,
            feedback_tries=tuple(tries),
        )
        self.history.append(record)
        return record

    def _warn_far_below(self, plan: Any, measured: float | None, tries: int) -> None:
        """Warn (rank 0: every rank holds the same plan) when the last step's plan lands
        more than :data:`LANDING_WARN` under the target (the last step's budget): measured
        against the unpruned model if it was, else as the table (corrected by the last
        measurement's error) predicts it."""
        if ddp.rank() != 0:
            return
        goal = self.target_ms / self.base_ms
        if measured is not None:
            landed, how = measured, f"measures {measured:.3f}x"
            why = f"the nearest of {tries} plan(s) measured"
        else:
            landed = float(plan.predicted_ms) * self.latency_error / self.base_ms
            how, why = f"is predicted at {landed:.3f}x", "the nearest plan the solver found"
        if landed >= goal * (1 - LANDING_WARN):
            return
        warnings.warn(
            f"the last pruning step's plan {how} of the unpruned model's latency, "
            f"{1 - landed / goal:.0%} under the target {goal:.3f}x ({why}): the model is "
            "faster than asked and may have cut channels the budget had room for; a "
            "table on a finer grid (lut-builder build --step) or smaller bundles "
            "(--bundle) can land nearer",
            stacklevel=4,
        )

    def _solve_on_rank0(
        self, scores: Mapping[int, np.ndarray], budget_ms: float, clamp: bool = False
    ) -> Any:
        """Rank 0 solves; every rank gets its plan (or its error)."""
        payload: tuple[str, Any]
        if ddp.rank() == 0:
            try:
                payload = ("ok", self._solve(scores, budget_ms, alive=self.keep, clamp=clamp))
            except UserError as exc:
                payload = ("error", str(exc))
        else:
            payload = ("pending", None)
        payload = ddp.broadcast(payload)
        if payload[0] == "error":
            raise PruningError(payload[1])
        return payload[1]

    def _apply(self, plan: Any) -> None:
        self.keep = {gid: tuple(plan.keep[gid]) for gid in self.keep}
        self._masks = MaskSet(self.graph, self.keep)
        self._masks.apply()
        self.plan = plan

    def _measure(self, plan: Any) -> tuple[float, bool, float, str]:
        """The plan's measured latency over the unpruned model's (``feedback``), whether
        the measurement can be trusted (the feedback's ``reliable``, if it has one), the
        half-width of its 95% interval over the ratio (its ``halfwidth``, else 0) and why
        it cannot be trusted where that is not the spread (its ``note``, else "")."""
        import copy

        from .apply import apply_plan

        slim = apply_plan(copy.deepcopy(self.module).eval(), plan, self.example_inputs, check=False)
        ratio = float(self.feedback(slim))
        if not (math.isfinite(ratio) and ratio > 0):
            raise PruningError(f"the latency feedback returned {ratio!r}, not a positive ratio")
        halfwidth = getattr(self.feedback, "halfwidth", None)
        halfwidth = float(halfwidth) if halfwidth is not None else 0.0
        note = str(getattr(self.feedback, "note", "") or "")
        return ratio, bool(getattr(self.feedback, "reliable", True)), halfwidth, note

    def _feedback(
        self, scores: Mapping[int, np.ndarray], plan: Any, tries: list
    ) -> tuple[Any, float | None, float | None]:
        """Measure the step's plan and keep the table's error near it. On the last step,
        re-solve (from the channels alive before it) until the plan measures within
        ``[1 - FEEDBACK_BELOW, 1 + FEEDBACK_TOLERANCE]`` of the target ratio with the
        half-width of its 95% interval added: the window, and the aim of the re-solves,
        move down by the interval, so that a plan measured noisily is still within the
        tolerance however the noise fell. Each re-solve's budget is
        :func:`next_budget`'s: the latest plan's error, or, once plans measured on
        both sides of the aim, a point between the nearest two; a re-solve that gives a
        plan measured already ends the tries. The plan returned is the largest whose
        ratio with its interval is within the upper bound (else the smallest), with its
        ratio and half-width; each plan measured is appended to ``tries`` as (predicted
        ratio, measured ratio, half-width)."""
        from .feedback import FEEDBACK_BELOW, FEEDBACK_SOLVES, FEEDBACK_TOLERANCE

        goal = self.target_ms / self.base_ms
        high, low = goal * (1 + FEEDBACK_TOLERANCE), goal * (1 - FEEDBACK_BELOW)
        last = self.steps_done == self.steps
        tried: list[tuple[float, float, Any]] = []
        for attempt in range(FEEDBACK_SOLVES + 1):
            measured, reliable, halfwidth, note = ddp.broadcast(
                self._measure(plan) if ddp.rank() == 0 else None
            )
            predicted = float(plan.predicted_ms) / self.base_ms
            tries.append((predicted, measured, halfwidth))
            if not reliable:
                # The machine is too busy to say what the plan costs. The plan stands as
                # the table predicts it, corrected by the last reliable measurement (on
                # the last step: a re-solve that correction made, or the step's plan).
                why = note or (
                    f"the timings of the plan spread too widely (median {measured:.3f}x, "
                    f"95% interval +-{halfwidth:.0%}); the machine is too busy to measure it"
                )
                if ddp.rank() == 0:  # every rank has the same plan: one warning
                    warnings.warn(
                        f"latency feedback at step {self.steps_done}: {why}, so the plan "
                        "stands as the table predicts it",
                        stacklevel=3,
                    )
                return plan, None, None
            self.latency_error = measured / predicted
            tried.append((measured, halfwidth, plan))
            # The window, and the aim within it, move down by the measurement's interval.
            within = low <= measured * (1 + halfwidth) <= high
            if not last or within or attempt == FEEDBACK_SOLVES:
                break
            aim = goal / (1 + halfwidth)
            budget = next_budget(
                [(float(p.predicted_ms) / self.base_ms, m) for m, _, p in tried],
                aim,
                self.latency_error,
            )
            again = self._solve_on_rank0(scores, budget * self.base_ms, clamp=True)
            if any(again.keep == p.keep for _, _, p in tried):
                break  # a plan measured already (the smallest, or a bracket's side)
            plan = again
        within = [t for t in tried if t[0] * (1 + t[1]) <= high]
        measured, halfwidth, plan = (
            max(within, key=lambda t: t[0]) if within else min(tried, key=lambda t: t[0])
        )
        return plan, measured, halfwidth

    @property
    def predicted_ms(self) -> float:
        """Predicted latency of the current widths."""
        if self.plan is None:
            return self.base_ms
        return float(self.plan.predicted_ms)

    @property
    def overhead_s(self) -> float:
        """Total wall seconds spent inside the pruner so far."""
        return math.fsum(self.timers.values())

    # -- the end ---------------------------------------------------------------------------

    def finalize(
        self, path: str | None = None, *, check: bool = True, optimizer: Any = None
    ) -> tuple[nn.Module, PrunePlan]:
        """Remove the pruned channels physically and return the slim model and its plan.

        If the schedule has not finished, the remaining pruning is done now, straight to
        the final target (with a warning): the returned model always meets the target.
        The model is changed in place (a DDP wrapper around it is stale afterwards:
        use the returned module). Called again (the built-in trainer finalizes as soon as
        the last step has run, ``TrainConfig.slim``), it returns the same model and plan,
        and writes the plan to ``path`` if given.

        Args:
            path: where to write ``plan.json`` (atomically); None writes nothing.
            check: compare the slim model with the masked one on random inputs first.

        Returns:
            ``(model, plan)``.

        Raises:
            PruningError: the slim model differs from the masked one, or the remaining
                pruning is infeasible.
        """
        if self.finalized and self._final is not None:
            slim, out = self._final
            if path is not None and ddp.rank() == 0:
                out.save(path)
            return slim, out
        self._check_live()
        self._check_shapes()
        self._check_calibrated()
        if not self.done:
            if ddp.rank() == 0:  # every rank finalizes at the same step: one warning
                warnings.warn(
                    f"pruning schedule finished {self.steps_done} of {self.steps} steps; "
                    "pruning the rest now, straight to the target",
                    stacklevel=2,
                )
            self._prune(self.target_ms)
            self.steps_done = self.steps
        self._masks.apply()
        result = None
        if check:
            result = self.graph.check(self.keep)
            if not result.passed:
                raise PruningError(
                    f"the channel-removed model differs from the masked one (max relative "
                    f"error {result.max_rel_err:.2e} > {result.rtol:.0e}); not removing"
                )
        marks = None if optimizer is None else optim_state.track(optimizer, self.module)
        slim = self.graph.remove(self.keep)
        self.finalized = True
        if marks is not None:
            fresh = optim_state.carry(optimizer, slim, marks)
            if fresh and ddp.rank() == 0:  # the same parameters on every rank
                warnings.warn(
                    f"the optimizer's state of {len(fresh)} parameter(s) could not be carried "
                    f"through the removal and starts afresh: {', '.join(fresh[:5])}",
                    stacklevel=2,
                )
        from lut_builder.signatures import model_layers

        layers = model_layers(slim, self.example_inputs)
        predicted = network_latency(
            self.table, layers, {n: (i.c_in, i.c_out) for n, i in layers.items()}
        )
        plan = self.plan
        base = {
            "keep": plan.keep,
            "sizes": plan.sizes,
            "widths": plan.widths,
            "predicted_ms": predicted,
            "budget_ms": self.target_ms,
            "value": plan.value,
            "total_value": plan.total_value,
            "cost_model": plan.cost_model,
            "model_ms": plan.model_ms,
            "overhead_ms": plan.overhead_ms,
            "scale": plan.scale,
            "bundles": plan.bundles,
            "solves": plan.solves,
        }
        out = PrunePlan(
            **base,
            target=self.target,
            target_ms=self.target_ms,
            base_ms=self.base_ms,
            schedule={
                "name": self.schedule,
                "steps": self.steps,
                "interval": self.interval,
                "start": self.start,
            },
            importance=self.importance_name,
            check=result.to_dict() if result is not None else {},
            history=tuple(self.history),
            table=_table_facts(self.table),
        )
        self._final = (slim, out)
        if path is not None and ddp.rank() == 0:
            out.save(path)
        return slim, out

    # -- saving and resuming ---------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        return {
            "importance": self.importance_name,
            "schedule": self.schedule,
            "steps": self.steps,
            "interval": self.interval,
            "start": self.start,
            "min_keep": self.min_keep,
            "monotone_table": self.monotone_table,
            "calibration_batches": self.calibration_batches,
            "target_ms": self.target_ms,
            "group_sizes": [g.size for g in self.graph.groups],
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume at the same iteration with the same masks.

        Save it next to the model's and optimizer's state; restore with a Pruner built
        the same way (same model architecture, table, target and schedule).
        """
        self._check_live()
        return {
            "version": STATE_VERSION,
            "config": self._config(),
            "iteration": self.iteration,
            "steps_done": self.steps_done,
            "keep": {int(g): list(k) for g, k in self.keep.items()},
            "importance": self.importance.state_dict(),
            "history": [r.to_dict() for r in self.history],
            "plan": None if self.plan is None else self.plan.to_dict(),
            "timers": dict(self.timers),
            "latency_error": self.latency_error,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`: same iteration, same masks (re-applied now).

        Raises:
            PruningError: the state was saved by a pruner with another configuration
                or for another model.
        """
        from ..solver.plan import Plan

        self._check_live()
        if state.get("version") != STATE_VERSION:
            raise PruningError(f"pruner state version {state.get('version')!r} is not supported")
        saved, mine = state["config"], self._config()
        diffs = []
        for key, value in mine.items():
            other = saved.get(key, 0 if key == "calibration_batches" else None)  # older states
            same = (
                math.isclose(other, value, rel_tol=1e-9)
                if key == "target_ms" and isinstance(other, (int, float))
                else other == value
            )
            if not same:
                diffs.append(f"{key}: saved {other!r}, now {value!r}")
        if diffs:
            hint = ""
            if saved.get("importance") != mine["importance"] and (
                self.importance_asked == AUTO_IMPORTANCE
            ):
                # ``auto`` may name another criterion than the version that saved the state;
                # a named criterion's default floor is DEFAULT_MIN_KEEP, so a state saved
                # at another default floor needs it named too
                floor = saved.get("min_keep")
                pin = (
                    f" --min-keep {floor:g}"
                    if self.min_keep_asked is None
                    and isinstance(floor, (int, float))
                    and floor != DEFAULT_MIN_KEEP
                    else ""
                )
                hint = (
                    f"; {AUTO_IMPORTANCE} runs {mine['importance']} here: to resume as "
                    f"saved, name --importance {saved.get('importance')}{pin}"
                )
            elif saved.get("min_keep") != mine["min_keep"] and self.min_keep_asked is None:
                # the default floor may differ from the version that saved the state
                hint = (
                    f"; the default floor is {mine['min_keep']:g} here: to resume as saved, "
                    f"pass --min-keep {saved.get('min_keep')}"
                )
            raise PruningError(
                "the pruner state was saved with another configuration ("
                + "; ".join(diffs)
                + ")"
                + hint
            )
        keep = {int(g): tuple(int(c) for c in k) for g, k in state["keep"].items()}
        if set(keep) != set(self.keep):
            raise PruningError("the pruner state names other channel groups than this model has")
        self.keep = keep
        self.iteration = int(state["iteration"])
        self.steps_done = int(state["steps_done"])
        self.importance.load_state_dict(state["importance"])
        self.history = [StepRecord.from_dict(r) for r in state["history"]]
        self.plan = None if state["plan"] is None else Plan.from_dict(state["plan"])
        self.timers.update(state.get("timers", {}))
        self.latency_error = float(state.get("latency_error", 1.0))
        self._masks = MaskSet(self.graph, self.keep)
        self._masks.apply()


def _table_facts(table: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    for name in ("path", "fingerprint", "alignment", "overhead_ms", "scale"):
        value = getattr(table, name, None)
        if value is not None:
            facts[name] = str(value) if name == "path" else value
    # How well the table's latency model predicted random-width copies at its build.
    from lut_builder.latency_model import check_summary

    check = check_summary((getattr(table, "overhead", None) or {}).get("check"))
    if check is not None:
        facts["check"] = check
    return facts
