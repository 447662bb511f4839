"""Train, evaluate and prune-while-training the detector.

:func:`prune_detector` is HALP's loop on a detector through the public API: a
:class:`halp_trt.Pruner` set up by a :class:`halp_trt.PruneConfig`, ``accumulate()`` after
each backward pass, ``step()`` after each optimizer step, and ``finalize()`` as soon as
the last step has run (``DetectionTraining.slim``): the channels are removed, the slim
model is checked against the masked one, and it trains on with the same AdamW (both
moments carried) and learning-rate schedule. A run too short for two of HALP's steps
prunes once before training instead (:meth:`halp_trt.PruneConfig.for_run`), scored with
the detection loss on the first minibatches of a pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..errors import UserError
from .data import DetectionData
from .loss import multibox_loss
from .metrics import mean_average_precision
from .postprocess import decode


@dataclass
class DetectionTraining:
    """How the detector trains.

    Attributes:
        epochs: passes over the training images.
        batch_size: images per step.
        lr: Adam's peak learning rate (cosine decay to 5% of it over the run).
        weight_decay: AdamW's decoupled weight decay.
        seed: shuffling and flips.
        slim: with a pruner, remove the pruned channels once its last step has run and
            train the slim model for the rest of the run (what the masked one would
            compute, faster); False trains the masked model to the end.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    slim: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0 or self.weight_decay < 0:
            raise UserError(
                f"training needs epochs >= 1, batch_size >= 1, lr > 0 and weight_decay >= 0, "
                f"not {self}"
            )


@dataclass
class DetectionPruneResult:
    """What :func:`prune_detector` made: the slim model, its plan and a training log."""

    model: nn.Module
    plan: Any
    log: dict[str, Any] = field(default_factory=dict)


def _flip(images: torch.Tensor, boxes: list[torch.Tensor], gen: torch.Generator):
    """Mirror each image left-right with probability 1/2, boxes with it."""
    size = images.shape[-1]
    flip = torch.rand(images.shape[0], generator=gen) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    out = []
    for f, b in zip(flip.tolist(), boxes):
        out.append(torch.stack([size - b[:, 2], b[:, 1], size - b[:, 0], b[:, 3]], 1) if f else b)
    return images, out


