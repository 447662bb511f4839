"""`halp-trt prune`: prune a classifier to a latency target while fine-tuning it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..specs import WEIGHTS_HELP

MIN_KEEP_HELP = (
    "fewest channels any group keeps, as a fraction of its width (default 0.1 where the "
    "default --importance auto runs taylor-fisher on residual streams, 0.5 where it "
    "runs taylor-weights-mean from 0.55x up, else 0.3; 0: no floor, as in HALP)"
)
MIN_INTERVAL_HELP = (
    "fewest iterations between pruning steps spread over the window (default 40, HALP's "
    "interval); a shorter window prunes in fewer steps, down to one; 1: none"
)
IMPORTANCE_HELP = (
    "auto (default: taylor-weights-mean, and for a target below 0.55x of the unpruned "
    "latency taylor-fisher where the residual streams are narrower than half the layers "
    "they feed, as a MobileNetV2's, or where there are none; taylor-fisher at every "
    "target where depthwise convolutions read the streams, as a ConvNeXt's), "
    "taylor-weights (first-order Taylor on the weights of every layer that "
    "writes or reads a channel, in magnitude), taylor-weights-mean (the same averaged "
    "over those layers instead of summed), taylor-abs (HALP's Taylor score on the "
    "BatchNorms, the coupled layers' terms summed in magnitude), taylor-abs-mean "
    "(averaged over them instead: for plain residual networks, see the README), "
    "taylor-l2 (their L2 norm), taylor (HALP's as published), taylor-fisher (HALP's "
    "squared per minibatch: the empirical Fisher information), l1, l2, sp-lamp, "
    "sensitivity (each group's training accuracy measured "
    "at each width before training, FastNAS-style; needs --calibration-batches; "
    "sensitivity-loss: the loss instead)"
)
BN_BATCHES_HELP = (
    "after the last epoch, re-estimate the BatchNorm statistics over N training "
    "minibatches with the final weights (default 100; 0: off)"
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "prune",
        help="prune a classifier to a latency target on a latency table, fine-tuning it",
        description=(
            "Train a classifier with the built-in trainer while HALP's pruning loop removes "
            "channels on a schedule: importance accumulated between steps, a knapsack that "
            "keeps the most importance under each step's latency budget (from the table), "
            "masks while training. Then the channels are removed, the slim model is checked "
            "against the masked one, and OUT/model.pt, OUT/plan.json and OUT/log.json are "
            "written into a new or empty OUT (all at the end: a failed run leaves no result "
            "behind)."
        ),
    )
    add_training_args(p)
    p.add_argument("--lut", required=True, metavar="FILE", help="latency table (lut-builder)")
    p.add_argument(
        "--target",
        required=True,
        metavar="T",
        help="latency target: 0.5x (of the unpruned model's predicted latency) or 3ms",
    )
    p.add_argument(
        "--input-shape",
        metavar="N,C,H,W",
        help="the input the latency is for (default: the table's, as it was built)",
    )
    p.add_argument(
        "--schedule",
        default=None,
        choices=("exp", "linear", "oneshot"),
        help="default exp (oneshot with --calibration-batches); oneshot prunes once, "
        "where exp's first step would be",
    )
    p.add_argument(
        "--interval",
        type=int,
        default=None,
        metavar="N",
        help="iterations between pruning steps (default: the steps spread over the first "
        "--prune-window of training, half by default; the rest fine-tunes the final "
        "widths; a run too short for --steps gets fewer, with a note)",
    )
    p.add_argument(
        "--interval-epochs",
        type=float,
        default=None,
        metavar="E",
        help="epochs between pruning steps (fractions allowed), instead of --interval",
    )
    p.add_argument(
        "--prune-window",
        type=float,
        default=0.5,
        metavar="F",
        help="without --interval: the fraction of training the steps are spread over "
        "(default 0.5; the rest fine-tunes the final widths)",
    )
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="default 1")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="default 0.1")
    p.add_argument(
        "--cost-model", choices=("one-sided", "joint"), default=None, help="solver cost model"
    )
    p.add_argument("--bundle", type=int, default=None, help="channels per knapsack item")
    p.add_argument(
        "--feedback",
        action="store_true",
        help="time each step's plan against the dense model on this machine, at the "
        "table's backend and thread count, and correct the budgets by it (as `halp-trt "
        "run` does by default); for a CPU table at FP32 measured on this CPU model, or a "
        "torch table of this machine's GPU",
    )
    p.add_argument("--backend", default=None, help="require a table measured on this backend")
    p.add_argument(
        "--force-table", action="store_true", help="use an incomplete or mismatched table"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if present)")
    p.add_argument("--eval-steps", action="store_true", help="evaluate after every pruning step")
    p.add_argument(
        "--out", default="pruned", metavar="DIR", help="output directory, new or empty (pruned)"
    )
    return p


def add_training_args(p: argparse.ArgumentParser) -> None:
    """The options `halp-trt prune` and `halp-trt run` share: the model, the data, the
    criterion, the schedule's step count and floor, and the training."""
    p.add_argument("--model", required=True, metavar="SPEC", help="model spec or saved .pt")
    p.add_argument("--weights", metavar="PATH", default=None, help=WEIGHTS_HELP)
    p.add_argument(
        "--data",
        required=True,
        metavar="SPEC",
        help="digits, npz:PATH (images, labels) or imagefolder:PATH",
    )
    p.add_argument("--importance", default="auto", help=IMPORTANCE_HELP)
    p.add_argument(
        "--pretrain-epochs",
        type=int,
        default=0,
        metavar="N",
        help="train the dense model first for N epochs (default 0: it is trained already)",
    )
    p.add_argument("--epochs", type=int, default=10, help="epochs of pruning and fine-tuning (10)")
    p.add_argument("--steps", type=int, default=30, help="pruning steps (default 30)")
    p.add_argument(
        "--calibration-batches",
        type=int,
        default=0,
        metavar="N",
        help="prune once before training, scored on N training minibatches with no weight "
        "updated, so the whole run trains the final widths (default 0: prune while "
        "training; one step)",
    )
    p.add_argument(
        "--short-run",
        choices=("calibrate", "train"),
        default="calibrate",
        help="a run too short for two pruning steps --min-interval apart in its window: "
        "calibrate (default) prunes once before training on 8 minibatches, as "
        "--calibration-batches 8; train prunes once while training, where the first "
        "step would be",
    )
    p.add_argument("--min-interval", type=int, default=40, metavar="N", help=MIN_INTERVAL_HELP)
    p.add_argument("--min-keep", type=float, default=None, metavar="F", help=MIN_KEEP_HELP)
    p.add_argument("--batch-size", type=int, default=64, help="training batch size (64)")
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate (0.05)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="default 5e-4")
    p.add_argument("--bn-batches", type=int, default=100, metavar="N", help=BN_BATCHES_HELP)
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def configs(args: argparse.Namespace) -> tuple[Any, Any]:
    """The :class:`PruneConfig` and :class:`TrainConfig` the arguments describe.

    Raises:
        ConfigError: a value outside what its field allows.
    """
    from ..config import PruneConfig, TrainConfig

    prune = PruneConfig(
        target=args.target,
        importance=args.importance,
        schedule=args.schedule or ("oneshot" if args.calibration_batches else "exp"),
        steps=args.steps,
        interval=args.interval,
        interval_epochs=args.interval_epochs,
        prune_window=args.prune_window,
        min_interval=args.min_interval,
        cost_model=args.cost_model,
        bundle=args.bundle,
        min_keep=args.min_keep,
        calibration_batches=args.calibration_batches,
        short_run=args.short_run,
    )
    train = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        device=args.device,
        seed=args.seed,
        eval_steps=args.eval_steps,
        bn_batches=args.bn_batches,
    )
    return prune, train


def run(args: argparse.Namespace) -> int:
    from lut_builder.fileio import check_output

    from ..errors import UserError
    from ..prune.distributed import process_group_from_env, rank
    from ..train.prune_job import prune_classifier, save_prune_result

    prune, train = configs(args)
    out = check_output(args.out, kind="dir")
    # A result is written into a new or empty directory only: not over an earlier
    # result, nor over the model or table it was made from.
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {args.out} exists and is not an empty directory")
    with process_group_from_env(train.device) as device:
        result = prune_classifier(
            args.model,
            args.data,
            args.lut,
            prune,
            train.replace(device=device),
            input_shape=args.input_shape,
            weights=args.weights,
            pretrain_epochs=args.pretrain_epochs,
            expect_backend=args.backend,
            force_table=args.force_table,
            progress=not args.no_progress,
            log_extra={"argv": sys.argv[1:]},
            feedback=True if args.feedback else None,
        )
        paths = save_prune_result(out, result)
        if rank() == 0:
            print("wrote " + ", ".join(str(p) for p in paths))
    return 0
