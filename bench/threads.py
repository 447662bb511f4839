"""How the budget hit moves with CPU threads: the demo's model pruned to 0.5x on a
1-thread and on a 2-thread ONNX Runtime table, each timed at 1 and at 2 threads.

    python bench/threads.py [--out runs/threads] [--json bench/results/threads.json]
                            [--lock /tmp/halp-trt-bench.lock] [--repeat 2] [--rounds 20]
                            [--no-feedback]

For each thread count T: ``lut-builder build --threads T`` measures the table, and
``halp-trt prune --lut`` prunes the demo's ResNet-20 (2x width, digits at 16x16, batch
16) to 0.5x of its predicted latency on it (the demo's 10 pruning steps on a short
training: only the widths matter here), with ``--feedback`` (each step's plan timed
against the dense model at the table's thread count, as ``halp-trt run`` does; off with
``--no-feedback``: the plans as the table predicts them). Then every pruned model is
timed against the original with ``verify_models`` at 1 and at 2 threads, the four
combinations in turn (the order reversed every other pass), ``--repeat`` times; a
figure is the median over the repeats of verify's median per-round ratio (pruned /
original, both timed interleaved). With ``--lock`` the whole run holds that file's
lock, as ``flock`` does, so that no other benchmark runs next to it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prune_quality import bench_lock  # noqa: E402

MODEL = "halp_trt.models:resnet20_w2"
SHAPE = (16, 3, 16, 16)
TARGET = 0.5
#: The target band, as a fraction of the 0.5x target, that a table's own thread count
#: should land in.
BAND = (0.95, 1.02)


def sh(*cmd: str) -> None:
    # Printed as a user would type it: the interpreter's path belongs to this machine.
    shown = ["python" if cmd[0] == sys.executable else cmd[0], *cmd[1:]]
    print("$ " + shlex.join(shown), flush=True)
    subprocess.run(cmd, check=True)


def commands(out: Path, threads: int, args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The table's build command and the pruning command on it."""
    lut, pruned = out / f"lut_t{threads}.db", out / f"pruned_t{threads}"
    shape = ",".join(map(str, SHAPE))
    build = ["lut-builder", "build", "--model", MODEL, "--input-shape", shape,
             "--backend", "onnxruntime", "--threads", str(threads), "--out", str(lut)]  # fmt: skip
    prune = ["halp-trt", "prune", "--model", MODEL, "--data", "digits", "--lut", str(lut),
             "--target", f"{TARGET}x", "--pretrain-epochs", str(args.pretrain_epochs),
             "--epochs", str(args.epochs), "--steps", str(args.steps),
             *([] if args.no_feedback else ["--feedback"]),
             "--out", str(pruned), "--no-progress"]  # fmt: skip
    return build, prune


