"""The demo at INT8: `halp-trt run --precision int8` on the demo's model, data and target
(bench/demo.py), then FP32 dense, INT8 dense and INT8 pruned side by side, as JSON.

    flock /tmp/halp-trt-bench.lock python bench/int8_demo.py [--out runs/int8_demo] \\
        [--json bench/results/int8_demo.json]

With ``--seeds`` and ``--importance`` (comma lists) it runs every seed with every
criterion, each in its own directory under ``--out``, all on the first run's INT8 table
(``--lut``), and compares the criteria seed by seed: what each pruned model scores in
FP32 and in INT8, what quantizing it cost, its measured speed-up, and each criterion's
difference from the first, with a t interval over the seeds:

    python bench/int8_demo.py --seeds 0,1,2,3,4,5 --importance taylor-fisher,taylor-weights \\
        --json bench/results/int8_demo_criteria.json

Flags after ``--`` go to every `halp-trt run` after the demo's and replace them (another
model, data or target), checked by `halp-trt run`'s own parser before any run; the
sweep's own (``--seed``, ``--importance``, ``--precision``, ``--out``, ``--lut``,
``--resume``) are refused there:

    python bench/int8_demo.py --seeds 0,1,2 --importance taylor-fisher,taylor-weights -- \\
        --model halp_trt.models:mobilenetv2_cifar --data npz:runs/digits_hard_v4.npz

``--lut PATH`` runs every run on an INT8 table measured before (an earlier sweep's, at
the runs' thread count), so that two sweeps side by side, or one continued with more
seeds, share one table and their seeds pool.

Targets (issue 14): measured INT8 pruned vs INT8 original speed-up >= 1.8x; INT8 pruned
accuracy within 1 point of the FP32 dense model's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo import DEMO  # noqa: E402  (the demo's configuration, one source)
from plan_pricing import load_pareto  # noqa: E402  (bench/pareto.py's interval)

TARGET_SPEEDUP = 1.8
TARGET_ACCURACY_POINTS = 1.0


class RunFailed(Exception):
    """One `halp-trt run` failed, or left a report that cannot be read."""


def _ints(text: str) -> list[int]:
    pareto = load_pareto()  # every bench's --seeds, one parser
    try:
        return pareto.parse_seeds(text)
    except pareto.BenchError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _names(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"criteria must be distinct names, got {text!r}")
    from halp_trt.importance import ImportanceError, resolve_importance

    for name in names:
        try:
            resolve_importance(name)
        except ImportanceError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return names


#: `halp-trt run` settings the bench sets itself, per run: refused after ``--``.
SWEEP_OWNS = ("seed", "importance", "precision", "out", "lut", "resume")


def run_flags(flags: list[str]) -> tuple[list[str], argparse.Namespace]:
    """``flags`` (after ``--``), checked: `halp-trt run`'s parser takes them after the
    demo's, its configuration takes their values, and none of them changes a setting
    the sweep sets itself; with the settings every run gets.

    Raises:
        SystemExit: (2) a flag `halp-trt run` does not take, a value its configuration
            refuses, or one of :data:`SWEEP_OWNS` (abbreviated or not): one line on
            stderr.
    """
    from halp_trt.cli import build_parser

    parser = build_parser()  # its errors: one line, exit code 2
    base = [*DEMO, "--precision", "int8", "--out", "x"]
    before = vars(parser.parse_args(["run", *base]))
    after = vars(parser.parse_args(["run", *base, *flags]))
    owned = [k for k in SWEEP_OWNS if before.get(k) != after.get(k)]
    message = (
        f"--{owned[0]} is the sweep's own setting, not a flag to pass after --" if owned else None
    )
    if message is None:
        from halp_trt.cli import run as run_command
        from lut_builder.errors import UserError

        try:  # the values `halp-trt run` checks before it runs (a target at 1x, ...)
            run_command.config(argparse.Namespace(**after))
        except UserError as e:
            message = e.cli_message() if hasattr(e, "cli_message") else str(e)
    if message is not None:
        _refuse(message)
    return list(flags), argparse.Namespace(**after)


def _refuse(message: str) -> NoReturn:
    sys.stderr.write(f"int8_demo.py: error: {message} (see int8_demo.py --help)\n")
    raise SystemExit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    ap = load_pareto().OneLineParser(prog="int8_demo.py", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/int8_demo", help="run directory (replaced)")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--resume", action="store_true", help="continue the run(s) in --out")
    ap.add_argument("--seeds", type=_ints, default=None, help="e.g. 0,1,2 (default: 0)")
    ap.add_argument(
        "--importance", type=_names, default=None,
        help="criteria to compare, e.g. taylor-fisher,taylor-weights (default: halp-trt's)",
    )  # fmt: skip
    ap.add_argument(
        "--lut", type=Path, default=None,
        help="an INT8 table every run uses (an earlier sweep's; default: the first run's)",
    )  # fmt: skip
    args = ap.parse_args(argv[:cut])
    args.run_flags, settings = run_flags(argv[cut + 1 :])
    if args.lut is not None:
        from halp_trt.pipeline import check_table_deployment
        from lut_builder.errors import UserError

        try:  # there, measured at INT8, at the runs' thread count
            check_table_deployment(args.lut, "int8", settings.threads)
        except UserError as e:
            _refuse(str(e))
    return args


def _flags(seed: int | None, importance: str | None) -> list[str]:
    flags = [] if seed is None else ["--seed", str(seed)]
    return flags + ([] if importance is None else ["--importance", importance])


def run_once(out: Path, extra: list[str], resume: bool, lut: Path | None = None) -> dict[str, Any]:
    """One `halp-trt run` of the INT8 demo in ``out`` with ``extra`` flags (on the table
    ``lut`` if given); its figures. Raises :class:`RunFailed` saying why if it failed."""
    if out.exists() and not resume:
        shutil.rmtree(out)
    flags = [*DEMO, "--precision", "int8", *extra, "--out", str(out), "--no-progress"]
    flags += ["--lut", str(lut)] if lut else []
    flags += ["--resume"] if resume else []
    print("$ halp-trt run " + shlex.join(flags), flush=True)
    t0 = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", "halp_trt", "run", *flags])
    if code != 0:
        raise RunFailed(f"halp-trt run exited with {code} (its message is above)")
    seconds = time.perf_counter() - t0
    try:
        r = json.loads((out / "report.json").read_text())
        plan = json.loads((out / "pruned" / "plan.json").read_text())
        rows = {row["model"]: row for row in r["precisions"]}
        fp32_acc, int8_acc = rows["fp32 dense"]["accuracy"], rows["int8 pruned"]["accuracy"]
        fp32_pruned = float(r["pruned"]["accuracy"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunFailed(f"cannot read the run's report in {out}: {type(e).__name__}: {e}") from None
    result = {
        "command": "halp-trt run " + shlex.join([*DEMO, "--precision", "int8", *extra]),
        "importance": (plan.get("pruning") or {}).get("importance"),  # what ran
        "table": "built" if lut is None else f"reused ({lut.parent.name}/{lut.name})",
        "machine": {
            "cpu": r["fingerprint"].get("device"),
            "cores": os.cpu_count(),
            "note": "shared 2-core machine; ratios from interleaved runs",
            "python": platform.python_version(),
        },
        "seconds": round(seconds, 1),
        "stages_s": r["stages"],
        "fingerprint": r["fingerprint"],
        "alignment_note": "the INT8 table's alignment was read from the measured staircase",
        "target": r["target"],
        "precisions": r["precisions"],
        "fp32_pruned_accuracy": fp32_pruned,
        "quantization_points": 100 * (int8_acc - fp32_pruned),
        "int8_speedup": r["speedup"],
        "int8_speedup_spread": r["speedup_spread"],
        "predicted_speedup": r["predicted_speedup"],
        "accuracy_points_vs_fp32_dense": 100 * (int8_acc - fp32_acc),
        "targets": {
            "int8_speedup_min": TARGET_SPEEDUP,
            "accuracy_points_max_drop": TARGET_ACCURACY_POINTS,
            "speedup_met": r["speedup"] >= TARGET_SPEEDUP,
            "accuracy_met": 100 * (fp32_acc - int8_acc) <= TARGET_ACCURACY_POINTS,
        },
        "budget_met": r["target_met"],
    }
    for name in ("fp32 dense", "int8 dense", "int8 pruned"):
        row = rows[name]
        print(
            f"{name:<12} {row['latency_ms']:.4f} ms  {row['speedup_vs_fp32']:.2f}x vs FP32  "
            f"accuracy {row['accuracy']:.4f}  {row['size_bytes'] / 1e6:.2f} MB"
        )
    print(
        f"INT8 pruned vs INT8 dense: {r['speedup']:.2f}x measured (target >= "
        f"{TARGET_SPEEDUP}x), {r['predicted_speedup']:.2f}x predicted; accuracy "
        f"{result['accuracy_points_vs_fp32_dense']:+.2f} points vs FP32 dense (target >= "
        f"-{TARGET_ACCURACY_POINTS}); FP32 pruned {fp32_pruned:.4f}, quantizing it "
        f"{result['quantization_points']:+.2f} points",
        flush=True,
    )
    return result


#: What the sweep compares, per run: (key, how to read it from a run's figures).
MEASURES = {
    "int8_pruned_accuracy": lambda r: _row(r, "int8 pruned")["accuracy"],
    "fp32_pruned_accuracy": lambda r: r["fp32_pruned_accuracy"],
    "quantization_points": lambda r: r["quantization_points"],
    "int8_speedup": lambda r: r["int8_speedup"],
}


def _row(run: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in run["precisions"] if p["model"] == name)


def compare(runs: list[dict[str, Any]], criteria: list[str]) -> dict[str, Any]:
    """Each criterion's mean of every measure over its runs, and each later criterion
    minus the first, seed by seed over the seeds both ran (a failed run drops its seed
    from that pair), with bench/pareto.py's t interval."""
    ok = [r for r in runs if r["status"] == "ok"]
    by = {(r["seed"], r["asked"]): r for r in ok}
    means = {
        c: {
            "runs": len(mine := [r for r in ok if r["asked"] == c]),
            **{
                k: statistics.fmean(f(r) for r in mine) if mine else None
                for k, f in MEASURES.items()
            },
        }
        for c in criteria
    }
    interval = load_pareto().paired_interval
    first, differences = criteria[0], {}
    for other in criteria[1:]:
        seeds = sorted(s for s, c in by if c == other and (s, first) in by)
        row: dict[str, Any] = {"seeds": seeds}
        for k, f in MEASURES.items():
            d = [f(by[s, other]) - f(by[s, first]) for s in seeds]
            row[k] = {
                "per_seed": d,
                "mean": statistics.fmean(d) if d else None,
                "ahead": sum(x > 0 for x in d),
                **interval(d),
            }
        differences[f"{other} minus {first}"] = row
    return {"means": means, "differences": differences}


