"""Where the shipped default stands against each baseline, one table over pooled runs.

bench/pareto_pool.py pools one model's runs seed by seed: the reference method minus
each other method at the reference's measured latency, with a 95% t interval over the
seeds. This reads several such pools (of several models, targets and CPUs) and keeps,
for each model, target and CPU, the figure of each baseline the issue names:

- ``MACs table``: the reference's own pipeline on a table whose costs are MACs
  (``halp-auto-macs-calib``, at the reference's per-group floor): what measuring adds;
- ``SP-LAMP``: halp-trt with SP-LAMP scores (``halp-sp-lamp-calib`` or ``halp-sp-lamp``,
  at whatever per-group floor it was run);
- ``TP L2``, ``TP Taylor``: Torch-Pruning's global pruning (``tp-l2``, ``tp-taylor``);
- ``FastNAS``: NVIDIA ModelOpt FastNAS (``modelopt-fastnas``);
- ``uniform``: every group at one width fraction.

A pool counts at a target only where its reference is what halp-trt ships there: ``auto``
on the pruner's own path (``halp-auto-calib``, or ``halp-auto``; or the criterion
``auto`` chooses there, named: ``halp-taylor-fisher-calib``), at the floor
:func:`halp_trt.prune.pruner.default_min_keep` gives for that model and target, its runs
having run the criterion :func:`halp_trt.importance.auto_choice` names for it now. A pool
run against an older default, or against another floor, is set aside, each such target
named on stderr: the table is of the default as it is, however many runs once measured
something else. Where several pools give one baseline at one model, target and CPU, the
one with the most seeds is kept (on a tie the later on the command line), and the table
names it. The CPU is read from the latency table's fingerprint in the runs (its name and
whether it has AVX-512): a pool of runs on two CPUs is refused, and so is a pool whose
reference names none of its runs at a target (written before a reference named its floor:
its bare name would read as the 0.3 floor; pool those runs again).

    python bench/scoreboard.py bench/results/pareto_pool_*.json \\
        --out bench/results/scoreboard.json

Each cell: the default minus the baseline in points of validation accuracy, its 95% t
interval, and on how many seeds the default was ahead. The last column says whether
the default's mean is at or above every baseline's mean there (the issue's target), and
if not, which baselines lead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from plan_pricing import (  # noqa: E402
    BenchError,
    floor_named,
    floored_method,
    load_pareto,
    load_result,
    same_setting,
    write_figures,
)

#: The shipped default's names in bench/pareto.py: a run too short for two of HALP's
#: steps prunes before training (``-calib``), a longer one while training. The criterion
#: ``auto`` chooses, named (``halp-taylor-fisher-calib`` where it chooses
#: ``taylor-fisher``), at the same floor, is the same path.
SHIPPED = ("halp-{}-calib", "halp-{}")

#: Column label -> the baseline methods that fill it (the first found with the most seeds).
BASELINES = {
    "MACs table": ("{macs}",),
    "SP-LAMP": ("halp-sp-lamp-calib", "halp-sp-lamp"),
    "TP L2": ("tp-l2",),
    "TP Taylor": ("tp-taylor",),
    "FastNAS": ("modelopt-fastnas",),
    "uniform": ("uniform",),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = load_pareto().OneLineParser(prog="scoreboard.py", description=__doc__.split("\n")[0])
    p.add_argument("pools", nargs="+", help="bench/pareto_pool.py results (JSON)")
    p.add_argument("--out", default=None, help="write the table as JSON here")
    return p.parse_args(argv)


def load_pool(path: str) -> dict[str, Any]:
    """A bench/pareto_pool.py result, or BenchError."""
    try:
        pool = json.loads(Path(path).read_text())
        pool["reference"], pool["runs"], pool["equal_latency"].items  # noqa: B018
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BenchError(f"{path} is not a bench/pareto_pool.py result ({exc})") from None
    if pool.get("benchmark") != "pareto_pool":
        raise BenchError(f"{path} is not a bench/pareto_pool.py result")
    return pool


def cpu_of(result: dict[str, Any]) -> str:
    """The CPU a result's latency table was measured on, as its fingerprint names it:
    ``AMD EPYC, AVX-512`` (``AVX2``; ``flags not recorded`` for tables built before the
    fingerprint kept them)."""
    host = ((result.get("table") or {}).get("fingerprint") or {}).get("host") or {}
    flags = host.get("cpu_flags") or []
    kind = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    return f"{host.get('cpu') or 'unknown CPU'}, {kind or 'flags not recorded'}"


def pool_results(path: str, pool: dict[str, Any]) -> list[tuple[str, dict]]:
    """The bench/pareto.py results a pool read, from the pool's own folder."""
    folder = Path(path).parent
    return [(name, load_result(str(folder / name))) for name in pool["runs"]]


