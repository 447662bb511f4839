"""Where the knapsack puts the widths: each criterion's plan of one trained model.

Trains a dense model with bench/pareto.py's settings (seed, epochs, batch size,
learning rate; not bit-identical to its dense models), accumulates each gradient
criterion over ``--batches`` training batches (weight criteria read the weights), and
solves the pruner's knapsack (joint cost model, the pruner's floor) at each target on
``--table``, in one shot from the dense widths.
Nothing is fine-tuned: this shows the plans, not their accuracy. ``--evaluate N`` adds
what a plan keeps before any fine-tuning: the dense model masked by it, its BatchNorm
statistics re-estimated over N training batches (EagleEye's adaptive BatchNorm), scored
on the validation set; whether that ranks the criteria as fine-tuning does is for
bench/pareto.py's results on the same seeds to say.

The prunable groups are split by what they couple: several BatchNorms (a residual
stream, written by the stem and every block's projection) or one (a block's inner width,
an expanded layer). Per plan it prints the mean kept fraction of each kind, how many
groups sit at the floor, and the widths. A latency that is bilinear in a stream's and a
block's inner width, under a value that adds per channel, sends the knapsack to a corner
(one kind whole, the other at the floor); Torch-Pruning's global ranking and uniform
width land in between.

    python bench/plan_shapes.py --model halp_trt.models:resnet18_cifar \\
        --data npz:runs/digits_hard.npz --input-shape 8,3,16,16 --table T.db \\
        --targets 0.5x,0.3x --importances taylor-abs,taylor-abs-mean,sp-lamp,l2 \\
        --out bench/results/plan_shapes_resnet18_hard.json
        # add --seeds 0,1,2 --evaluate 20 for the plans' accuracy before fine-tuning
"""

from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from plan_pricing import load_pareto  # noqa: E402  (bench/pareto.py, loaded once)

#: Bad input: one line, exit code 2 (bench/pareto.py's, whose input checks this shares).
BenchError = load_pareto().BenchError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = load_pareto().OneLineParser(prog="plan_shapes.py", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model spec (module:function or file:function)")
    p.add_argument("--data", required=True, help="data spec (digits, npz:FILE, ...)")
    p.add_argument("--input-shape", required=True, help="N,C,H,W of the table's input")
    p.add_argument("--table", required=True, help="a latency table of the model (built)")
    p.add_argument("--targets", default="0.5x,0.3x")
    p.add_argument("--importances", default="taylor-abs,taylor-abs-mean,sp-lamp,l2")
    p.add_argument("--seeds", default="0", help="comma-separated: one dense model each")
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--batches", type=int, default=8, help="batches a gradient criterion sees")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--min-keep", type=float, default=None, help="the floor (pruner's default)")
    p.add_argument(
        "--evaluate",
        type=int,
        default=0,
        metavar="N",
        help="score each plan's masked model after re-estimating its BatchNorms over N "
        "training batches (default 0: plans only)",
    )
    p.add_argument("--out", default=None, help="JSON to write")
    return p.parse_args(argv)


def check_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Everything checked before any training (raises BenchError or a UserError)."""
    from halp_trt.importance import list_importances
    from lut_builder.fileio import check_output

    names = [n.strip() for n in args.importances.split(",") if n.strip()]
    unknown = [n for n in names if n not in list_importances()]
    if unknown or not names:
        raise BenchError(
            f"unknown importance(s) {', '.join(unknown) or '(none)'}; "
            f"known: {', '.join(list_importances())}"
        )
    fractions = load_pareto().target_fractions(args.targets)
    for name in ("batches", "batch_size"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be at least 1")
    if args.evaluate < 0:
        raise BenchError("--evaluate must be at least 0")
    seeds = load_pareto().parse_seeds(args.seeds)
    if args.pretrain_epochs < 0:
        raise BenchError("--pretrain-epochs must be at least 0")
    if args.min_keep is not None and not 0 <= args.min_keep < 1:
        raise BenchError(f"--min-keep must be a fraction in [0, 1), not {args.min_keep}")
    if not Path(args.table).is_file():
        raise BenchError(f"--table {args.table}: no such file")
    out = check_output(args.out, flag="--out", parents=True) if args.out else None
    _, x, data, _ = load_pareto().model_and_data(args)
    return {
        "names": names, "fractions": fractions, "x": x, "data": data, "out": out, "seeds": seeds,
    }  # fmt: skip


def shape_of(graph: Any, table: Any, keep: dict[int, Any], floor: float) -> dict[str, Any]:
    """A plan's kept fraction per group, by kind (coupled: more than one BatchNorm); a
    group at the knapsack's fewest channels for the ``floor`` is at the floor."""
    from halp_trt.solver.knapsack import least_option

    rows = []
    for g in graph.prunable:
        kept = len(keep[g.id])
        least = least_option(table, g, g.size, min_keep=floor)[1]
        rows.append(
            {
                "group": g.id,
                "norms": len(g.norms),
                "size": g.size,
                "kept": kept,
                "fraction": kept / g.size,
                "at_floor": kept <= least < g.size,
            }
        )

    def kind(coupled: bool) -> dict[str, Any]:
        rs = [r for r in rows if (r["norms"] > 1) == coupled]
        if not rs:
            return {"groups": 0}
        return {
            "groups": len(rs),
            "mean_fraction": statistics.fmean(r["fraction"] for r in rs),
            "at_floor": sum(r["at_floor"] for r in rs),
            "whole": sum(r["kept"] == r["size"] for r in rs),
        }

    return {"coupled": kind(True), "single": kind(False), "groups": rows}


