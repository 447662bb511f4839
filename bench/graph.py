"""Time ChannelGraph construction and removal of half the channels on ResNet-50-sized
and ResNet-56 models; check removed == masked. Prints a table, writes JSON.

    python bench/graph.py [--repeats 5] [--out bench/results/graph.json]
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
    rng = np.random.default_rng(seed)
    return {
        g.id: sorted(rng.choice(g.size, max(1, g.size // 2), replace=False).tolist())
        for g in graph.prunable
    }


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
    args = ap.parse_args()
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