class Shipped:
    """What ``auto`` runs for a model and input shape at each target: its criterion and
    its per-group floor, from the pruner's own rules on the model's channel graph."""

    def __init__(self) -> None:
        self._graphs: dict[tuple[str, tuple[int, ...]], Any] = {}

    def graph(self, model: str, shape: tuple[int, ...]) -> Any:
        if (model, shape) not in self._graphs:
            import torch

            from halp_trt.graph import ChannelGraph
            from halp_trt.specs import example_input, load_model

            torch.manual_seed(0)
            net = load_model(model).eval()
            self._graphs[model, shape] = ChannelGraph(net, example_input(net, shape))
        return self._graphs[model, shape]

    def at(self, model: str, shape: tuple[int, ...], fraction: float) -> tuple[str, float]:
        """``(criterion, floor)`` of ``auto`` at ``fraction`` of the dense latency."""
        from halp_trt.importance import AUTO_IMPORTANCE, auto_choice
        from halp_trt.prune.pruner import default_min_keep

        graph = self.graph(model, shape)
        chosen = auto_choice(fraction, graph)[0]
        return chosen, default_min_keep(AUTO_IMPORTANCE, chosen, graph, fraction)


def split_floor(name: str) -> tuple[str, float]:
    """``halp-auto-calib@floor0.5`` -> ``("halp-auto-calib", 0.5)``; a bare name has the
    floor of 0.3 its runs were pruned at."""
    from halp_trt.prune.pruner import DEFAULT_MIN_KEEP

    base, _, floor = name.partition("@floor")
    return base, float(floor) if floor else DEFAULT_MIN_KEEP


def macs_name(method: str) -> str:
    """The MACs-table ablation of a halp-trt method: ``halp-auto-calib`` ->
    ``halp-auto-macs-calib``, ``halp-auto`` -> ``halp-auto-macs``."""
    base = method.removesuffix("-calib")
    return f"{base}-macs" + ("-calib" if base != method else "")


def is_baseline(method: str, names: tuple[str, ...], macs: str) -> bool:
    """Whether a pooled ``method`` fills the column of ``names``: the MACs-table ablation
    only at the reference's floor (``macs``, the ``{macs}`` of :data:`BASELINES`), a
    halp-trt baseline (SP-LAMP) at whatever floor it was run, the others by name."""
    if method == macs and "{macs}" in names:
        return True
    return split_floor(method)[0] in names if method.startswith("halp-") else method in names


def reference_criteria(results: list[tuple[str, dict]], reference: str, target: str) -> set:
    """The criteria the reference's runs at ``target`` recorded (``importance``)."""
    return {
        r.get("importance")
        for _, result in results
        for r in result["runs"]
        if r.get("target") == target
        and r.get("status") == "ok"
        and floored_method(r, result.get("settings")) == reference
    }


def entries(paths: list[str]) -> tuple[list[dict], list[dict]]:
    """Every (pool, target, baseline) figure of the shipped default, and the pool targets
    set aside (with why)."""
    from halp_trt.prune.schedule import target_fraction

    shipped = Shipped()
    found: list[dict] = []
    skipped: list[dict] = []
    for path in paths:
        pool = load_pool(path)
        name = Path(path).name
        results = pool_results(path, pool)
        same_setting(results, ("model", "data", "input_shape"), "a pool is of one model")
        cpus = sorted({cpu_of(result) for _, result in results})
        if len(cpus) != 1:
            raise BenchError(f"{name} pools runs of several CPUs ({'; '.join(cpus)})")
        first = results[0][1]
        model, shape = str(first["model"]), tuple(int(n) for n in first["input_shape"])
        data = str(first.get("data", "")).split(": ")[0]
        method, floor = split_floor(str(pool["reference"]))
        for target, by_method in pool["equal_latency"].items():
            fraction = target_fraction(target)
            if fraction is None:
                raise BenchError(f"{name} has a target {target!r}, not a fraction (0.5x)")
            criterion, default_floor = shipped.at(model, shape, fraction)
            ran = reference_criteria(results, pool["reference"], target)
            if not ran:
                raise BenchError(
                    f"{name}: its reference {pool['reference']} names none of its runs at "
                    f"{target} (named before the floors were? pool them again)"
                )
            why = None
            if method not in {n.format(c) for n in SHIPPED for c in ("auto", criterion)}:
                why = f"its reference, {pool['reference']}, is not the shipped default"
            elif abs(floor - default_floor) > 1e-9:
                why = (
                    f"its reference is pruned at the floor {floor:g}; the default's there is "
                    f"{default_floor:g}"
                )
            elif ran - {None} and ran != {criterion}:
                why = (
                    f"its reference ran {', '.join(sorted(map(str, ran - {None})))}; auto runs "
                    f"{criterion} there now"
                )
            if why:
                skipped.append({"pool": name, "target": target, "why": why})
                continue
            macs = floor_named(macs_name(method), floor)
            for label, methods in BASELINES.items():
                for baseline, eq in by_method.items():
                    if not is_baseline(baseline, methods, macs):
                        continue
                    found.append(
                        {
                            "model": model,
                            "data": data,
                            "input_shape": list(shape),
                            "cpu": cpus[0],
                            "target": target,
                            "reference": pool["reference"],
                            "criterion": criterion,
                            "baseline": label,
                            "method": baseline,
                            "pool": name,
                            "seeds": int(eq["seeds"]),
                            "mean_points": 100 * float(eq["halp_minus_method_mean"]),
                            "ci_points": None
                            if eq.get("ci") is None
                            else [100 * float(c) for c in eq["ci"]],
                            "ahead": int(eq["ahead"]),
                            "bracketed": int(eq["bracketed"]),
                        }
                    )
    return found, skipped


