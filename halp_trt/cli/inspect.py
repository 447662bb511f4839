"""`halp-trt inspect`: the channel groups of a model, what is frozen and why, and a
removal self-check."""

from __future__ import annotations

import argparse
import json
import sys

from lut_builder.cli_args import seed_int

from ..specs import WEIGHTS_HELP


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "inspect",
        help="list a model's coupled channel groups, frozen groups and size",
        description=(
            "Trace a model, list its coupled channel groups (producers, consumers), the "
            "groups that cannot be pruned and why, its parameters and MACs. With --check, "
            "remove a random 30-60%% of every prunable group and compare the slim model "
            "with the masked original (exit code 1 if they differ)."
        ),
    )
    p.add_argument("--model", required=True, help="model spec, e.g. halp_trt.models:resnet56")
    p.add_argument("--input-shape", required=True, help="example input shape N,C,H,W")
    p.add_argument("--weights", metavar="PATH", default=None, help=WEIGHTS_HELP)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--check", action="store_true", help="check removed == masked on random inputs")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the random check plan")
    return p


def random_keep(graph, rng, low: float = 0.3, high: float = 0.6) -> dict[int, list[int]]:
    """Keep plan that removes a random fraction in [low, high] of every prunable group's
    units (at least one kept)."""
    keep = {}
    for g in graph.prunable:
        n = g.size // g.unit  # whole units (a grouped convolution's groups)
        n_keep = max(1, n - int(round(n * rng.uniform(low, high))))
        units = rng.choice(n, n_keep, replace=False)
        keep[g.id] = sorted(int(u) * g.unit + r for u in units for r in range(g.unit))
    return keep


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..graph import ChannelGraph
    from ..specs import example_input, load_model, parse_shape

    shape = parse_shape(args.input_shape)
    model = load_model(args.model, weights=args.weights)
    x = example_input(model, shape)
    graph = ChannelGraph(model, x)
    report = {
        "model": args.model,
        "input_shape": list(shape),
        "params": graph.params,
        "macs": graph.macs,
        "groups": [g.to_dict() for g in graph.groups],
        "frozen": [{"id": g.id, "size": g.size, "reason": g.reason} for g in graph.frozen],
    }
    check = None
    if args.check:
        keep = random_keep(graph, np.random.default_rng(args.seed))
        check = graph.check(keep)
        widths = graph.widths({g: len(k) for g, k in keep.items()})
        report["check"] = {
            **check.to_dict(),
            "removed_fraction": 1
            - sum(len(k) for k in keep.values()) / max(1, sum(graph.group(g).size for g in keep)),
            "macs_after": sum(graph.layers[n].signature.macs(*widths[n]) for n in graph.layers),
        }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        _print_table(report)
    return 0 if check is None or check.passed else 1


def _print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{report['model']}  input {tuple(report['input_shape'])}")
    for col in ("id", "size", "prunable", "producers", "consumers", "reason"):
        table.add_column(col, justify="right" if col in ("id", "size") else "left")

    def names(layers: list[str]) -> str:
        return ", ".join(layers[:3]) + (f" +{len(layers) - 3}" if len(layers) > 3 else "")

    for g in report["groups"]:
        table.add_row(
            str(g["id"]),
            str(g["size"]),
            "yes" if g["prunable"] else "[red]no[/red]",
            names(g["producers"]),
            names(g["consumers"]),
            g["reason"] or "",
        )
    console.print(table)
    n_prunable = sum(g["prunable"] for g in report["groups"])
    console.print(
        f"{len(report['groups'])} groups, {n_prunable} prunable, {len(report['frozen'])} frozen; "
        f"{report['params'] / 1e6:.3f} M parameters, {report['macs'] / 1e6:.1f} M MACs"
    )
    if "check" in report:
        c = report["check"]
        verdict = "[green]PASSED[/green]" if c["passed"] else "[red]FAILED[/red]"
        console.print(
            f"check: removed {c['removed_fraction']:.0%} of prunable channels "
            f"({c['macs_after'] / 1e6:.1f} M MACs left); removed vs masked max abs err "
            f"{c['max_abs_err']:.2e}, max rel err {c['max_rel_err']:.2e} "
            f"(tolerance {c['rtol']:.0e}): {verdict}"
        )
