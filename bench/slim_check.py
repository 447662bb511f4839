"""Does training the slim model after the last pruning step change what the fine-tuning reaches?

The built-in trainer removes the pruned channels as soon as the pruner's last step has
run and trains the slim model on (``TrainConfig.slim``); before, it trained the masked
full-size model to the end. The two compute the same function, but not in the same
floating-point order, and a short fine-tuning at a high learning rate amplifies any
rounding difference. This measures how far apart the two land, against how far apart
the masked fine-tuning lands when the dense weights are moved by a relative 1e-7 (what
rounding alone does), with the time each took.

Per seed it trains a dense model (``--pretrain-epochs``, bench/pareto.py's settings),
then per target runs HALP's loop as bench/pareto.py runs ``halp-taylor-abs`` (same
schedule fitting, floor and table) with the measured-latency feedback off, so the
three fine-tunings start from one plan: ``slim``, ``masked``, and ``nudged`` (masked,
from the moved dense weights; its plan is checked to be the same). It records each
model's validation accuracy, the fine-tuning's seconds, and the largest relative
difference of any parameter between ``slim`` and ``masked`` and between ``nudged`` and
``masked`` (the latter is the yardstick: the difference rounding makes).

    python bench/slim_check.py --model halp_trt.models:resnet18_cifar \\
        --data npz:runs/digits_hard_v4.npz --input-shape 8,3,16,16 --table T.db \\
        --targets 0.7x,0.5x,0.3x --seeds 0,1,2 --out bench/results/slim_check_resnet18_hard.json
"""

from __future__ import annotations

import argparse
import copy
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from plan_pricing import load_pareto  # noqa: E402  (bench/pareto.py, loaded once)

BenchError = load_pareto().BenchError

#: The three fine-tunings of one plan.
VARIANTS = ("slim", "masked", "nudged")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = load_pareto().OneLineParser(prog="slim_check.py", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model spec (module:function or file:function)")
    p.add_argument("--data", default="digits", help="data spec (digits, npz:FILE, ...)")
    p.add_argument("--input-shape", required=True, help="N,C,H,W of the table's input")
    p.add_argument("--table", required=True, help="a latency table of the model (built)")
    p.add_argument("--targets", default="0.7x,0.5x,0.3x")
    p.add_argument("--seeds", default="0")
    p.add_argument("--importance", default="taylor-abs")
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--nudge", type=float, default=1e-7, help="relative move of the dense weights")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training")
    p.add_argument("--out", default=None, help="JSON to write")
    return p.parse_args(argv)


