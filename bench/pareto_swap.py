"""One method run again, compared at equal measured latency with an earlier result's others.

When halp-trt changes, its own method can be run again (``bench/pareto.py --methods
halp-taylor-abs ...``) on the same dense models, table and settings as an earlier full
result, instead of running every baseline again: the baselines do not change. This swaps
the re-run method's runs into the earlier result and summarises it as bench/pareto.py
does (accuracy at the re-run method's measured latency, interpolated along each other
method's own points of the same seed, with the paired 95% interval).

Each model's measured ratio comes from its own run's interleaved timing against the same
dense model, so ratios from the two runs compare; absolute milliseconds would not. The
two results must agree on everything that decides the dense models and the budget
(model, data, shape, epochs, steps, window, batch size, learning rate, grid step, table
fingerprint), and every seed of the re-run must be in the earlier result with the same
dense accuracy; otherwise one line, exit code 2. ``--other-window`` lets the re-run's
``--prune-window`` differ: the window moves only when halp-trt's steps happen, so the
earlier result's methods keep their own points (both windows are recorded).
``--new-methods`` lets the re-run add methods the earlier result did not run (a new
criterion against the same baselines), and ``--reference`` picks the method the others
are compared with (by default the re-run's reference). ``--seeds`` takes only those seeds
of the re-run: one re-run over seeds 3-8 swaps into an earlier run of seeds 3-5 and one
of seeds 6-8, and bench/pareto_pool.py pools the swapped results. A swapped result
keeps its seeds' dense models and settings, so a second re-run swaps into it in turn.

    .venv/bin/python bench/pareto_swap.py bench/results/pareto_mobilenetv2.json \\
        bench/results/pareto_mobilenetv2_feedback.json \\
        --out bench/results/pareto_mobilenetv2_swapped.json
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from plan_pricing import load_pareto  # noqa: E402  (bench/pareto.py, loaded once)

#: Settings that decide the dense models, the budget and the table: both results must agree.
SAME = (
    "model", "data", "input_shape", "pretrain_epochs", "epochs", "steps", "prune_window",
    "batch_size", "lr", "step", "table_backend", "threads", "min_keep", "no_feedback",
    "backend", "device", "precision",
)  # fmt: skip


#: Bad input: one line, exit code 2 (bench/pareto.py's, whose ``--seeds`` parser this shares).
BenchError = load_pareto().BenchError


def read(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
        d["settings"], d["runs"], d["dense"]  # noqa: B018 - the keys a result has
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"{path}: not a bench/pareto.py result ({exc})") from None
    return d


def swap(
    base: dict[str, Any],
    rerun: dict[str, Any],
    other_window: bool = False,
    new_methods: bool = False,
    reference: str | None = None,
    seeds: list[int] | None = None,
) -> dict[str, Any]:
    """``base`` with the runs of ``rerun``'s methods replaced by ``rerun``'s, summarised at
    the measured latency of ``reference`` (default: the re-run's reference);
    ``other_window``: the two may differ in ``prune_window``; ``new_methods``: the re-run
    may add methods the base did not run; ``seeds``: only these seeds of the re-run.

    Raises:
        BenchError: the two results differ in a setting of :data:`SAME`, in the table, in
            a seed's dense model, the re-run has a target or seed the base lacks, or a
            method (unless ``new_methods``), a seed of ``seeds`` is not in the re-run, or
            ``reference`` is not among the methods.
    """
    pareto = load_pareto()
    if seeds is not None:
        lacking = [s for s in seeds if str(s) not in rerun["dense"]]
        if lacking:
            raise BenchError(f"the re-run has no seed {lacking[0]}")
        rerun = {
            **rerun,
            "dense": {k: v for k, v in rerun["dense"].items() if int(k) in seeds},
            "runs": [r for r in rerun["runs"] if int(r["seed"]) in seeds],
        }
    sb, sr = (pareto.deployment_settings(r["settings"]) for r in (base, rerun))
    same = [k for k in SAME if not (other_window and k == "prune_window")]
    differ = [k for k in same if sb.get(k) != sr.get(k)]
    timing = pareto.result_timing(sb)
    if pareto.result_timing(sr) != timing:
        differ.append("timing")
    fb, fr = (
        (base.get("table") or {}).get("fingerprint"),
        (rerun.get("table") or {}).get("fingerprint"),
    )
    if fb != fr:
        differ.append("table fingerprint")
    if differ:
        raise BenchError(f"the results were run with other settings ({', '.join(differ)})")
    methods = list(rerun["methods"])
    added = [m for m in methods if m not in base["methods"]]
    missing = ([] if new_methods else added) + [
        t for t in rerun["targets"] if t not in base["targets"]
    ]
    if missing:
        more = " (--new-methods adds methods)" if added and not new_methods else ""
        raise BenchError(f"the earlier result has no {', '.join(missing)}{more}")
    for seed, d in rerun["dense"].items():
        if seed not in base["dense"]:
            raise BenchError(f"the earlier result has no seed {seed}")
        if d["val_acc"] != base["dense"][seed]["val_acc"]:
            raise BenchError(
                f"seed {seed}: the dense models differ (val acc {d['val_acc']:.4f} against "
                f"{base['dense'][seed]['val_acc']:.4f})"
            )
    seeds = {int(s) for s in rerun["dense"]}
    targets = list(rerun["targets"])
    keep = [
        r
        for r in base["runs"]
        if r["method"] not in methods and r["seed"] in seeds and r["target"] in targets
    ]
    runs = keep + [r for r in rerun["runs"] if r["seed"] in seeds]
    names = [name for m in [*base["methods"], *added] for name in (m, f"{m}+")]
    all_methods = [m for m in names if any(r["method"] == m for r in runs)]
    reference = reference or sr.get("reference") or methods[0]
    if reference not in all_methods:
        raise BenchError(f"--reference {reference} is not among the methods run")
    # Either run's training of the unpruned copy (--dense-finetune) of the same dense models.
    dense = {
        k: {**v, **{f: x for f, x in rerun["dense"][k].items() if f.startswith("finetuned_")}}
        for k, v in base["dense"].items()
        if int(k) in seeds
    }
    return {
        "benchmark": "pareto_swap",
        "sources": {"earlier": base.get("command"), "rerun": rerun.get("command")},
        "model": base["model"],
        "data": base["data"],
        "input_shape": base["input_shape"],
        "targets": targets,
        "seeds": sorted(seeds),
        "methods": [*base["methods"], *added],
        "rerun_methods": methods,
        "settings": {**{k: sb.get(k) for k in SAME}, "timing": timing},
        "prune_window": {"earlier": sb.get("prune_window"), "rerun": sr.get("prune_window")},
        "table": base.get("table"),
        # The dense models of its seeds: a swapped result takes another re-run in turn.
        "dense": dense,
        "timing": "each model's ratio from its own run, interleaved with the same dense model",
        "summary": pareto.summarise(runs, all_methods, targets, reference, dense),
        "runs": runs,
    }


def table_text(result: dict[str, Any]) -> str:
    """The equal-latency differences, one row per target."""
    summary = result["summary"]
    ref = summary["reference"]
    others = sorted({m for eq in summary["equal_latency"].values() for m in eq})
    lines = [f"{ref} minus each method at {ref}'s measured latency (points, 95% interval)"]
    lines.append("target  " + "  ".join(f"{m:>24}" for m in others))
    for t, eq in summary["equal_latency"].items():
        cells = []
        for m in others:
            e = eq.get(m)
            cells.append(
                f"{100 * e['halp_minus_method_mean']:+5.1f} [{100 * e['ci'][0]:+5.1f},"
                f"{100 * e['ci'][1]:+5.1f}]{'*' if e['resolved'] else ' '}"
                if e
                else "-"
            )
        lines.append(f"{t:<7} " + "  ".join(f"{c:>24}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = load_pareto().OneLineParser(prog="pareto_swap.py", description=__doc__.split("\n")[0])
    p.add_argument("earlier", help="a bench/pareto.py result with every method")
    p.add_argument("rerun", help="a bench/pareto.py result of the methods run again")
    p.add_argument("--out", default=None, help="write the swapped result here (JSON, .png beside)")
    p.add_argument(
        "--other-window",
        action="store_true",
        help="the re-run may have another --prune-window (recorded with the earlier one)",
    )
    p.add_argument(
        "--new-methods",
        action="store_true",
        help="the re-run may add methods the earlier result did not run",
    )
    p.add_argument(
        "--reference",
        default=None,
        help="the method every other is compared with at its measured latency (default: "
        "the re-run's reference)",
    )
    p.add_argument(
        "--seeds",
        default=None,
        help="comma-separated seeds: take only these of the re-run (default: all of them)",
    )
    args = p.parse_args(argv)
    from lut_builder.errors import UserError
    from lut_builder.fileio import check_output

    try:
        seeds = None if args.seeds is None else sorted(load_pareto().parse_seeds(args.seeds))
        if args.out:
            check_output(args.out, kind="file", flag="--out")
        result = swap(
            read(Path(args.earlier)),
            read(Path(args.rerun)),
            args.other_window,
            new_methods=args.new_methods,
            reference=args.reference,
            seeds=seeds,
        )
    except (BenchError, UserError) as exc:
        print(f"pareto_swap.py: error: {exc}", file=sys.stderr)
        return 2
    result = {
        "command": "python bench/pareto_swap.py "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        **result,
    }
    print(table_text(result))
    if args.out:
        from lut_builder.fileio import atomic_write_json

        out = Path(args.out)
        atomic_write_json(out, result, indent=1, default=float)
        load_pareto().plot(
            result["runs"],
            result["methods"],
            out.with_suffix(".png"),
            f"{result['model']}: {', '.join(result['rerun_methods'])} run again",
            dense_finetuned=result["summary"].get("dense_finetuned_val_acc_mean"),
        )
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
