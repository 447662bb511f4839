"""HALP pruning inside a PyTorch Lightning ``Trainer``: :class:`HALPCallback`.

Usage::

    import lightning as L
    from halp_trt.integrations.lightning import HALPCallback
    from lut_builder import LatencyTable

    class Classifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = resnet20()
            self.example_input_array = torch.zeros(1, 3, 32, 32)  # the deployment shape
        ...

    halp = HALPCallback(LatencyTable.open("resnet20.lut"), "0.5x", plan_path="plan.json")
    L.Trainer(max_epochs=10, callbacks=[halp]).fit(Classifier(), loader)
    # The module's channels are now removed in place; halp.plan holds the widths.

Where the callback puts the :class:`~halp_trt.prune.Pruner`'s calls, and why:

- ``on_fit_start``: the pruner is built on the LightningModule itself (never on the
  DDP wrapper), on its device and in its precision, after a resumed checkpoint has
  restored the weights.
- ``on_train_start``: in a fit too short for two of HALP's steps
  (:meth:`~halp_trt.config.PruneConfig.for_run`, ``short_run="calibrate"``, the
  default) or with ``calibration_batches`` asked for, ``calibrate()``: the one pruning
  step before the first optimizer step, scored on the first ``calibration_batches``
  batches of a pass over the training dataloader (each rank's own under ``ddp``), each
  loss the module's own ``training_step`` (its logging muted meanwhile; under a
  gradient scaler, ``16-mixed``, in full precision), no weight updated; the fit then
  trains the final widths, masked, as halp-trt's trainer does.
- ``on_before_optimizer_step``: ``accumulate()``. Lightning calls it once per optimizer
  step, after the last backward of a gradient-accumulation window, after the AMP
  scaler has unscaled the gradients and before gradient clipping: the gradients there
  are the true ones of the whole effective batch. (``on_after_backward`` sees scaled
  gradients under ``16-mixed``, and with ``accumulate_grad_batches=k`` running sums
  that would count the first micro-batches several times.) With a gradient scaler,
  overflowed steps, which the scaler skips, are left out of the importance too.
- ``on_train_batch_end``: ``step()``, once per optimizer step (when
  ``trainer.global_step`` has advanced): it runs after ``optimizer.step()`` and masks
  the pruned channels again. Iterations, ``interval`` and ``start`` count optimizer
  steps, the unit of ``trainer.global_step`` and ``trainer.estimated_stepping_batches``.
- ``on_train_end``: ``finalize()``, while the model is still on its device (Lightning
  moves it to the CPU before ``on_fit_end``). A fit that stops before the schedule has
  finished (early stopping, ``max_time``) gets the rest pruned straight to the target,
  with a warning. With ``bn_batches=N``, then every BatchNorm's running statistics
  re-estimated on the slim module as the plain average over the first N batches of a
  pass over the training dataloader, each run through the module's ``training_step``
  without gradients (its logging muted), as halp-trt's trainer does after its last
  epoch (``TrainConfig.bn_batches``); under ``ddp`` each rank averages its own shard
  and the ranks' estimates are averaged.

Under ``strategy="ddp"`` every rank runs every hook: importances are averaged over
ranks, rank 0 solves, every rank applies its decision, and only rank 0 writes the plan.
The callback's ``state_dict`` carries the pruner's, so a fit resumed from a checkpoint
(``ckpt_path=``) continues with the same masks, accumulated importance and schedule.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..config import ConfigError, PruneConfig
from ..errors import UserError
from ..importance import DEFAULT_IMPORTANCE
from ..prune import PrunePlan, Pruner

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the module imports without the extra; the callback needs it

    class Callback:  # type: ignore[no-redef]
        """Stands in for Lightning's base class when Lightning is not installed."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ImportError(
                "HALPCallback needs PyTorch Lightning: pip install 'halp-trt[lightning]'"
            )


if TYPE_CHECKING:
    import lightning.pytorch as pl