def plans(args: argparse.Namespace, checked: dict[str, Any], log=print) -> dict[str, Any]:
    """Per seed, train the dense model once; each criterion's plan at each target."""
    from lut_builder import LatencyTable

    table = LatencyTable.open(args.table)
    out: dict[str, Any] = {"dense": [], "plans": []}
    try:
        for seed in checked["seeds"]:
            dense, acc = train_dense(args, checked, seed)
            log(f"seed {seed}: dense model val acc {acc:.4f}")
            out["dense"].append({"seed": seed, "val_acc": acc})
            for row in seed_plans(args, checked, seed, dense, table):
                out["plans"].append(row)
                c, s = row["coupled"], row["single"]
                adapted = row.get("adapted")
                log(
                    f"{row['importance']:16s} {row['target']:5s} coupled "
                    f"{c.get('mean_fraction', 0):.2f} ({c.get('whole', 0)}/{c['groups']} whole, "
                    f"{c.get('at_floor', 0)} at floor)  single {s.get('mean_fraction', 0):.2f} "
                    f"({s.get('whole', 0)}/{s['groups']} whole, {s.get('at_floor', 0)} at floor)"
                    + ("" if adapted is None else f"  adapted val acc {adapted['val_acc']:.4f}")
                )
    finally:
        table.close()
    if args.evaluate:
        out["adapted_mean"] = adapted_means(out["plans"])
        for row in out["adapted_mean"]:
            log(
                f"{row['importance']:16s} {row['target']:5s} adapted val acc, mean of "
                f"{row['seeds']} seeds: {row['val_acc']:.4f} (loss {row['val_loss']:.4f})"
            )
    return out


def train_dense(args: argparse.Namespace, checked: dict[str, Any], seed: int) -> tuple[Any, float]:
    """The dense model of ``seed``, trained with bench/pareto.py's settings, and its
    validation accuracy."""
    import torch

    from halp_trt.specs import load_model
    from halp_trt.train import TrainConfig, Trainer, evaluate

    torch.manual_seed(seed)
    dense = load_model(args.model).train()
    cfg = TrainConfig(
        epochs=args.pretrain_epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
        device="cpu",
    )  # fmt: skip
    if args.pretrain_epochs:
        Trainer(dense, checked["data"], cfg).fit()
    dense.eval()
    return dense, evaluate(dense, checked["data"].val)[1]


