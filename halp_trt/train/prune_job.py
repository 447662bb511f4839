"""Prune a classifier with the built-in trainer: what ``halp-trt prune`` and the prune
stage of ``halp-trt run`` do, as one library call.

:func:`prune_classifier` loads what it is given by name (model spec, data spec, table
path), checks everything a user can get wrong before any training, then trains while
HALP's pruning loop removes channels on a schedule, slims the model, checks it against
the masked one and returns it with its plan and a log. :func:`save_prune_result`
writes ``model.pt``, ``plan.json`` and ``log.json`` all at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..config import PruneConfig, TrainConfig
from ..errors import UserError
from ..prune.plan_file import PrunePlan


@dataclass
class PruneResult:
    """What :func:`prune_classifier` made.

    Attributes:
        model: the slim model (channels removed), in eval mode, on the CPU.
        plan: the final plan (kept channels, widths, predictions, step history).
        log: accuracies before and after, per-epoch and per-step records, timings.
    """

    model: nn.Module
    plan: PrunePlan
    log: dict[str, Any]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def classes_of(model: nn.Module, x: Any) -> int:
    """The number of logits a classifier returns for ``x``.

    Raises:
        UserError: the model does not return an ``N x classes`` tensor.
    """
    import torch

    with torch.no_grad():
        out = model(x)
    if not torch.is_tensor(out) or out.dim() != 2:
        raise UserError(
            "halp-trt prune trains classifiers: the model must return N x classes logits, "
            f"not {type(out).__name__} {tuple(getattr(out, 'shape', ()))}"
        )
    return int(out.shape[1])


def _on_rank0(model: nn.Module) -> float:
    raise RuntimeError("latency feedback is measured on rank 0 only")


def prune_classifier(
    model: nn.Module | str,
    data: Any,
    table: Any,
    prune: PruneConfig,
    train: TrainConfig,
    *,
    input_shape: tuple[int, ...] | None = None,
    weights: str | None = None,
    pretrain_epochs: int = 0,
    expect_backend: str | None = None,
    force_table: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
    log_extra: dict[str, Any] | None = None,
    feedback: dict[str, Any] | bool | None = None,
) -> PruneResult:
    """Train a classifier while HALP prunes it to ``prune.target``; return it slim.

    Args:
        model: an ``nn.Module`` or a model spec (``halp_trt.models:resnet20``, a
            saved ``.pt``...).
        data: an :class:`~halp_trt.train.ImageData` or a data spec (``digits``,
            ``npz:PATH``, ``imagefolder:PATH``).
        table: a :class:`lut_builder.LatencyTable` or the path of one.
        prune: target, criterion, schedule and solver settings. With
            ``prune.interval`` unset the steps are spread over the first
            ``prune.prune_window`` of the training (half by default), at least
            ``prune.min_interval`` (40) iterations apart; a run too short for
            ``prune.steps`` gets fewer, down to one (``say`` notes it), and one too
            short for two prunes once before training (``prune.short_run``,
            :meth:`~halp_trt.config.PruneConfig.for_run`; ``say`` notes it).
        train: the fine-tuning run (its ``epochs`` >= 1: pruning happens while
            training) and the seed.
        input_shape: the input the latency is for; default the table's, as it was
            built.
        weights: a state_dict file to load into the model (see
            :func:`lut_builder.specs.load_weights`).
        pretrain_epochs: train the dense model first for that many epochs.
        expect_backend: refuse a table measured on another backend.
        force_table: use an incomplete or mismatched table anyway.
        progress: show progress bars.
        say: where progress lines go (only rank 0 speaks under ``torchrun``).
        log_extra: facts added to the returned log (e.g. the command line).
        feedback: measure each pruning step's plan on this machine
            (:class:`halp_trt.prune.MeasuredLatency` keyword arguments: ``backend``,
            ``threads``, ...) and correct the budgets by it; True: the table's backend
            and thread count (:func:`halp_trt.prune.feedback.feedback_from_table`: a
            CPU table at FP32 measured on this CPU model, or a torch table of this
            machine's GPU, timed on it as its layers were); None: plans as the table
            predicts them. Only where this machine is the deployment's.

    Returns:
        A :class:`PruneResult`.

    Raises:
        ConfigError: ``train.epochs`` < 1, or an interval longer than the run.
        UserError: a table, model, data or target that does not fit (checked before
            any training), or a failure of the pruning itself (infeasible target,
            diverged training).
    """
    from lut_builder import LatencyTable

    from ..config import ConfigError
    from ..prune import Pruner
    from ..prune.distributed import rank
    from ..specs import example_input, load_model, load_weights, parse_shape
    from .data import ImageData, load_data
    from .trainer import Trainer, evaluate

    t_start = time.perf_counter()
    if isinstance(model, os.PathLike):
        model = os.fspath(model)  # a saved .pt or a .py file's path
    for name, value, kinds, what in (
        ("model", model, (nn.Module, str), "an nn.Module or a model spec"),
        ("data", data, (ImageData, str), "an ImageData or a data spec"),
        ("table", table, (LatencyTable, str, os.PathLike), "a LatencyTable or its path"),
        ("prune", prune, (PruneConfig,), "a PruneConfig"),
        ("train", train, (TrainConfig,), "a TrainConfig"),
    ):
        if not isinstance(value, kinds):
            raise ConfigError("prune_classifier", name, f"must be {what}", value)
    train.require_training()
    if (
        isinstance(pretrain_epochs, bool)
        or not isinstance(pretrain_epochs, int)
        or pretrain_epochs < 0
    ):
        raise ConfigError("prune_classifier", "pretrain_epochs", "must be an integer >= 0", pretrain_epochs)  # fmt: skip
    seed_everything(train.seed)
    if not isinstance(table, LatencyTable):
        expect = {"backend": expect_backend} if expect_backend else None
        table = LatencyTable.open(table, expect=expect, force=force_table)
    spec = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        model = load_model(model, weights=weights)
    elif weights is not None:
        load_weights(model, weights, spec)
    if feedback is True:
        from ..prune.feedback import feedback_from_table

        feedback = feedback_from_table(table)
    if input_shape is None:
        recorded = (getattr(table, "info", None) or {}).get("input_shape")
        if not recorded:
            raise UserError(
                f"the table {table.path} does not record its input shape: give the input "
                "shape (--input-shape N,C,H,W)"
            )
        input_shape = tuple(int(d) for d in recorded)
    shape = parse_shape(input_shape) if isinstance(input_shape, str) else tuple(input_shape)
    device = train.resolved_device()
    model = model.to(device)
    x = example_input(model, shape)
    classes = classes_of(model, x)
    if not isinstance(data, ImageData):
        data = load_data(data, channels=shape[1], size=(shape[2], shape[3]))
    if data.num_classes > classes:
        raise UserError(
            f"the data has {data.num_classes} classes but the model outputs {classes} logits"
        )
    speak = say if rank() == 0 else (lambda *_: None)
    trainer = Trainer(model, data, train, progress=progress)
    total = trainer.iterations_per_epoch * train.epochs
    # A run too short for two of HALP's steps prunes before training (PruneConfig.for_run).
    prune, short = prune.for_run(total, trainer.iterations_per_epoch)
    if short:
        speak(f"note: {short}")
    # The pruner checks the table and the target before any training time is spent.
    pruner = Pruner.from_config(
        model,
        x,
        table,
        prune,
        total_iterations=total,
        iterations_per_epoch=trainer.iterations_per_epoch,
        say=speak,
    )
    if feedback is not None:
        from ..prune import MeasuredLatency

        pruner.feedback = MeasuredLatency(model, x, **feedback) if rank() == 0 else _on_rank0
    fp = table.fingerprint
    speak(
        f"model {spec}, input {tuple(shape)}; data {data.describe()}\n"
        f"table {table.path}: {fp.get('backend', '?')} {fp.get('precision', '')} "
        f"{fp.get('device', '')}".rstrip()
    )
    speak(
        f"unpruned predicted {pruner.base_ms:.4f} ms; target {prune.target} = "
        f"{pruner.target_ms:.4f} ms; {pruner.when} (importance {pruner.importance_label})"
    )
    log: dict[str, Any] = {
        **(log_extra or {}),
        "input_shape": list(shape),
        "seed": train.seed,
        "prune_config": prune.to_dict(),
        "train_config": train.to_dict(),
    }
    if pretrain_epochs:
        pre = Trainer(
            model,
            data,
            train.replace(epochs=pretrain_epochs, eval_steps=False),
            progress=progress,
        ).fit()
        log["pretrain"] = pre.epochs
    before = evaluate(model, data.val, device=device)
    log["before"] = {"val_loss": before[0], "val_acc": before[1]}
    speak(f"before pruning: val acc {before[1]:.4f}")
    trainer.pruner = pruner
    try:
        result = trainer.fit()
        slim, plan = pruner.finalize()  # may still prune (and measure) to the target
    finally:
        if hasattr(pruner.feedback, "close"):
            pruner.feedback.close()
    if feedback is not None:
        log["feedback"] = {
            **feedback,
            "steps_measured_ratio": [h.measured_ratio for h in pruner.history],
            "steps_measured_halfwidth": [h.measured_halfwidth for h in pruner.history],
            "steps_predicted_ratio": [h.predicted_ms / pruner.base_ms for h in pruner.history],
        }
        last = pruner.history[-1]
        predicted = f"the table predicted {last.predicted_ms / pruner.base_ms:.3f}x"
        if last.measured_ratio is None:
            speak(f"not measured reliably on this machine (too busy); {predicted}")
        else:
            speak(
                f"measured on this machine: {last.measured_ratio:.3f}x of the unpruned "
                f"model{_interval(last.measured_halfwidth)}; {predicted}"
            )
    after = evaluate(slim, data.val, device=device)
    overhead = result.pruning_overhead
    log.update(
        {
            "after": {"val_loss": after[0], "val_acc": after[1]},
            "base_ms": pruner.base_ms,
            "target_ms": pruner.target_ms,
            "predicted_ms": plan.predicted_ms,
            "epochs": result.epochs,
            "bn_batches": result.bn_batches,
            "steps": result.steps,
            "slimmed_at": result.slimmed_at,
            "overhead": {
                "pruner_s": result.pruner_s,
                "pruning_iterations_s": result.pruning_iterations_s,
                "ratio": overhead,
                "timers_s": dict(pruner.timers),
                "slim_s": result.slim_s,
            },
            "seconds": time.perf_counter() - t_start,
        }
    )
    kept = sum(len(k) for k in pruner.keep.values())
    speak(
        f"after pruning: val acc {after[1]:.4f}; predicted {plan.predicted_ms:.4f} ms "
        f"({plan.speedup:.2f}x faster than {plan.base_ms:.4f} ms, target {plan.target_ms:.4f}); "
        f"{pruner.total_channels} -> {kept} channels"
        + ("" if overhead is None else f"; {overhead_phrase(overhead)}")
    )
    return PruneResult(slim.cpu().eval(), plan, log)


def overhead_phrase(ratio: float) -> str:
    """The pruner's time over the training it ran beside, as the log line says it: a
    share while it is the smaller (scoring, solving), a multiple once it dominates (the
    latency feedback timing a small model's plans)."""
    if ratio < 1:
        return f"pruning machinery {ratio:.1%} on top of its iterations' training"
    return f"pruning machinery {ratio:.1f}x its iterations' training time"


def save_prune_result(out: str | os.PathLike, result: PruneResult) -> list[Path]:
    """Write ``model.pt``, ``log.json`` and ``plan.json`` into ``out``, all at once.

    Everything is written into a staging directory beside ``out`` first; a new ``out``
    is then one rename, an existing one gets each file by rename (``plan.json`` last).
    Only rank 0 writes under ``torchrun``.

    Returns:
        The three paths.

    Raises:
        UserError: ``out`` cannot be written (see :func:`lut_builder.fileio.check_output`).
    """
    import json
    import shutil
    import tempfile

    import torch

    from lut_builder.fileio import check_output

    from ..prune.distributed import rank

    if not isinstance(result, PruneResult):
        raise TypeError(f"result must be a PruneResult, not {type(result).__name__}")
    out = check_output(out, kind="dir")
    names = ("model.pt", "log.json", "plan.json")
    if rank() != 0:
        return [out / n for n in names]
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.resolve().parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename
    try:
        torch.save(result.model, stage / "model.pt")
        (stage / "log.json").write_text(json.dumps(result.log, indent=1, default=float) + "\n")
        (stage / "plan.json").write_text(json.dumps(result.plan.to_dict(), indent=1) + "\n")
        if not out.exists():
            os.replace(stage, out)
        else:
            for name in names:
                os.replace(stage / name, out / name)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return [out / n for n in names]


def _interval(halfwidth: float | None) -> str:
    """``, 95% interval +-1.2%`` for a measurement's half-width, or nothing."""
    return f", 95% interval +-{halfwidth:.1%}" if halfwidth else ""