def sweep(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Every seed with every criterion, each in ``out/s{seed}-{criterion}``, on the first
    successful run's table; ``argv``, the bench's arguments, is recorded."""
    seeds, criteria = args.seeds or [0], args.importance or [None]
    out = Path(args.out)
    if out.exists() and not args.resume:
        shutil.rmtree(out)
    runs, lut = [], args.lut
    t0 = time.perf_counter()
    for seed in seeds:
        for c in criteria:
            where = out / f"s{seed}-{c or 'default'}"
            entry = {"seed": seed, "asked": c or "default", "dir": where.name}
            try:
                extra = [*args.run_flags, *_flags(seed, c)]
                figures = run_once(where, extra, args.resume and where.exists(), lut)
            except RunFailed as e:
                print(f"int8_demo.py: seed {seed}, {entry['asked']}: {e}", file=sys.stderr)
                runs.append({**entry, "status": "failed", "error": str(e)})
                continue
            runs.append({**entry, "status": "ok", **figures})
            lut = lut or where / "lut.db"
    names = [c or "default" for c in criteria]
    return {
        "command": "python bench/int8_demo.py " + shlex.join(argv),
        "demo": "halp-trt run " + " ".join([*DEMO, "--precision", "int8", *args.run_flags]),
        "seeds": seeds,
        "criteria": names,
        "lut": None if args.lut is None else str(args.lut),  # None: the first run's
        "seconds": round(time.perf_counter() - t0, 1),
        "runs": runs,
        "comparison": compare(runs, names),
    }


def print_comparison(result: dict[str, Any]) -> None:
    cmp = result["comparison"]
    print(f"\n{'criterion':<16} runs  INT8 pruned  FP32 pruned  quantizing  speed-up")
    for c, m in cmp["means"].items():
        if not m["runs"]:
            print(f"{c:<16} {0:>4}  (every run failed)")
            continue
        print(
            f"{c:<16} {m['runs']:>4}  {m['int8_pruned_accuracy']:>11.4f}  "
            f"{m['fp32_pruned_accuracy']:>11.4f}  {m['quantization_points']:>+10.2f}  "
            f"{m['int8_speedup']:>7.2f}x"
        )
    for name, row in cmp["differences"].items():
        print(f"\n{name} ({len(row['seeds'])} seeds):")
        for k, scale, unit in (
            ("int8_pruned_accuracy", 100, " points"),
            ("fp32_pruned_accuracy", 100, " points"),
            ("quantization_points", 1, " points"),
            ("int8_speedup", 1, "x"),
        ):
            d = row[k]
            if d["mean"] is None:
                continue
            ci = (
                ""
                if d["ci"] is None
                else f" [{scale * d['ci'][0]:+.2f}, {scale * d['ci'][1]:+.2f}]"
            )
            print(f"  {k:<22} {scale * d['mean']:+.2f}{unit}{ci}, ahead on {d['ahead']}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.seeds is None and args.importance is None:
        try:
            result = run_once(Path(args.out), args.run_flags, args.resume, args.lut)
        except RunFailed as e:
            print(f"int8_demo.py: {e}", file=sys.stderr)
            return 1
    else:
        result = sweep(args, argv)
        print_comparison(result)
        if not any(r["status"] == "ok" for r in result["runs"]):
            return 1
    if args.json:
        from lut_builder.fileio import atomic_write_json

        atomic_write_json(args.json, result, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