def train_detector(
    model: nn.Module,
    data: DetectionData,
    config: DetectionTraining,
    *,
    pruner: Any = None,
    say: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    """Train ``model`` on ``data`` with :func:`~halp_trt.detection.loss.multibox_loss`.

    With a ``pruner`` (a :class:`halp_trt.Pruner` on this model) the loop calls
    ``pruner.accumulate()`` after every backward pass and ``pruner.step()`` after every
    optimizer step, and with ``config.slim`` ``pruner.finalize(optimizer=...)`` once the
    last step has run (``model`` is slimmed in place). A pruner built with
    ``calibration_batches`` takes its one step before the first iteration instead
    (``pruner.calibrate()`` with the detection loss on the first minibatches of the
    first epoch's order, no weight updated).

    Returns:
        Per epoch ``{"epoch", "loss", "seconds"}``, and ``"slimmed_at"`` (the iteration)
        in the epoch where the channels were removed.

    Raises:
        UserError: the loss is no longer finite.
    """
    gen = torch.Generator().manual_seed(config.seed)
    priors = model.priors()
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total = steps_per_epoch * config.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(i, total) / total))
    )
    history = []
    model.train()
    iteration, slimmed = 0, None
    if pruner is not None and pruner.calibration_batches and not pruner.done:
        slimmed = _calibrate(model, data, config, pruner, opt, priors, say)
    for epoch in range(config.epochs):
        t0, losses = time.perf_counter(), []
        for images, boxes, labels in data.batches(config.batch_size, shuffle=True, generator=gen):
            images, boxes = _flip(images, boxes, gen)
            logits, offsets = model(images)
            loss = multibox_loss(logits, offsets, priors, boxes, labels)
            if not torch.isfinite(loss):
                raise UserError(f"the detection loss diverged in epoch {epoch + 1} ({loss.item()})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            live = pruner is not None and not pruner.finalized
            if live:
                pruner.accumulate()
            opt.step()
            sched.step()
            iteration += 1
            if live:
                record = pruner.step()
                if record is not None:
                    _say_step(record, say)
                if config.slim and pruner.done:
                    pruner.finalize(optimizer=opt)
                    slimmed = iteration
                    say(f"  channels removed after iteration {iteration}; training on slim")
            losses.append(loss.item())
        row = {
            "epoch": epoch + 1,
            "loss": sum(losses) / len(losses),
            "seconds": time.perf_counter() - t0,
        }
        if slimmed is not None:
            row["slimmed_at"], slimmed = slimmed, None
        history.append(row)
        say(f"epoch {row['epoch']}: loss {row['loss']:.3f} ({row['seconds']:.0f} s)")
    model.eval()
    return history


def _say_step(record: Any, say: Callable[[str], None]) -> None:
    say(
        f"  prune step {record.step}: predicted {record.predicted_ms:.3f} ms "
        f"(budget {record.budget_ms:.3f}), {record.kept}/{record.total} channels"
    )


def _calibrate(model, data, config, pruner, opt, priors, say) -> int | None:
    """The calibrated pruner's one step before training, scored with the detection loss
    on the first minibatches of the first epoch's order (the training loop's shuffle,
    no flips); then the slim model with ``config.slim``. Returns 0 where it slimmed."""
    gen = torch.Generator().manual_seed(config.seed)
    batches = (
        (images, (boxes, labels))
        for images, boxes, labels in data.batches(config.batch_size, shuffle=True, generator=gen)
    )
    record = pruner.calibrate(
        batches, lambda out, t: multibox_loss(out[0], out[1], priors, t[0], t[1])
    )
    _say_step(record, say)
    if not config.slim:
        return None
    pruner.finalize(optimizer=opt)
    say("  channels removed before the first iteration; training on slim")
    return 0


@torch.no_grad()
def predict(model: nn.Module, data: DetectionData, batch_size: int = 64) -> list[dict]:
    """Decoded, NMS-filtered detections of ``model`` on every image of ``data``."""
    was = model.training
    model.eval()
    priors = model.priors()
    out: list[dict] = []
    for images, _, _ in data.batches(batch_size):
        logits, offsets = model(images)
        out += decode(logits, offsets, priors, image_size=data.image_size)
    model.train(was)
    return out


def evaluate_detector(model: nn.Module, data: DetectionData) -> dict[str, float]:
    """COCO mAP of ``model`` on ``data`` (see :func:`mean_average_precision`)."""
    return mean_average_precision(predict(model, data), data.boxes, data.labels, data.num_classes)


def prune_detector(
    model: nn.Module,
    data: DetectionData,
    table: Any,
    prune: Any,
    train: DetectionTraining,
    *,
    batch: int = 8,
    say: Callable[[str], None] = print,
) -> DetectionPruneResult:
    """Fine-tune ``model`` while HALP prunes it to ``prune.target``; return it slim.

    Args:
        model: a trained :class:`~halp_trt.detection.SSDDetector` (changed in place).
        data: the training images.
        table: a :class:`lut_builder.LatencyTable` measured on this detector at
            ``(batch, 3, size, size)``.
        prune: a :class:`halp_trt.PruneConfig`; with no interval the steps are spread
            over the first half of the run; a run too short for two of them prunes
            once before training (``short_run``, :meth:`~halp_trt.PruneConfig.for_run`).
        train: the fine-tuning run.
        batch: the batch size the table was measured at (the example input's).

    Returns:
        A :class:`DetectionPruneResult`: the slim model (channels removed, checked
        against the masked one), its :class:`~halp_trt.PrunePlan` and the training log.

    Raises:
        PruningError: an infeasible target, a table that does not cover the model, or
            a slim model that differs from the masked one.
    """
    from ..prune import Pruner

    x = torch.zeros(batch, 3, data.image_size, data.image_size)
    per_epoch = math.ceil(len(data) / train.batch_size)
    total = per_epoch * train.epochs
    # A run too short for two of HALP's steps prunes before training (PruneConfig.for_run).
    prune, short = prune.for_run(total, per_epoch)
    if short:
        say(f"note: {short}")
    pruner = Pruner.from_config(
        model, x, table, prune, total_iterations=total, iterations_per_epoch=per_epoch, say=say
    )
    say(
        f"pruning to {prune.target}: {pruner.base_ms:.3f} -> {pruner.target_ms:.3f} ms predicted, "
        f"{pruner.when}, {len(pruner.graph.prunable)} prunable groups"
    )
    history = train_detector(model, data, train, pruner=pruner, say=say)
    slim, plan = pruner.finalize()
    log = {
        "epochs": history,
        "steps": [r.to_dict() for r in pruner.history],
        "frozen": sorted({g.reason or "" for g in pruner.graph.frozen}),
        "pruner_s": pruner.overhead_s,
        "slimmed_at": next((r["slimmed_at"] for r in history if "slimmed_at" in r), None),
    }
    return DetectionPruneResult(slim.eval(), plan, log)