def check(args: argparse.Namespace) -> tuple[tuple[int, ...], Any, list[str], list[int]]:
    """Shape, data, targets and seeds, checked before any training. Raises BenchError (or
    a UserError) on bad input."""
    from lut_builder.fileio import check_output

    pareto = load_pareto()
    targets = list(pareto.target_fractions(args.targets))
    seeds = pareto.parse_seeds(args.seeds)
    for name in ("epochs", "steps", "batch_size", "threads"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be at least 1")
    if args.pretrain_epochs < 0:
        raise BenchError("--pretrain-epochs must be at least 0")
    if not 0 < args.nudge < 1e-2:
        raise BenchError(f"--nudge must lie between 0 and 0.01, not {args.nudge}")
    if args.out:
        check_output(args.out, flag="--out")
    shape, _, data, _ = pareto.model_and_data(args)
    return shape, data, targets, seeds


def relative_gap(a: Any, b: Any) -> float:
    """The largest |a - b| of any parameter, relative to that parameter's largest |b|."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    if pa.keys() != pb.keys() or any(pa[k].shape != pb[k].shape for k in pa):
        raise BenchError("the models to compare do not have the same parameters")
    return max(
        ((pa[k] - pb[k]).abs().max() / pb[k].abs().max().clamp_min(1e-12)).item() for k in pa
    )


def main(argv: list[str] | None = None) -> int:
    import prune_quality
    import torch

    from halp_trt.errors import UserError
    from halp_trt.specs import example_input, load_model
    from halp_trt.train import TrainConfig, Trainer, evaluate
    from lut_builder import LatencyTable
    from lut_builder.errors import UserError as LutUserError
    from lut_builder.fileio import atomic_write_json

    args = parse_args(argv)
    try:
        shape, data, targets, seeds = check(args)
        table = LatencyTable.open(args.table)
    except (BenchError, UserError, LutUserError, ValueError) as exc:
        print(f"slim_check.py: error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    dense_acc: dict[str, float] = {}
    try:
        for seed in seeds:

            def config(epochs: int, slim: bool = True, seed: int = seed) -> Any:
                return TrainConfig(
                    epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
                    device="cpu", slim=slim,
                )  # fmt: skip

            torch.manual_seed(seed)
            dense = load_model(args.model).train()
            if args.pretrain_epochs:
                Trainer(dense, data, config(args.pretrain_epochs)).fit()
            dense = dense.cpu().eval()
            dense_acc[str(seed)] = evaluate(dense, data.val)[1]
            x = example_input(dense, shape).cpu()
            nudged = copy.deepcopy(dense)
            gen = torch.Generator().manual_seed(seed + 1)
            with torch.no_grad():
                for p in nudged.parameters():
                    p.mul_(1 + args.nudge * torch.randn(p.shape, generator=gen))
            print(f"seed {seed}: dense val acc {dense_acc[str(seed)]:.4f}", flush=True)
            for target in targets:
                models, row = {}, {"seed": seed, "target": target}
                for name in VARIANTS:
                    t0 = time.perf_counter()
                    model, plan, facts = prune_quality.train_halp(
                        nudged if name == "nudged" else dense, data,
                        config(args.epochs, slim=name == "slim"), x, table, target,
                        args.importance, "exp", args.steps, feedback=False,
                    )  # fmt: skip
                    models[name] = model
                    row[name] = {
                        "val_acc": evaluate(model, data.val)[1],
                        "seconds": time.perf_counter() - t0,
                        "slimmed_at": facts.get("slimmed_at"),
                        "keep": facts["kept"],
                    }
                # False: the nudge moved the plan, so there is no yardstick
                row["same_plan"] = len({str(row[n]["keep"]) for n in VARIANTS}) == 1
                row["gap_slim_masked"] = relative_gap(models["slim"], models["masked"])
                row["gap_nudged_masked"] = (
                    relative_gap(models["nudged"], models["masked"]) if row["same_plan"] else None
                )
                for name in VARIANTS:
                    row[name].pop("keep")
                rows.append(row)
                acc = {n: row[n]["val_acc"] for n in VARIANTS}
                secs = {n: row[n]["seconds"] for n in VARIANTS}
                print(
                    f"seed {seed} {target}: val acc slim {acc['slim']:.4f} masked "
                    f"{acc['masked']:.4f} nudged {acc['nudged']:.4f}; seconds "
                    f"{secs['slim']:.0f} / {secs['masked']:.0f} / {secs['nudged']:.0f}; largest "
                    f"parameter gap to masked: slim {row['gap_slim_masked']:.1e}, nudged "
                    + (
                        "(another plan)"
                        if row["gap_nudged_masked"] is None
                        else f"{row['gap_nudged_masked']:.1e}"
                    ),
                    flush=True,
                )
    except (BenchError, UserError, LutUserError) as exc:
        print(f"slim_check.py: error: {exc}", file=sys.stderr)
        return 2
    finally:
        table.close()

    def points(a: str, b: str) -> list[float]:
        return [100 * (r[a]["val_acc"] - r[b]["val_acc"]) for r in rows if r["same_plan"]]

    summary = {
        "slim_minus_masked_points": points("slim", "masked"),
        "nudged_minus_masked_points": points("nudged", "masked"),
        "masked_over_slim_seconds": statistics.median(
            r["masked"]["seconds"] / r["slim"]["seconds"] for r in rows
        ),
    }
    for key in ("slim_minus_masked_points", "nudged_minus_masked_points"):
        v = summary[key]
        if v:
            print(
                f"{key}: mean {statistics.fmean(v):+.2f}, mean |.| "
                f"{statistics.fmean(abs(d) for d in v):.2f}, range {min(v):+.2f} to {max(v):+.2f}"
            )
    print(f"masked / slim fine-tuning seconds: median {summary['masked_over_slim_seconds']:.2f}")
    if args.out:
        result = {
            "benchmark": "slim_check",
            "command": "python bench/slim_check.py "
            + shlex.join(sys.argv[1:] if argv is None else argv),
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "table")},
            "table": Path(args.table).name,
            "host": {"python": platform.python_version(), "torch": torch.__version__},
            "dense": dense_acc,
            "runs": rows,
            "summary": summary,
            "seconds": time.perf_counter() - t_start,
        }
        atomic_write_json(Path(args.out), result, indent=1, default=float)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