def seed_plans(
    args: argparse.Namespace, checked: dict[str, Any], seed: int, dense: Any, table: Any
) -> list[dict[str, Any]]:
    """Each criterion's one-shot plan of ``dense`` at each target (with ``--evaluate``,
    each plan's adapted validation loss and accuracy)."""
    import torch
    import torch.nn as nn
    from torch.utils.data import DataLoader

    from halp_trt.prune import Pruner
    from halp_trt.solver import solve_budget

    data, x = checked["data"], checked["x"]
    probe = Probe(dense, x, data, args.evaluate, args.batch_size, seed) if args.evaluate else None
    rows = []
    for name in checked["names"]:
        model = copy.deepcopy(dense).train()
        pruner = Pruner(
            model, x, table, next(iter(checked["fractions"])), importance=name, steps=1, interval=1,
            schedule="oneshot", min_keep=args.min_keep,
        )  # fmt: skip
        if pruner.importance.needs_gradients:
            gen = torch.Generator().manual_seed(seed)
            loader = DataLoader(data.train, batch_size=args.batch_size, shuffle=True,
                                generator=gen)  # fmt: skip
            for i, (xb, yb) in enumerate(loader):
                if i == args.batches:
                    break
                model.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(xb), yb).backward()
                pruner.accumulate()
        scores = pruner.importance.scores()
        if probe is not None and groups_of(probe.graph) != groups_of(pruner.graph):
            raise BenchError("the probe's channel graph differs from the pruner's")
        for target, fraction in checked["fractions"].items():
            plan = solve_budget(
                pruner.graph, table, scores, fraction * pruner.base_ms,
                min_keep=pruner.min_keep,
            )  # fmt: skip
            row = {
                "seed": seed,
                "importance": name,
                "target": target,
                "predicted_ratio": plan.predicted_ms / pruner.base_ms,
                **shape_of(pruner.graph, table, plan.keep, pruner.min_keep),
            }
            if probe is not None:
                row["adapted"] = probe(plan.keep)
            rows.append(row)
    return rows


class Probe:
    """A plan's accuracy before fine-tuning: ``dense`` masked by it, its BatchNorm
    statistics re-estimated over ``batches`` training batches (the same batches for
    every plan of a seed), scored on the validation set."""

    def __init__(self, dense: Any, x: Any, data: Any, batches: int, batch_size: int, seed: int):
        from halp_trt.graph import ChannelGraph

        self.dense, self.data, self.batches = dense, data, batches
        self.batch_size, self.seed = batch_size, seed
        self.model = copy.deepcopy(dense)
        self.graph = ChannelGraph(self.model, x)

    def __call__(self, keep: dict[int, Any]) -> dict[str, Any]:
        import torch
        from torch.utils.data import DataLoader

        from halp_trt.graph.norms import clear_norm_masks
        from halp_trt.prune.masks import MaskSet
        from halp_trt.train import evaluate
        from halp_trt.train.trainer import recalibrate_bn

        self.model.load_state_dict(self.dense.state_dict())
        clear_norm_masks(self.model)
        MaskSet(self.graph, keep).apply()
        gen = torch.Generator().manual_seed(self.seed + 1)
        loader = DataLoader(self.data.train, batch_size=self.batch_size, shuffle=True,
                            generator=gen)  # fmt: skip
        used = recalibrate_bn(self.model, loader, self.batches, "cpu")
        loss, acc = evaluate(self.model, self.data.val)
        return {"val_loss": loss, "val_acc": acc, "bn_batches": used}


def groups_of(graph: Any) -> list[tuple[int, int]]:
    return [(g.id, g.size) for g in graph.prunable]


def adapted_means(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per criterion and target, the adapted validation accuracy and loss over the seeds."""
    keys = list(dict.fromkeys((r["importance"], r["target"]) for r in rows))
    out = []
    for name, target in keys:
        rs = [r["adapted"] for r in rows if (r["importance"], r["target"]) == (name, target)]
        out.append(
            {
                "importance": name,
                "target": target,
                "seeds": len(rs),
                "val_acc": statistics.fmean(r["val_acc"] for r in rs),
                "val_loss": statistics.fmean(r["val_loss"] for r in rs),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    from halp_trt.errors import UserError
    from lut_builder.errors import UserError as LutUserError
    from lut_builder.fileio import atomic_write_json

    args = parse_args(argv)
    try:
        checked = check_inputs(args)
        result = plans(args, checked)
    except (BenchError, UserError, LutUserError) as exc:
        print(f"plan_shapes.py: error: {exc}", file=sys.stderr)
        return 2
    if checked["out"] is not None:
        command = "python bench/plan_shapes.py " + shlex.join(
            sys.argv[1:] if argv is None else argv
        )
        settings = {k: v for k, v in vars(args).items() if k not in ("out", "table")}
        checked["out"].parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            checked["out"],
            {"benchmark": "plan_shapes", "command": command, "settings": settings, **result},
            indent=1,
        )
        print(f"wrote {checked['out']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