def pruner_measurement(log: Path) -> dict:
    """The pruner's own last measurement of its plan (``--feedback``), from its log: the
    ratio, the half-width of its 95% interval and how many steps' timings it set aside
    (None where it had no feedback or an older log)."""
    import json

    fb = json.loads(log.read_text()).get("feedback") or {}
    ratios = fb.get("steps_measured_ratio") or []
    widths = fb.get("steps_measured_halfwidth") or [None] * len(ratios)
    return {
        "pruner_measured_ratio": ratios[-1] if ratios else None,
        "pruner_halfwidth": widths[-1] if widths else None,
        "pruner_steps_unmeasured": sum(r is None for r in ratios) if ratios else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/threads", help="work directory (replaced)")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--lock", default=None, help="hold this lock file while measuring")
    ap.add_argument("--repeat", type=int, default=2, help="passes over the four timings")
    ap.add_argument("--rounds", type=int, default=20, help="verify rounds per timing")
    ap.add_argument("--pretrain-epochs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument(
        "--no-feedback",
        action="store_true",
        help="prune on the table's predictions alone (no plan timed while pruning)",
    )
    ap.add_argument(
        "--reuse", action="store_true", help="keep the tables and models already in --out"
    )
    args = ap.parse_args()

    import torch

    from halp_trt.prune.apply import load_plan
    from halp_trt.specs import load_model
    from halp_trt.verify import verify_models
    from lut_builder import LatencyTable

    out = Path(args.out)
    if out.exists() and not args.reuse:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    # The whole run holds the lock: on a 2-core machine, training next to a timing
    # disturbs it as much as another benchmark would.
    lock = bench_lock(args.lock, say=lambda m: print(m, flush=True)) if args.lock else None
    with lock or contextlib.nullcontext():
        tables = {}
        # Tables first, then pruning, then every timing.
        for t in (1, 2):
            build, prune = commands(out, t, args)
            tables[t] = {
                "table": build[-1],
                "pruned": prune[-2],
                "commands": [shlex.join(build), shlex.join(prune)],
            }
            if not (args.reuse and Path(build[-1]).exists()):
                sh(sys.executable, "-m", "lut_builder", *build[1:])
        for t in (1, 2):
            _, prune = commands(out, t, args)
            if not (args.reuse and (Path(prune[-2]) / "plan.json").exists()):
                sh(sys.executable, "-m", "halp_trt", *prune[1:])
        for t in (1, 2):
            with LatencyTable.open(tables[t]["table"]) as table:
                tables[t]["table_threads"] = table.threads
                tables[t]["latency_model"] = {
                    "scale": table.scale,
                    "overhead_ms": table.overhead_ms,
                }
                tables[t]["fingerprint"] = table.fingerprint
            plan = load_plan(Path(tables[t]["pruned"]) / "plan.json")
            tables[t]["predicted_ratio"] = plan.predicted_ms / plan.base_ms
            tables[t].update(pruner_measurement(Path(tables[t]["pruned"]) / "log.json"))

        original = load_model(MODEL).eval()
        models = {
            t: torch.load(Path(v["pruned"]) / "model.pt", weights_only=False)
            for t, v in tables.items()
        }
        plans = {t: load_plan(Path(v["pruned"]) / "plan.json") for t, v in tables.items()}
        combos = [(t, k) for k in (1, 2) for t in (1, 2)]
        runs: dict[str, list[dict]] = {f"{t}/{k}": [] for t, k in combos}
        timings = [
            c for rep in range(args.repeat) for c in (combos if rep % 2 == 0 else combos[::-1])
        ]
        for t, k in timings:
            r = verify_models(
                original, models[t], backend="onnxruntime", input_shape=SHAPE,
                rounds=args.rounds, warmup=3, plan=plans[t], threads=k,
            )  # fmt: skip
            ratio = 1.0 / r.speedup.median
            print(
                f"  table {t} thread(s), timed at {k}: pruned/original {ratio:.3f} "
                f"(spread {r.speedup.spread:.1%})",
                flush=True,
            )
            runs[f"{t}/{k}"].append(
                {
                    "ratio": ratio,
                    "speedup": r.speedup.median,
                    "spread": r.speedup.spread,
                    # the 95% interval of the ratio (the inverse of the speed-up's)
                    "ratio_ci95": [1.0 / r.speedup.ci95[1], 1.0 / r.speedup.ci95[0]],
                    "original_ms": r.original.median_ms,
                    "pruned_ms": r.pruned.median_ms,
                    "notes": r.notes,
                }
            )
    rows = []
    for t, k in combos:
        ratios = [x["ratio"] for x in runs[f"{t}/{k}"]]
        ratio = statistics.median(ratios)
        rows.append(
            {
                "table_threads": t,
                "timed_threads": k,
                "predicted_ratio": tables[t]["predicted_ratio"],
                "measured_ratio": ratio,
                "measured_ratios": ratios,
                "spreads": [x["spread"] for x in runs[f"{t}/{k}"]],
                "ratio_ci95s": [x["ratio_ci95"] for x in runs[f"{t}/{k}"]],
                "of_target": ratio / TARGET,
                "in_band": BAND[0] <= ratio / TARGET <= BAND[1],
                "notes": runs[f"{t}/{k}"][0]["notes"],
            }
        )
    for t in (1, 2):
        got, hw = tables[t]["pruner_measured_ratio"], tables[t]["pruner_halfwidth"]
        if got is not None:
            print(
                f"  the pruner's last measurement on the {t}-thread table: {got:.3f}"
                + (f" +-{hw:.1%}" if hw is not None else "")
                + f" ({tables[t]['pruner_steps_unmeasured']} step(s) not measured reliably)"
            )
    print(f"\n{'table':>6} {'timed at':>9} {'predicted':>10} {'measured':>9} {'of 0.5x':>8}")
    for r in rows:
        flag = "" if r["table_threads"] != r["timed_threads"] else "  (its own thread count)"
        print(
            f"{r['table_threads']:>4} t {r['timed_threads']:>7} t {r['predicted_ratio']:>10.3f} "
            f"{r['measured_ratio']:>9.3f} {r['of_target']:>8.3f}{flag}"
        )
    result = {
        "command": "python bench/threads.py " + shlex.join(sys.argv[1:]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "note": "a shared machine: other processes ran during the measurements",
        },
        "model": MODEL,
        "input_shape": list(SHAPE),
        "target": f"{TARGET}x",
        "band": list(BAND),
        "repeat": args.repeat,
        "rounds": args.rounds,
        "feedback": not args.no_feedback,
        "tables": {
            str(t): {k: v for k, v in d.items() if k != "fingerprint"} for t, d in tables.items()
        },
        "rows": rows,
    }
    if args.json:
        from lut_builder.fileio import atomic_write_json

        atomic_write_json(args.json, result, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
