"""Time ChannelGraph construction and removal of half the channels on ResNet-50-sized
and ResNet-56 models; check removed == masked. Prints a table, writes JSON.

With ``--zoo``, also every classifier of torchvision's zoo
(``torchvision.models.list_models(module=torchvision.models)``, untrained) at a small
input (64x64; 224x224 for the models that need it): graph build time, the share of
channels in prunable groups (input and output layers excluded), the frozen groups'
reasons, and ``ChannelGraph.check`` on a random plan removing half of every prunable
group's units.

    python bench/graph.py [--repeats 5] [--zoo [--models a,b]] [--out bench/results/graph.json]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from halp_trt.graph import ChannelGraph
from halp_trt.models import resnet50_imagenet, resnet56

MODELS = {
    "resnet50_imagenet": (resnet50_imagenet, (1, 3, 224, 224)),
    "resnet56": (resnet56, (1, 3, 32, 32)),
}


def half_plan(graph: ChannelGraph, seed: int) -> dict[int, list[int]]:
    """Keep a random half of every prunable group's units (whole conv groups)."""
    rng = np.random.default_rng(seed)
    keep = {}
    for g in graph.prunable:
        n = g.size // g.unit
        units = rng.choice(n, max(1, n // 2), replace=False).tolist()
        keep[g.id] = sorted(u * g.unit + r for u in units for r in range(g.unit))
    return keep


#: Largest model checked (the check holds two copies more); bigger ones are only built.
CHECK_MAX_PARAMS = 150_000_000
#: Models whose definitions need 224x224 inputs (fixed position embeddings, windows,
#: Inception-v3 needs at least 75x75).
NEEDS_224 = ("vit_", "swin_", "maxvit_", "inception_v3")


def coverage(graph: ChannelGraph) -> dict:
    """Channels in prunable groups over all channels but the model input and outputs."""
    io = [
        g
        for g in graph.frozen
        if g.reason == "model input" or (g.reason or "").startswith("model output")
    ]
    total = sum(g.size for g in graph.groups) - sum(g.size for g in io)
    prunable = sum(g.size for g in graph.prunable)
    reasons: dict[str, int] = {}
    for g in graph.frozen:
        if g not in io:
            reasons[g.reason or "?"] = reasons.get(g.reason or "?", 0) + g.size
    return {
        "channels": total,
        "prunable_channels": prunable,
        "coverage": prunable / total if total else 1.0,
        "frozen_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "units": sorted({g.unit for g in graph.prunable}),
    }


def bench_zoo_model(name: str) -> dict:
    import torchvision

    size = 224 if name.startswith(NEEDS_224) else 64
    torch.manual_seed(0)
    model = torchvision.models.get_model(name).eval()
    x = torch.randn(1, 3, size, size)
    row: dict = {"model": name, "input_shape": [1, 3, size, size]}
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        graph = ChannelGraph(model, x)
    except Exception as exc:  # a PruningError is the one-line answer; anything else a bug
        row.update(error=f"{type(exc).__name__}: {exc}", build_s=time.perf_counter() - t0)
        return row
    # Wall time, and this process's CPU time: on a shared machine the difference is
    # time spent waiting for a core.
    row["build_s"] = time.perf_counter() - t0
    row["build_cpu_s"] = time.process_time() - c0
    row["groups"] = len(graph.groups)
    row["prunable_groups"] = len(graph.prunable)
    row.update(coverage(graph))
    row["params"] = graph.params
    if graph.prunable and graph.params <= CHECK_MAX_PARAMS:
        row["check"] = graph.check(half_plan(graph, 0)).to_dict()
    else:  # the check holds two more copies: the largest models are built, not checked
        row["check"] = None
    return row


def zoo(names: list[str] | None) -> list[dict]:
    import torchvision

    rows = []
    for name in names or torchvision.models.list_models(module=torchvision.models):
        row = bench_zoo_model(name)
        check = row.get("check") or {}
        print(
            f"{name:<24}{row.get('coverage', 0):>7.0%}{row['build_s']:>7.2f}s "
            f"cpu {row.get('build_cpu_s', 0):>5.2f}s "
            f"check {'pass' if check.get('passed') else 'FAIL' if check else '-':<4} "
            f"{row.get('error', '')}{next(iter(row.get('frozen_reasons', {})), '')[:70]}",
            flush=True,
        )
        rows.append(row)
    return rows


def previous_zoo(ap: argparse.ArgumentParser, path: str) -> list[dict]:
    """The zoo rows of an earlier run's output (none when there is no such file)."""
    import json

    if not Path(path).exists():
        return []
    try:
        rows = json.loads(Path(path).read_text()).get("zoo", [])
    except (OSError, ValueError, AttributeError) as exc:
        ap.error(f"cannot read the zoo rows of {path}: {exc}")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        ap.error(f"{path}: 'zoo' is not a list of rows")
    return rows


def bench(name: str, repeats: int) -> dict:
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(*shape)
    t0 = time.perf_counter()
    ChannelGraph(copy.deepcopy(model), x)  # first build in the process: imports, warm-up
    first = time.perf_counter() - t0
    builds, removals = [], []
    for i in range(repeats):
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        graph = ChannelGraph(m, x)
        builds.append(time.perf_counter() - t0)
        keep = half_plan(graph, i)
        t0 = time.perf_counter()
        graph.remove(keep)
        removals.append(time.perf_counter() - t0)
    graph = ChannelGraph(copy.deepcopy(model), x)
    check = graph.check(half_plan(graph, 0))
    return {
        "model": name,
        "input_shape": list(shape),
        "groups": len(graph.groups),
        "prunable_groups": len(graph.prunable),
        "params": graph.params,
        "first_build_s": first,
        "build_s_median": statistics.median(builds),
        "remove_half_s_median": statistics.median(removals),
        "repeats": repeats,
        "check": check.to_dict(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="bench/results/graph.json")
    ap.add_argument("--zoo", action="store_true", help="also torchvision's classifier zoo")
    ap.add_argument(
        "--models",
        default=None,
        help="comma-separated zoo subset (with --zoo); the other zoo rows already in --out "
        "are kept",
    )
    args = ap.parse_args()
    names = [n for n in args.models.split(",") if n] if args.models else None
    kept_rows: list[dict] = []
    if names is not None:
        if not args.zoo:
            ap.error("--models needs --zoo")
        import torchvision

        unknown = sorted(
            set(names) - set(torchvision.models.list_models(module=torchvision.models))
        )
        if unknown:
            ap.error(f"not a torchvision classifier: {', '.join(unknown)}")
        kept_rows = [r for r in previous_zoo(ap, args.out) if r.get("model") not in names]
    zoo_rows = kept_rows + zoo(names) if args.zoo else None
    if zoo_rows is not None:
        zoo_rows.sort(key=lambda r: r["model"])
    rows = [bench(name, args.repeats) for name in MODELS]
    result = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "results": rows,
    }
    if zoo_rows is not None:
        result["zoo"] = zoo_rows
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from lut_builder.fileio import atomic_write_json

    atomic_write_json(args.out, result, indent=2)
    print(
        f"{'model':<20}{'groups':>8}{'first build s':>15}{'build s':>10}{'remove ½ s':>12}"
        f"{'max rel err':>13}"
    )
    for r in rows:
        print(
            f"{r['model']:<20}{r['prunable_groups']:>4}/{r['groups']:<3}{r['first_build_s']:>15.2f}"
            f"{r['build_s_median']:>10.2f}{r['remove_half_s_median']:>12.2f}"
            f"{r['check']['max_rel_err']:>13.1e}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