def board(found: list[dict]) -> list[dict]:
    """One row per model, data, input shape, CPU and target: each baseline's figure from
    the pool with the most seeds (the later on a tie), and whether the default's mean is
    at or above every baseline's there."""
    from halp_trt.prune.schedule import target_fraction

    rows: dict[tuple, dict] = {}
    for e in found:
        key = (e["model"], e["data"], tuple(e["input_shape"]), e["cpu"], e["target"])
        row = rows.setdefault(
            key,
            {
                "model": e["model"],
                "data": e["data"],
                "input_shape": e["input_shape"],
                "cpu": e["cpu"],
                "target": e["target"],
                "criterion": e["criterion"],
                "reference": e["reference"],
                "baselines": {},
            },
        )
        keep = row["baselines"].get(e["baseline"])
        if keep is None or e["seeds"] >= keep["seeds"]:
            row["baselines"][e["baseline"]] = {
                k: e[k]
                for k in (
                    "method",
                    "pool",
                    "seeds",
                    "mean_points",
                    "ci_points",
                    "ahead",
                    "bracketed",
                )
            }
    out = []
    for key in sorted(rows, key=lambda k: (k[0], k[3], -target_fraction(k[4]))):
        row = rows[key]
        # the mean as printed: a lead of -0.001 points is a tie, not a loss
        behind = [b for b, f in row["baselines"].items() if round(f["mean_points"], 2) < 0]
        row["behind"] = behind
        row["at_or_above_every_mean"] = not behind
        out.append(row)
    return out


def cell(figure: dict | None) -> str:
    if figure is None:
        return "-"
    ci = figure["ci_points"]
    span = f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else ""
    return f"{figure['mean_points']:+.2f}{span} {figure['ahead']}/{figure['seeds']}"


def markdown(rows: list[dict]) -> str:
    """The table as Markdown, one row per model, CPU and target."""
    head = ["model", "CPU", "target", "default runs", *BASELINES, "at or above every mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        model = row["model"].rpartition(":")[2]
        verdict = "yes" if row["at_or_above_every_mean"] else "no: " + ", ".join(row["behind"])
        cells = [cell(row["baselines"].get(b)) for b in BASELINES]
        floor = split_floor(row["reference"])[1]
        runs = f"`{row['criterion']}`, floor {floor:g}"
        lines.append(
            "| " + " | ".join([model, row["cpu"], row["target"], runs, *cells, verdict]) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from lut_builder.errors import UserError as LutUserError
    from lut_builder.fileio import check_output

    args = parse_args(argv)
    try:
        out = check_output(args.out, flag="--out", parents=True) if args.out else None
        found, skipped = entries(args.pools)
        if not found:
            raise BenchError(
                "none of the pools sets the shipped default against a baseline "
                f"({len(skipped)} pool targets set aside: run with fewer pools to see why)"
                if skipped
                else "the pools hold no baseline the table names"
            )
    except (BenchError, LutUserError) as exc:
        print(f"scoreboard.py: error: {exc}", file=sys.stderr)
        return 2

    for s in skipped:
        print(f"set aside: {s['pool']} at {s['target']}: {s['why']}", file=sys.stderr)
    rows = board(found)
    print("the shipped default minus each baseline at its measured latency, points: mean")
    print("[95% t interval over seeds] seeds ahead/seeds")
    print(markdown(rows))
    if out is not None:
        write_figures(out, "scoreboard.py", argv, {"rows": rows, "set_aside": skipped})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