class HALPCallback(Callback):
    """Prunes a LightningModule's channels to a latency target while it trains (HALP).

    Args:
        table: a latency table (``lut_builder.LatencyTable``) covering every layer, or
            the path of one.
        target: ``"0.5x"`` (fraction of the unpruned predicted latency), ``"3ms"``, or
            milliseconds as a number.
        example_inputs: an input (tensor or tuple) of the shape the latency is for (the
            table's batch and image size); default: the module's
            ``example_input_array``. Moved to the module's device at fit start.
        importance: a criterion name (:func:`halp_trt.importance.list_importances`),
            ``"module:attr"``, or a criterion class or factory.
        steps: pruning steps (HALP: 30).
        interval: optimizer steps between pruning steps. None spreads the steps over
            the first ``prune_window`` of the fit (half by default;
            ``trainer.estimated_stepping_batches``), at least ``min_interval`` (40)
            apart, as ``halp-trt prune`` does; a fit too short for them gets fewer
            steps, down to one, and a warning saying so. A resumed fit keeps its checkpoint's schedule.
        schedule: ``"exp"`` (HALP), ``"linear"`` or ``"oneshot"``.
        plan_path: where rank 0 writes ``plan.json`` at the end; None writes nothing.
        bn_batches: after the fit, re-estimate the slim module's BatchNorm statistics
            over this many training batches (0, the default: leave the running averages
            training left). Off by default because it runs the module's own
            ``training_step`` once more per batch (anything it does besides the forward
            pass, such as updating a metric, happens again); the built-in trainer does
            it by default (100). Not with manual optimization.
        **options: the other fields of :class:`halp_trt.config.PruneConfig`:
            ``interval_epochs``, ``start``, ``frozen_layers``, ``cost_model``,
            ``bundle``, ``min_channels``, ``min_keep``, ``prune_window``,
            ``min_interval``, ``short_run`` (``"train"``: a short fit prunes once while
            training instead), ``calibration_batches`` (with ``schedule="oneshot"``:
            prune before training whatever the fit's length).

    Attributes:
        config: the :class:`~halp_trt.config.PruneConfig` the arguments make.
        pruner: the :class:`~halp_trt.prune.Pruner`, from fit start on (None before).
        plan: the :class:`~halp_trt.prune.PrunePlan` once the fit has ended (None
            before); the LightningModule has then been slimmed in place.

    Raises:
        TypeError: a keyword that is no PruneConfig field.
        ConfigError: a value a PruneConfig field does not allow (at once).
        UserError: at fit start: no example inputs, an unsupported strategy (only
            single-device and ``ddp``), more than one optimizer, an endless fit without
            ``interval``, a callback that has already slimmed its model, a calibration
            with manual optimization, ``bn_batches`` with manual optimization; at
            train start, a ``training_step`` that returns
            no loss to calibrate with; and all that :class:`~halp_trt.prune.Pruner` raises
            (``PruningError``: a table that does not cover the model, an infeasible
            target, fewer training batches than calibration asks for, ...).
    """

    def __init__(
        self,
        table: Any,
        target: str | float,
        example_inputs: Any = None,
        *,
        importance: Any = DEFAULT_IMPORTANCE,
        steps: int = 30,
        interval: int | None = None,
        schedule: str = "exp",
        plan_path: str | os.PathLike | None = None,
        bn_batches: int = 0,
        **options: Any,
    ) -> None:
        super().__init__()
        if isinstance(bn_batches, bool) or not isinstance(bn_batches, int) or bn_batches < 0:
            raise ConfigError("HALPCallback", "bn_batches", "must be an integer >= 0", bn_batches)
        self.config = PruneConfig(
            target=target,
            importance=importance,
            steps=steps,
            interval=interval,
            schedule=schedule,
            **options,
        )
        self.table = table
        self.example_inputs = example_inputs
        self.plan_path = plan_path
        self.bn_batches = bn_batches
        self.pruner: Pruner | None = None
        self.plan: PrunePlan | None = None
        self._pending: dict[str, Any] | None = None  # state loaded before the pruner exists
        self._skip_nonfinite = False
        self._global_step = 0

    @classmethod
    def from_config(
        cls,
        table: Any,
        config: PruneConfig,
        example_inputs: Any = None,
        *,
        plan_path: str | os.PathLike | None = None,
        bn_batches: int = 0,
    ) -> HALPCallback:
        """The callback for a :class:`~halp_trt.config.PruneConfig` (other arguments as
        for the constructor)."""
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        return cls(
            table,
            example_inputs=example_inputs,
            plan_path=plan_path,
            bn_batches=bn_batches,
            **fields,
        )

    # -- set-up ----------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Build the pruner on the module (restoring a checkpoint's pruner state).

        Raises:
            UserError: see the class docstring.
        """
        from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

        if self.plan is not None or (self._pending or {}).get("finalized"):
            raise UserError(
                "HALPCallback has already slimmed this model; to prune it again, fit the "
                "slim model with a new HALPCallback (and no checkpoint of the old one)"
            )
        _check_strategy(trainer)
        if len(trainer.optimizers) != 1:
            raise UserError(
                f"HALPCallback needs exactly one optimizer, the module configures "
                f"{len(trainer.optimizers)}"
            )
        inputs = _example_inputs(self.example_inputs, trainer, pl_module)
        saved = (self._pending or {}).get("pruner")
        if saved is None and self.pruner is not None:
            saved = self.pruner.state_dict()  # an earlier fit was interrupted: go on
        config = self.config
        if saved is not None and saved["config"].get("calibration_batches"):
            # The short fit's calibrated step the checkpoint was made with.
            keys = ("schedule", "steps", "interval", "calibration_batches")
            config = config.replace(**{k: saved["config"][k] for k in keys})
        elif saved is not None and config.interval is None and config.interval_epochs is None:
            # The schedule the checkpoint was made with, even if this fit is longer.
            steps, interval = saved["config"]["steps"], saved["config"]["interval"]
            config = config.replace(steps=steps, interval=interval)
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total) and config.interval is None and not config.calibration_batches:
            raise UserError(
                "HALPCallback cannot spread its pruning steps over a fit without an end "
                "(max_epochs=-1 and no max_steps): pass interval="
            )
        batches = trainer.num_training_batches
        per_epoch = (
            math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else None
        )
        if saved is None and math.isfinite(total):
            # A fit too short for two steps prunes before training (PruneConfig.short_run).
            config, short = config.for_run(int(total), per_epoch)
            if short:
                rank_zero_warn(f"HALPCallback: {short}")
        if config.calibration_batches and not pl_module.automatic_optimization:
            raise UserError(
                "HALPCallback prunes this fit before training with the loss training_step "
                "returns, which manual optimization does not: pass short_run='train' to "
                "prune while training"
            )
        if self.bn_batches and not pl_module.automatic_optimization:
            raise UserError(
                "HALPCallback re-estimates BatchNorm statistics through training_step, "
                "which under manual optimization would step the optimizer: pass "
                "bn_batches=0 and call halp_trt.train.recalibrate_bn after the fit"
            )
        self.pruner = Pruner.from_config(
            pl_module,
            inputs,
            self._open_table(),
            config,
            total_iterations=int(total) if math.isfinite(total) else None,
            iterations_per_epoch=per_epoch,
            say=lambda line: rank_zero_warn(f"HALPCallback: {line}"),
        )
        if saved is not None:
            self.pruner.load_state_dict(saved)
        self._pending = None
        self._skip_nonfinite = getattr(trainer.precision_plugin, "scaler", None) is not None
        p = self.pruner
        when = (
            p.when
            if p.calibration_batches
            else f"{p.steps} {p.schedule} pruning steps, one every {p.interval} optimizer "
            f"step(s) from step {p.start}"
        )
        rank_zero_info(
            f"HALP: unpruned predicted {p.base_ms:.4g} ms, target {config.target} = "
            f"{p.target_ms:.4g} ms; {when} (importance {p.importance_label})"
        )

    def _open_table(self) -> Any:
        if isinstance(self.table, (str, os.PathLike)):
            from lut_builder import LatencyTable

            return LatencyTable.open(self.table)
        return self.table

    # -- training --------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Note the optimizer step training starts from (restored only now on resume);
        a calibrating pruner's one step, before the first optimizer step.

        Raises:
            UserError: see the class docstring.
        """
        self._global_step = trainer.global_step
        pruner = self._live()
        if pruner.calibration_batches and not pruner.steps_done:
            record = self._calibrate(trainer, pl_module)
            from lightning.pytorch.utilities import rank_zero_info

            rank_zero_info(
                f"HALP: pruned before training on {record.minibatches} batches: predicted "
                f"{record.predicted_ms:.4g} ms, {record.kept} of {record.total} channels kept"
            )

    def _calibrate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        """``Pruner.calibrate()`` on the first batches of a pass over the training
        dataloader, each batch's loss the module's ``training_step``'s."""
        batches = _training_batches(trainer, "calibrate on")
        plugin = trainer.precision_plugin
        # Under a gradient scaler (16-mixed) in full precision, as halp-trt's trainer
        # calibrates: an fp16 backward without the scaler's factor can underflow, and the
        # calibration has no scaler step to skip an overflowed batch.
        unscaled = getattr(plugin, "scaler", None) is not None

        def batch_loss(item: tuple[Any, int]) -> Any:
            batch, idx = item
            with contextlib.nullcontext() if unscaled else plugin.train_step_context():
                out = pl_module.training_step(batch, idx)
            loss = out.get("loss") if isinstance(out, Mapping) else out
            if loss is None:
                raise UserError(
                    "HALPCallback calibrates with the loss training_step returns, and it "
                    "returned none: return the loss (or {'loss': ...})"
                )
            return loss

        with _muted(pl_module):
            return self._live().calibrate(batches, batch_loss=batch_loss)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        """Add the effective batch's (unscaled, unclipped) gradients to the importance."""
        self._live().accumulate(skip_nonfinite=self._skip_nonfinite)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """After an optimizer step: mask the pruned channels again, prune when due."""
        if trainer.global_step == self._global_step:
            return  # inside a gradient-accumulation window: no optimizer step yet
        self._global_step = trainer.global_step
        record = self._live().step()
        if record is not None:
            pl_module.log_dict(
                {
                    "halp/predicted_ms": record.predicted_ms,
                    "halp/kept_fraction": record.kept / record.total,
                },
                on_step=True,
                on_epoch=False,
            )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Remove the pruned channels from the module in place; keep the plan."""
        path = self.plan_path if trainer.is_global_zero else None
        _, self.plan = self._live().finalize(None if path is None else os.fspath(path))
        from lightning.pytorch.utilities import rank_zero_info

        rank_zero_info(
            f"HALP: channels removed; predicted {self.plan.predicted_ms:.4g} ms "
            f"(target {self.plan.target_ms:.4g} ms, unpruned {self.plan.base_ms:.4g} ms)"
            + (f"; plan written to {os.fspath(path)}" if path is not None else "")
        )
        if self.bn_batches:
            used = self._recalibrate_bn(trainer, pl_module)
            rank_zero_info(f"HALP: BatchNorm statistics re-estimated over {used} batches")

    def _recalibrate_bn(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
        """``recalibrate_bn`` on the slim module, each batch through ``training_step``."""
        from ..train import recalibrate_bn

        plugin = trainer.precision_plugin

        def forward(item: tuple[Any, int]) -> None:
            with plugin.train_step_context():
                pl_module.training_step(*item)

        with _muted(pl_module):
            batches = _training_batches(trainer, "re-estimate BatchNorm statistics on")
            return recalibrate_bn(
                pl_module, batches, self.bn_batches, pl_module.device, forward=forward
            )

    def _live(self) -> Pruner:
        if self.pruner is None:
            raise UserError("HALPCallback has no pruner: it is built at fit start")
        return self.pruner

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The pruner's state (masks, iteration, importance), or the plan once slimmed."""
        if self.plan is not None:
            return {"finalized": True, "plan": self.plan.to_dict()}
        if self.pruner is None:
            return dict(self._pending or {})
        return {"pruner": self.pruner.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`; before fit start it is kept until the pruner
        exists (Lightning restores callbacks before ``on_fit_start``).

        Raises:
            PruningError: the state was saved by a pruner with another configuration.
        """
        if self.pruner is not None and not state_dict.get("finalized"):
            self.pruner.load_state_dict(state_dict["pruner"])
        else:
            self._pending = dict(state_dict)


def _training_batches(trainer: pl.Trainer, what: str) -> Any:
    """``(batch, batch_idx)`` over a pass of the training dataloader(s), on the device."""
    from lightning.pytorch.utilities import CombinedLoader

    if trainer.train_dataloader is None:
        raise UserError(f"HALPCallback has no training dataloader to {what}")
    loader = iter(CombinedLoader(trainer.train_dataloader, mode="max_size_cycle"))
    return (
        (trainer.strategy.batch_to_device(batch, dataloader_idx=i), idx) for batch, idx, i in loader
    )


@contextlib.contextmanager
def _muted(pl_module: pl.LightningModule) -> Any:
    """``self.log`` and ``self.log_dict`` do nothing meanwhile: the batches that score
    channels or re-estimate statistics are no training."""
    mute = lambda *args, **kwargs: None  # noqa: E731
    pl_module.log, pl_module.log_dict = mute, mute
    try:
        yield
    finally:
        del pl_module.log, pl_module.log_dict


def _check_strategy(trainer: pl.Trainer) -> None:
    from lightning.pytorch.strategies import (
        DDPStrategy,
        DeepSpeedStrategy,
        SingleDeviceStrategy,
        XLAStrategy,
    )

    strategy = trainer.strategy
    name = type(strategy).__name__
    if isinstance(strategy, (DeepSpeedStrategy, XLAStrategy)) or not isinstance(
        strategy, (DDPStrategy, SingleDeviceStrategy)
    ):
        raise UserError(
            f"HALPCallback supports single-device training and strategy='ddp', not {name}"
        )
    method = getattr(strategy, "_start_method", "popen")
    if isinstance(strategy, DDPStrategy) and method != "popen":
        # The worker processes slim the model; Lightning then loads rank 0's weights
        # into the main process's full-width module, which cannot take them.
        raise UserError(
            f"HALPCallback cannot run under a {method}-launched DDP strategy (the slim "
            "weights cannot be handed back to the main process): use strategy='ddp'"
        )


def _example_inputs(given: Any, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
    """The example inputs on the module's device and in the trainer's input precision."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    inputs = given if given is not None else pl_module.example_input_array
    if inputs is None:
        raise UserError(
            "HALPCallback needs an example input of the deployment shape: pass "
            "example_inputs= or set example_input_array on the LightningModule"
        )
    if isinstance(inputs, Mapping):
        raise UserError(
            "HALPCallback needs positional example inputs (a tensor or a tuple), not a dict"
        )
    if isinstance(inputs, list):
        inputs = tuple(inputs)
    inputs = move_data_to_device(inputs, pl_module.device)
    return trainer.precision_plugin.convert_input(inputs)
