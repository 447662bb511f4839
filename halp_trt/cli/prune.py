"""`halp-trt prune`: prune a classifier to a latency target while fine-tuning it."""

from __future__ import annotations

import argparse
import sys
from typing import Any


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
            "written (all at the end: a failed run leaves no result behind)."
        ),
    )
    p.add_argument("--model", required=True, metavar="SPEC", help="model spec or saved .pt")
    p.add_argument(
        "--data",
        required=True,
        metavar="SPEC",
        help="digits, npz:PATH (images, labels) or imagefolder:PATH",
    )
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
    p.add_argument("--importance", default="taylor", help="taylor (default), l1, l2, sp-lamp")
    p.add_argument(
        "--schedule", default="exp", choices=("exp", "linear", "oneshot"), help="default exp"
    )
    p.add_argument("--epochs", type=int, default=10, help="training epochs with pruning (10)")
    p.add_argument(
        "--pretrain-epochs",
        type=int,
        default=0,
        metavar="N",
        help="train the dense model first for N epochs (default 0: it is trained already)",
    )
    p.add_argument("--steps", type=int, default=30, help="pruning steps (default 30)")
    p.add_argument(
        "--interval",
        type=int,
        default=None,
        metavar="N",
        help="iterations between pruning steps (default: the steps spread over the first "
        "half of training; the second half fine-tunes the final widths)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="default 64")
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate (0.05)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="default 5e-4")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="default 1")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="default 0.1")
    p.add_argument(
        "--cost-model", choices=("one-sided", "joint"), default=None, help="solver cost model"
    )
    p.add_argument("--bundle", type=int, default=None, help="channels per knapsack item")
    p.add_argument("--backend", default=None, help="require a table measured on this backend")
    p.add_argument(
        "--force-table", action="store_true", help="use an incomplete or mismatched table"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if present)")
    p.add_argument("--eval-steps", action="store_true", help="evaluate after every pruning step")
    p.add_argument("--out", default="pruned", metavar="DIR", help="output directory (pruned)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _seed(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _init_distributed(device: str | None) -> str | None:
    """Join the process group ``torchrun`` describes in the environment, if any.

    Returns the device this rank trains on (its ``LOCAL_RANK`` GPU under NCCL).
    """
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return device


def _input_shape(args: argparse.Namespace, table: Any) -> tuple[int, ...]:
    from ..errors import UserError
    from ..specs import parse_shape

    if args.input_shape:
        return parse_shape(args.input_shape)
    shape = (getattr(table, "info", None) or {}).get("input_shape")
    if not shape:
        raise UserError(
            f"the table {args.lut} does not record its input shape: give --input-shape N,C,H,W"
        )
    return tuple(int(d) for d in shape)


def _classes(model: Any, x: Any) -> int:
    import torch

    with torch.no_grad():
        out = model(x)
    if not torch.is_tensor(out) or out.dim() != 2:
        from ..errors import UserError

        raise UserError(
            "halp-trt prune trains classifiers: the model must return N x classes logits, "
            f"not {type(out).__name__} {tuple(getattr(out, 'shape', ()))}"
        )
    return int(out.shape[1])


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from ..errors import UserError
    from ..prune.schedule import split_target

    t_start = time.perf_counter()
    for name in ("steps", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if args.pretrain_epochs < 0:
        raise UserError("--pretrain-epochs must be >= 0")
    if args.epochs < 1:
        raise UserError("--epochs must be at least 1: pruning happens while training")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} exists and is not a directory")
    if not out.resolve().parent.is_dir():
        raise UserError(f"the parent directory of --out {str(out)!r} does not exist")

    split_target(args.target)  # malformed targets fail before anything is loaded
    device_name = _init_distributed(args.device)
    try:
        return _run(args, out, device_name, t_start)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _run(args: argparse.Namespace, out: Any, device_name: str | None, t_start: float) -> int:
    import time

    from lut_builder.table import LatencyTable

    from ..errors import UserError
    from ..prune import Pruner
    from ..prune.distributed import rank
    from ..specs import example_input, load_model
    from ..train import TrainConfig, Trainer, evaluate, load_data

    _seed(args.seed)
    expect = {"backend": args.backend} if args.backend else None
    table = LatencyTable.open(args.lut, expect=expect, force=args.force_table)
    model = load_model(args.model)
    shape = _input_shape(args, table)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        device=device_name,
        seed=args.seed,
        eval_steps=args.eval_steps,
    )
    device = config.resolved_device()
    model = model.to(device)
    x = example_input(model, shape)
    classes = _classes(model, x)
    data = load_data(args.data, channels=shape[1], size=(shape[2], shape[3]))
    if data.num_classes > classes:
        raise UserError(
            f"the data has {data.num_classes} classes but the model outputs {classes} logits"
        )
    trainer = Trainer(model, data, config, progress=not args.no_progress)
    per_epoch = trainer.iterations_per_epoch
    interval = args.interval
    if interval is None:
        steps = 1 if args.schedule == "oneshot" else args.steps
        interval = (per_epoch * args.epochs // 2) // steps
        if interval < 1:
            raise UserError(
                f"{args.epochs} epochs of {per_epoch} iterations are too few for {steps} "
                "pruning steps over half the training: raise --epochs or lower --steps"
            )
    # The pruner checks the table and the target before any training time is spent.
    pruner = Pruner(
        model,
        x,
        table,
        args.target,
        importance=args.importance,
        steps=args.steps,
        interval=interval,
        schedule=args.schedule,
        cost_model=args.cost_model,
        bundle=args.bundle,
    )
    say = print if rank() == 0 else (lambda *a, **k: None)
    fp = table.fingerprint
    say(
        f"model {args.model}, input {tuple(shape)}; data {data.describe()}\n"
        f"table {args.lut}: {fp.get('backend', '?')} {fp.get('precision', '')} "
        f"{fp.get('device', '')}".rstrip()
    )
    say(
        f"unpruned predicted {pruner.base_ms:.4f} ms; target {args.target} = "
        f"{pruner.target_ms:.4f} ms; {pruner.steps} {args.schedule} steps every {interval} "
        f"iterations ({args.importance} importance)"
    )
    log: dict[str, Any] = {"argv": sys.argv[1:], "input_shape": list(shape), "seed": args.seed}
    if args.pretrain_epochs:
        pre = Trainer(
            model,
            data,
            TrainConfig(
                **{**config.to_dict(), "epochs": args.pretrain_epochs, "eval_steps": False}
            ),
            progress=not args.no_progress,
        ).fit()
        log["pretrain"] = pre.epochs
    before = evaluate(model, data.val, device=device)
    log["before"] = {"val_loss": before[0], "val_acc": before[1]}
    say(f"before pruning: val acc {before[1]:.4f}")
    trainer.pruner = pruner
    result = trainer.fit()
    slim, plan = pruner.finalize()
    after = evaluate(slim, data.val, device=device)
    overhead = result.pruning_overhead
    log.update(
        {
            "after": {"val_loss": after[0], "val_acc": after[1]},
            "base_ms": pruner.base_ms,
            "target_ms": pruner.target_ms,
            "predicted_ms": plan.predicted_ms,
            "epochs": result.epochs,
            "steps": result.steps,
            "overhead": {
                "pruner_s": result.pruner_s,
                "pruning_iterations_s": result.pruning_iterations_s,
                "ratio": overhead,
                "timers_s": dict(pruner.timers),
            },
            "seconds": time.perf_counter() - t_start,
        }
    )
    if rank() == 0:
        _write_outputs(out, slim, plan, log)
    kept = sum(len(k) for k in pruner.keep.values())
    say(
        f"after pruning: val acc {after[1]:.4f}; predicted {plan.predicted_ms:.4f} ms "
        f"({plan.speedup:.2f}x faster than {plan.base_ms:.4f} ms, target {plan.target_ms:.4f}); "
        f"{pruner.total_channels} -> {kept} channels"
        + ("" if overhead is None else f"; pruning machinery {overhead:.1%} of its iterations")
    )
    say(f"wrote {out / 'model.pt'}, {out / 'plan.json'}, {out / 'log.json'}")
    return 0


def _write_outputs(out: Any, model: Any, plan: Any, log: dict[str, Any]) -> None:
    """Write model.pt, log.json and plan.json into ``out`` all at once, at the end.

    Everything is written into a staging directory beside ``out`` first; a new ``out``
    is then one rename, an existing one gets each file by rename (plan.json last).
    """
    import json
    import os
    import shutil
    import tempfile
    from pathlib import Path

    import torch

    out = Path(out)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.resolve().parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename
    try:
        torch.save(model.cpu().eval(), stage / "model.pt")
        (stage / "log.json").write_text(json.dumps(log, indent=1, default=float) + "\n")
        (stage / "plan.json").write_text(json.dumps(plan.to_dict(), indent=1) + "\n")
        if not out.exists():
            os.replace(stage, out)
            return
        for name in ("model.pt", "log.json", "plan.json"):
            os.replace(stage / name, out / name)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
