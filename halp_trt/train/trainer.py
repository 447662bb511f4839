"""A built-in classification trainer that drives a :class:`~halp_trt.prune.Pruner`.

SGD with momentum, a per-iteration learning rate that warms up linearly
and then follows a cosine to zero, label smoothing, and mixed precision (fp16 autocast
with a gradient scaler) when training on CUDA. Under ``torchrun`` it wraps the model in
``DistributedDataParallel`` and shards the training set with a ``DistributedSampler``;
every rank evaluates the whole validation set.

The pruner, when given, follows the documented call order: ``accumulate()`` after
backward (after unscaling the gradients under AMP), ``step()`` after the optimizer step.
Once its last step has run, the pruned channels are removed (``finalize()``) and the slim
model trains on with its momentum (``TrainConfig.slim``; the wrapper rebuilt under DDP).
A pruner built with ``calibration_batches`` prunes before the first iteration instead
(``calibrate()`` on the first minibatches of a pass, no weight updated).
The trainer times every iteration that runs while pruning is under way, so the pruning
machinery's share of those iterations can be reported.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config.train import TrainConfig
from ..errors import UserError
from .data import ImageData


@dataclass
class TrainResult:
    """What a training run did.

    Attributes:
        epochs: one dict per epoch (epoch, lr, train_loss, train_acc, val_loss,
            val_acc, seconds).
        steps: one dict per pruning step: the pruner's :class:`StepRecord` plus the
            training loss and accuracy over the iterations since the previous step
            (and ``val_acc`` when ``eval_steps``).
        pruning_iterations_s: wall seconds of the iterations that ran while pruning
            was under way (up to and including the last pruning step).
        pruner_s: of those, seconds spent inside the pruner.
        iterations: training iterations run.
        bn_batches: minibatches over which the BatchNorms' running statistics were
            re-estimated after the last epoch (0: not re-estimated).
        final: ``val_loss`` and ``val_acc`` of the model as ``fit`` returns it (after
            that re-estimate; the last epoch's record is from before it).
        slimmed_at: the iteration after which the pruned channels were removed and the
            slim model trained on (``TrainConfig.slim``); None: not slimmed.
        slim_s: wall seconds the removal took (the pruner's check of it included).
    """

    epochs: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    pruning_iterations_s: float = 0.0
    pruner_s: float = 0.0
    iterations: int = 0
    bn_batches: int = 0
    final: dict[str, float] = field(default_factory=dict)
    slimmed_at: int | None = None
    slim_s: float = 0.0

    @property
    def pruning_overhead(self) -> float | None:
        """Pruner time over the rest of the iterations it ran in (what it adds)."""
        rest = self.pruning_iterations_s - self.pruner_s
        return self.pruner_s / rest if rest > 0 else None


def evaluate(
    model: nn.Module, dataset: Any, *, device: torch.device | str = "cpu", batch_size: int = 256
) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy of ``model`` on ``dataset``.

    Returns:
        ``(loss, accuracy)``; accuracy in [0, 1].
    """
    from torch.utils.data import DataLoader

    device = torch.device(device)
    was_training = model.training
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    try:
        with torch.no_grad():
            for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                out = model(x).float()
                loss_sum += F.cross_entropy(out, y, reduction="sum").item()
                correct += (out.argmax(1) == y).sum().item()
                total += y.numel()
    finally:
        model.train(was_training)
    if total == 0:
        return float("nan"), float("nan")
    return loss_sum / total, correct / total


def lr_at(iteration: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up over ``warmup`` iterations, then cosine from ``peak`` to 0."""
    if warmup > 0 and iteration < warmup:
        return peak * (iteration + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (iteration - warmup) / span)
    return 0.5 * peak * (1.0 + math.cos(math.pi * t))


def _since_step(n: int) -> str:
    """When the epoch's last pruning step was, for its epoch line."""
    if n == 0:
        return "pruned in the last iteration"
    return f"pruned {n} iteration{'s' if n > 1 else ''} before"


#: A pruning step leaves the BatchNorms' running statistics stale (they mix the removed
#: channels' effect in); at momentum 0.1 a fraction 0.9**n of them is left after n
#: iterations (4% after 30). An epoch that ends fewer iterations than this after a step
#: is also evaluated with its statistics re-estimated (``val_acc_settled``).
BN_SETTLE_ITERATIONS = 30


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    loader: Any,
    batches: int,
    device: Any,
    *,
    forward: Callable[[Any], Any] | None = None,
) -> int:
    """Re-estimate the running mean and variance of every BatchNorm of ``model`` that
    tracks them, as the plain average over the first ``batches`` minibatches of
    ``loader`` run through the model in training mode (no gradients, weights untouched).
    ``forward`` runs the model on one item of ``loader`` (default: ``model(x)`` on the
    item's first element, moved to ``device``); a loader that yields nothing leaves the
    statistics as they were.

    The running averages of training trail the weights by about ten iterations; after
    a pruning step they also mix statistics of the channels it removed. Under
    ``torch.distributed`` every rank averages its own shard and the ranks' estimates are
    averaged (the loader must be sharded).

    Returns:
        The number of minibatches used (0: no such BatchNorm, or ``batches`` is 0).
    """
    from ..prune.distributed import is_distributed

    norms = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not norms or batches <= 0 or (hasattr(loader, "__len__") and len(loader) == 0):
        return 0
    if forward is None:

        def forward(item: Any) -> Any:
            return model(item[0].to(device, non_blocking=True))

    saved = [(m, m.momentum, copy.deepcopy(m.state_dict())) for m in norms]
    was_training = model.training
    used = 0
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the minibatches
        model.train()
        for item in loader:
            if used >= batches:
                break
            forward(item)
            used += 1
    finally:
        for m, momentum, state in saved:
            m.momentum = momentum
            if not used:  # nothing seen (or the first batch failed): as they were
                m.load_state_dict(state)
        model.train(was_training)
    if is_distributed():
        import torch.distributed as dist

        world = dist.get_world_size()
        for m in norms:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf /= world
    return used


class Trainer:
    """Train (and prune) a classifier.

    Args:
        model: the network, already on its device (the pruner, if any, was built on it).
        data: train and val sets.
        config: hyper-parameters.
        pruner: a :class:`~halp_trt.prune.Pruner` of ``model``, or None.
        progress: show rich progress bars (epochs, pruning steps).
        on_step: called with each per-step log dict as it is made.
    """

    def __init__(
        self,
        model: nn.Module,
        data: ImageData,
        config: TrainConfig,
        *,
        pruner: Any = None,
        progress: bool = False,
        on_step: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.model = model
        self.data = data
        self.config = config
        self.pruner = pruner
        self.progress = progress
        self.on_step = on_step
        self.device = config.resolved_device()
        self.amp = config.amp if config.amp is not None else self.device.type == "cuda"
        if self.amp and self.device.type != "cuda":
            raise UserError("mixed precision (AMP) needs a CUDA device")

    @property
    def iterations_per_epoch(self) -> int:
        """Optimizer steps per epoch on this process (after sharding under DDP)."""
        return len(self._loader()[0])

    def _loader(self) -> tuple[Any, Any]:
        from torch.utils.data import DataLoader
        from torch.utils.data.distributed import DistributedSampler

        from ..prune.distributed import is_distributed

        gen = torch.Generator().manual_seed(self.config.seed)
        sampler = None
        if is_distributed():
            sampler = DistributedSampler(self.data.train, shuffle=True, seed=self.config.seed)
        loader = DataLoader(
            self.data.train,
            batch_size=self.config.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            generator=gen if sampler is None else None,
            num_workers=self.config.workers,
            drop_last=len(self.data.train) > self.config.batch_size,
            pin_memory=self.device.type == "cuda",
        )
        return loader, sampler

    def fit(self) -> TrainResult:
        """Run the epochs; returns a :class:`TrainResult`.

        Raises:
            UserError: the loss became NaN/inf, or what the pruner raises (infeasible
                target, NaN importances, a model that changed size).
        """
        from ..prune.distributed import rank

        cfg = self.config
        torch.manual_seed(cfg.seed)
        model = self.model
        net = self._wrapped(model)
        pruner = self.pruner
        loader, sampler = self._loader()
        per_epoch = len(loader)
        total = per_epoch * cfg.epochs
        if pruner is not None and pruner.last_iteration > total:
            raise UserError(
                f"the pruning schedule needs {pruner.last_iteration} iterations but "
                f"training runs {total} ({cfg.epochs} epochs x {per_epoch}): train longer, "
                "or use fewer steps or a shorter interval"
            )
        warmup = int(round(cfg.warmup_epochs * per_epoch))
        optimizer = self._optimizer(model)
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        result = TrainResult()
        show = self.progress and rank() == 0
        bars = _Bars(show, cfg.epochs, per_epoch, pruner)
        window = [0.0, 0, 0]  # loss sum, correct, count since the last pruning step
        it = 0
        stepped = None  # the iteration of the last pruning step while training
        with bars:
            if pruner is not None and getattr(pruner, "calibration_batches", 0) and not pruner.done:
                model, net, pruner = self._calibrated(
                    pruner, model, loader, sampler, criterion, optimizer, result, bars
                )
            for epoch in range(cfg.epochs):
                if sampler is not None:
                    sampler.set_epoch(epoch)
                net.train()
                t_epoch = time.perf_counter()
                e_loss, e_correct, e_count = 0.0, 0, 0
                for x, y in loader:
                    t_iter = time.perf_counter()
                    pruner_before = pruner.overhead_s if pruner is not None else 0.0
                    pruning = pruner is not None and not pruner.done
                    lr = lr_at(it, total, warmup, cfg.lr)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    x, y = (
                        x.to(self.device, non_blocking=True),
                        y.to(self.device, non_blocking=True),
                    )
                    optimizer.zero_grad(set_to_none=True)
                    with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                        out = net(x)
                        loss = criterion(out.float(), y)
                    if not torch.isfinite(loss):
                        raise UserError(
                            f"the training loss became {loss.item()} at iteration {it} "
                            f"(epoch {epoch + 1}): lower the learning rate (--lr)"
                        )
                    scaler.scale(loss).backward()
                    if pruner is not None:
                        if self.amp:
                            scaler.unscale_(optimizer)
                        pruner.accumulate(skip_nonfinite=self.amp)
                    scaler.step(optimizer)
                    scaler.update()
                    record = pruner.step() if pruner is not None else None
                    n = y.numel()
                    loss_v = loss.item()
                    correct = (out.argmax(1) == y).sum().item()
                    e_loss += loss_v * n
                    e_correct += correct
                    e_count += n
                    window[0] += loss_v * n
                    window[1] += correct
                    window[2] += n
                    it += 1
                    if pruning:
                        result.pruning_iterations_s += time.perf_counter() - t_iter
                        result.pruner_s += pruner.overhead_s - pruner_before
                    if record is not None:
                        stepped = it
                        entry = {
                            **record.to_dict(),
                            "epoch": epoch + 1,
                            "train_loss": window[0] / max(1, window[2]),
                            "train_acc": window[1] / max(1, window[2]),
                        }
                        window = [0.0, 0, 0]
                        self._log_step(entry, model, result, bars)
                        if cfg.slim and pruner.done:
                            model = self._slimmed(pruner, optimizer, result, it)
                            net, pruner = self._wrapped(model), None
                    bars.advance(epoch, loss_v)
                val_loss, val_acc = evaluate(model, self.data.val, device=self.device)
                rec = {
                    "epoch": epoch + 1,
                    "lr": lr_at(max(0, it - 1), total, warmup, cfg.lr),
                    "train_loss": e_loss / max(1, e_count),
                    "train_acc": e_correct / max(1, e_count),
                    "val_loss": val_loss,
                    "val_acc": val_acc,
                    "seconds": time.perf_counter() - t_epoch,
                }
                if stepped is not None and it - stepped < BN_SETTLE_ITERATIONS:
                    rec["val_acc_settled"] = self._settled_accuracy(model)
                    rec["iterations_since_step"] = it - stepped
                result.epochs.append(rec)
                bars.epoch_done(rec)
        result.iterations = it
        if cfg.epochs:
            result.bn_batches = recalibrate_bn(model, loader, cfg.bn_batches, self.device)
            if result.bn_batches:
                val_loss, val_acc = evaluate(model, self.data.val, device=self.device)
            result.final = {"val_loss": val_loss, "val_acc": val_acc}
        self.model = model
        return result

    def _settled_accuracy(self, model: nn.Module) -> float | None:
        """Validation accuracy of a copy of ``model`` with its BatchNorm statistics
        re-estimated (:func:`recalibrate_bn` over up to ``bn_batches`` training minibatches
        in order), as the model will have them at the end; None when ``bn_batches`` is 0.
        The training is left exactly as it was: the model, its statistics and every random
        generator (the copy's pass is made under a forked RNG state)."""
        from torch.utils.data import DataLoader

        if not self.config.bn_batches:
            return None
        devices = []  # the CUDA generators forked with the CPU's: this device's
        if self.device.type == "cuda":
            index = self.device.index
            devices = [torch.cuda.current_device() if index is None else index]
        with torch.random.fork_rng(devices=devices):
            twin = copy.deepcopy(model)
            loader = DataLoader(self.data.train, batch_size=self.config.batch_size)
            if not recalibrate_bn(twin, loader, self.config.bn_batches, self.device):
                return None
            return evaluate(twin, self.data.val, device=self.device)[1]

    def _calibrated(self, pruner, model, loader, sampler, criterion, optimizer, result, bars):
        """A pruner built with ``calibration_batches``: its one step before training,
        scored on the first minibatches of a pass over the training set (the sampler's
        epoch 0 under DDP), nothing updated; then the slim model (``TrainConfig.slim``).

        Returns ``(model, the loop's wrapped model, pruner or None once slimmed)``."""
        cfg = self.config
        if sampler is not None:
            sampler.set_epoch(0)
        t0, before = time.perf_counter(), pruner.overhead_s
        batches = ((x.to(self.device), y.to(self.device)) for x, y in loader)
        record = pruner.calibrate(batches, criterion)
        result.pruning_iterations_s += time.perf_counter() - t0
        result.pruner_s += pruner.overhead_s - before
        self._log_step({**record.to_dict(), "epoch": 0}, model, result, bars)
        if not cfg.slim:
            return model, self._wrapped(model), pruner
        model = self._slimmed(pruner, optimizer, result, 0)
        return model, self._wrapped(model), None

    def _log_step(self, entry: dict[str, Any], model: nn.Module, result, bars) -> None:
        """A pruning step's log entry, with the validation scores (``eval_steps``), into
        the result, ``on_step`` and the progress bars."""
        if self.config.eval_steps:
            entry["val_loss"], entry["val_acc"] = evaluate(model, self.data.val, device=self.device)
        result.steps.append(entry)
        if self.on_step:
            self.on_step(entry)
        bars.pruned(entry)

    def _slimmed(self, pruner, optimizer, result, iteration: int) -> nn.Module:
        """The slim model after the last pruning step (after ``iteration`` iterations);
        the optimizer is pointed at the slim parameters in place."""
        t_slim = time.perf_counter()
        model, _ = pruner.finalize(optimizer=optimizer)
        result.slimmed_at = iteration
        result.slim_s = time.perf_counter() - t_slim
        return model

    def _wrapped(self, model: nn.Module) -> nn.Module:
        """What the loop calls: ``model`` in DistributedDataParallel under torchrun."""
        from ..prune.distributed import is_distributed

        if is_distributed() and not isinstance(model, nn.parallel.DistributedDataParallel):
            ids = [self.device.index] if self.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return model

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """SGD with momentum; no weight decay on biases and normalisation weights."""
        cfg = self.config
        decay, no_decay = [], []
        for p in model.parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)
        return torch.optim.SGD(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
            momentum=cfg.momentum,
        )


class _Bars:
    """Rich progress bars for epochs and pruning steps (nothing when disabled)."""

    def __init__(self, show: bool, epochs: int, per_epoch: int, pruner: Any) -> None:
        self.show = show
        self.progress = None
        if not show:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.per_epoch = max(1, per_epoch)
        self.epochs = epochs
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.t_epochs = self.progress.add_task(
            "epochs", total=epochs * self.per_epoch, info="", visible=epochs > 0
        )
        self.t_steps = None
        if pruner is not None:
            self.t_steps = self.progress.add_task(
                "pruning steps", total=pruner.steps, info=f"target {pruner.target_ms:.3f} ms"
            )

    def __enter__(self) -> _Bars:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def advance(self, epoch: int, loss: float) -> None:
        if self.progress is not None:
            self.progress.update(
                self.t_epochs, advance=1, info=f"epoch {epoch + 1}/{self.epochs} loss {loss:.3f}"
            )

    def pruned(self, entry: dict[str, Any]) -> None:
        if self.progress is not None and self.t_steps is not None:
            self.progress.update(
                self.t_steps,
                advance=1,
                info=f"{entry['predicted_ms']:.3f} ms (budget {entry['budget_ms']:.3f})",
            )

    def epoch_done(self, rec: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.console.print(
                f"epoch {rec['epoch']}: loss {rec['train_loss']:.3f} train acc "
                f"{rec['train_acc']:.3f} val acc {rec['val_acc']:.3f}"
                + (
                    f" ({rec['val_acc_settled']:.3f} with BatchNorm statistics re-estimated: "
                    + _since_step(rec["iterations_since_step"])
                    + ")"
                    if rec.get("val_acc_settled") is not None
                    else ""
                )
            )
