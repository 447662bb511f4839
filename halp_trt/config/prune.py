"""What a pruning run asks for: the target, the criterion, the schedule, the solver."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..importance import DEFAULT_IMPORTANCE
from ..prune.schedule import (
    DEFAULT_SPREAD,
    MIN_INTERVAL,
    SCHEDULES,
    SHORT_RUN_BATCHES,
    SHORT_RUNS,
    ScheduleFit,
    fit_schedule,
    split_target,
)
from ..solver.plan import COST_MODELS
from .base import ConfigBase, ConfigError, _is_number


def _is_fraction(value: Any) -> bool:
    """A number in (0, 1]."""
    return _is_number(value) and 0 < value <= 1


@dataclass
class PruneConfig(ConfigBase):
    """HALP's pruning loop, as :class:`halp_trt.Pruner` and ``halp-trt prune`` run it.

    Attributes:
        target: the latency target: ``"0.5x"`` (a fraction, below 1, of the unpruned
            model's predicted latency), ``"3ms"``, or milliseconds as a number.
        importance: a criterion name (``auto``, the default: ``taylor-fisher`` below
            0.55x of the unpruned latency, ``taylor-weights-mean`` from there up, unless
            depthwise convolutions read the residual streams, as a ConvNeXt's, where it
            stays ``taylor-fisher``: :func:`halp_trt.importance.auto_choice`;
            ``taylor-abs``, ``taylor``, ``l1``, ``l2``, ``sp-lamp`` or any registered one),
            ``"module:attr"`` naming a criterion class or factory, or the class /
            factory itself (not JSON-serialisable then: :meth:`to_dict` writes its
            ``module:qualname``).
        schedule: ``"exp"`` (HALP), ``"linear"`` or ``"oneshot"``.
        steps: pruning steps (HALP: 30); a run too short for them gets fewer, with a
            printed note.
        interval: training iterations between pruning steps. None (default): the
            steps are spread over the first ``prune_window`` of the training (see
            :func:`halp_trt.prune.schedule.fit_schedule`), or ``interval_epochs``.
        interval_epochs: epochs between pruning steps (fractions allowed); give this
            or ``interval``, not both.
        prune_window: without ``interval`` or ``interval_epochs``, the fraction of the
            training (after ``start``) the steps are spread over; the rest fine-tunes
            the final widths. Default 0.5 (HALP's own recipe prunes in about the first
            1% of a 90-epoch run; see bench/PARETO.md, "The pruning window").
        min_interval: fewest training iterations between steps spread over the
            window (default 40, HALP's interval): a shorter window prunes in fewer
            steps, down to one (see :data:`halp_trt.prune.schedule.MIN_INTERVAL`); 1:
            none. An explicit ``interval`` is kept as given.
        start: training iterations before the first accumulation window opens.
        cost_model: the solver's latency cost (``"one-sided"``, ``"joint"``); None:
            the solver's default.
        bundle: channels per knapsack item; None: the table's channel alignment.
        min_channels: fewest channels any group keeps; None: one bundle.
        min_keep: fewest channels any group keeps, as a fraction of its width; None:
            :func:`halp_trt.prune.pruner.default_min_keep` (0.1 where ``auto`` runs
            ``taylor-fisher`` on residual streams, 0.5 where it runs
            ``taylor-weights-mean`` from 0.55x up, else 0.3), 0: no floor.
        monotone_table: plan on the table's monotone envelope (see
            :class:`halp_trt.solver.monotone.MonotoneTable`; off by default).
        frozen_layers: layer names whose channels are never pruned.
        calibration_batches: 0 (default): prune while training. N > 0 (with the
            ``oneshot`` schedule): score the dense model on N training minibatches
            before the first iteration, no weight updated, and prune once there, so the
            whole run trains the final widths (:meth:`halp_trt.Pruner.calibrate`).
        short_run: what a run too short for two of its steps does (see
            :meth:`for_run`): ``"calibrate"`` (default) prunes once before training on
            :data:`~halp_trt.prune.schedule.SHORT_RUN_BATCHES` minibatches, ``"train"``
            once while training, where HALP's first step would be. The built-in trainer
            (``halp-trt prune``, ``halp-trt run``) applies it; :class:`halp_trt.Pruner`
            in a training loop of your own prunes as configured.

    Raises:
        ConfigError: a field outside what it allows (checked on construction).
    """

    target: str | float
    importance: Any = DEFAULT_IMPORTANCE
    schedule: str = "exp"
    steps: int = 30
    interval: int | None = None
    interval_epochs: float | None = None
    prune_window: float = DEFAULT_SPREAD
    min_interval: int = MIN_INTERVAL
    start: int = 0
    cost_model: str | None = None
    bundle: int | None = None
    min_channels: int | None = None
    min_keep: float | None = None
    monotone_table: bool = False
    frozen_layers: tuple[str, ...] = ()
    calibration_batches: int = 0
    short_run: str = "calibrate"

    def __post_init__(self) -> None:
        from ..errors import UserError
        from ..importance import resolve_importance

        try:
            value, unit = split_target(self.target)
        except UserError:
            self._fail("target", "must be like 0.5x (fraction of the unpruned latency) or 3ms")
        # Known without a table: 1x of the unpruned latency or more prunes nothing.
        self._require(
            "target", unit != "x" or value < 1, "must be below 1x (1x and above prune nothing)"
        )
        try:
            criterion, name = resolve_importance(self.importance)
        except UserError as exc:
            raise ConfigError(
                type(self).__name__, "importance", f"is not usable ({exc})", self.importance
            ) from None
        self._int("calibration_batches", 0)
        self._require(
            "calibration_batches",
            not getattr(criterion, "needs_batches", False) or self.calibration_batches > 0,
            f"must be at least 1 with importance {name}: it measures subnets on "
            "calibration minibatches and prunes once, before training",
        )
        self._choice("schedule", SCHEDULES)
        self._int("steps", 1)
        self._int("interval", 1, optional=True)
        if self.interval_epochs is not None:
            self._number("interval_epochs", low=0.0, open_low=True)
            self._require("interval_epochs", self.interval is None, "cannot be given with interval")
        self._require(
            "prune_window",
            _is_fraction(self.prune_window),
            "must be a fraction of the training in (0, 1]",
        )
        self._int("min_interval", 1)
        self._int("start", 0)
        self._require(
            "calibration_batches",
            not self.calibration_batches or self.schedule == "oneshot",
            "prunes once, before training: it needs the oneshot schedule",
        )
        self._choice("short_run", SHORT_RUNS)
        self._choice("cost_model", (None, *COST_MODELS))
        self._int("bundle", 1, optional=True)
        self._int("min_channels", 1, optional=True)
        self._choice("monotone_table", (True, False))
        if self.min_keep is not None:
            self._number("min_keep", low=0.0, high=1.0)
        if isinstance(self.frozen_layers, str):
            self.frozen_layers = (self.frozen_layers,)
        self.frozen_layers = tuple(self.frozen_layers)
        self._require(
            "frozen_layers",
            all(isinstance(n, str) and n for n in self.frozen_layers),
            "must be layer names",
        )

    @property
    def importance_name(self) -> str:
        """The criterion's name as a plan records it."""
        from ..importance import resolve_importance

        return resolve_importance(self.importance)[1]

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["importance"] = self.importance_name
        return out

    def fit_schedule(
        self, total_iterations: int, iterations_per_epoch: int | None = None
    ) -> ScheduleFit:
        """The steps and interval for a training run of ``total_iterations``.

        Returns:
            A :class:`~halp_trt.prune.schedule.ScheduleFit`; its ``note`` is one line
            when the run is too short for ``steps`` (fewer steps are used).

        Raises:
            ConfigError: an ``interval`` (or ``interval_epochs``) longer than the run, or
                a ``start`` at or after its end.
        """
        from ..errors import UserError

        try:
            return fit_schedule(
                self.steps,
                total_iterations,
                schedule=self.schedule,
                interval=self.interval,
                interval_epochs=self.interval_epochs,
                iterations_per_epoch=iterations_per_epoch,
                start=self.start,
                spread=self.prune_window,
                min_interval=self.min_interval,
            )
        except UserError as exc:
            field = "interval_epochs" if self.interval is None else "interval"
            if isinstance(total_iterations, int) and self.start >= total_iterations:
                field = "start"
            raise ConfigError(
                type(self).__name__, field, f"does not fit the run ({exc})", getattr(self, field)
            ) from None

    def for_run(
        self, total_iterations: int, iterations_per_epoch: int | None = None
    ) -> tuple[PruneConfig, str]:
        """The configuration a run of ``total_iterations`` prunes with, and a note.

        A run too short for two of its steps ``min_interval`` apart in its window, where
        HALP's loop comes down to one step taken while training, prunes once before
        training instead (``short_run="calibrate"``, the default): the ``oneshot``
        schedule scored on :data:`~halp_trt.prune.schedule.SHORT_RUN_BATCHES`
        minibatches (fewer when an epoch has fewer), so the whole run trains the final
        widths. Anything else is kept as configured: ``short_run="train"``, a run long
        enough for two steps, one step asked for, a schedule placed by hand
        (``interval``, ``interval_epochs``, ``start``) or calibration asked for.

        Returns:
            ``(config, note)``: this configuration and ``""``, or the one-step
            calibrated copy and one line saying why.

        Raises:
            ConfigError: an ``interval`` (or ``interval_epochs``) longer than the run.
        """
        placed = self.interval is not None or self.interval_epochs is not None or self.start
        if (
            self.short_run != "calibrate"
            or self.calibration_batches
            or self.schedule == "oneshot"
            or self.steps < 2
            or placed
        ):
            return self, ""
        fit = self.fit_schedule(total_iterations, iterations_per_epoch)
        if fit.steps > 1:
            return self, ""
        batches = min(SHORT_RUN_BATCHES, iterations_per_epoch or SHORT_RUN_BATCHES)
        note = (
            f"{total_iterations} training iterations leave room for one pruning step, not "
            f"two {self.min_interval} apart in the first {self.prune_window:g} of the "
            f"run: pruning once before training, scored on {batches} minibatches of the "
            f"dense model (short_run='train', --short-run train: once while training, "
            f"at iteration {fit.interval})"
        )
        return self.replace(schedule="oneshot", calibration_batches=batches), note

    def pruner_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`halp_trt.Pruner` (besides steps and interval)."""
        return {
            "importance": self.importance,
            "schedule": self.schedule,
            "start": self.start,
            "frozen_layers": self.frozen_layers,
            "cost_model": self.cost_model,
            "bundle": self.bundle,
            "min_channels": self.min_channels,
            "min_keep": self.min_keep,
            "monotone_table": self.monotone_table,
            "calibration_batches": self.calibration_batches,
        }
