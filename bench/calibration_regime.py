"""Which timing should a table's network latency model be calibrated on?

A table's build fits ``scale * layers + overhead`` on whole models, and checks it, in
one of two regimes (:class:`lut_builder.end_to_end.BlockSampler`): served, one block of
back-to-back inferences of each model in turn (the default since this bench showed why),
or round-robin, one inference of each model in turn, each after an untimed one (how
tables were calibrated before; ``lut-builder build --calibration-timing round-robin``).
A deployed model is served alone, one inference after another, which is how halp-trt's
feedback, ``verify`` and bench/pareto.py's ``--timing blocks`` time
(:func:`halp_trt.prune.feedback.served_times`). Where the two regimes see a different
speed-up, a latency model fitted on one mispredicts the other.

For one model and table this times, in both regimes, interleaved in one run and
``--reps`` times in turn: the dense model, its uniform copies at ``--fractions`` (the
calibration's) and ``--extra``, ``--samples`` random-width copies (the check's draw,
seed 0), and, with ``--pareto``, the pruned models of a bench/pareto.py result rebuilt
from their widths (untrained: the weights do not move the speed). In each regime it
fits the affine model on the dense model and the calibration copies (as the build does,
on the table's layer sums) and reports each kind's speed-up error in that same regime;
it also scores the round-robin fit and the table's own calibration (``table, served``;
its regime is recorded as ``table_regime``) against the served timings.

    python bench/calibration_regime.py --model halp_trt.models:mobilenetv2_cifar \\
        --input-shape 1,3,16,16 --table T.db --pareto bench/results/pareto_X.json \\
        --out bench/results/calibration_regime_X.json

ONNX Runtime, one thread, thread clock, under the bench lock. Bad input is one line,
exit code 2, nothing written.
"""

from __future__ import annotations

import argparse
import copy
import platform
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from plan_pricing import keep_counts, load_pareto  # noqa: E402

BenchError = load_pareto().BenchError
REGIMES = ("round-robin", "served")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = load_pareto().OneLineParser(
        prog="calibration_regime.py", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", required=True, help="model spec (module:function or file:function)")
    p.add_argument("--input-shape", required=True, help="N,C,H,W, the table's")
    p.add_argument("--table", required=True, help="the model's ONNX Runtime latency table")
    p.add_argument("--pareto", default=None, help="bench/pareto.py result: its models too")
    p.add_argument("--fractions", default="0.75,0.5", help="uniform copies fitted on")
    p.add_argument("--extra", default="0.3", help="uniform copies only evaluated ('' none)")
    p.add_argument("--samples", type=int, default=20, help="random-width copies")
    p.add_argument("--rounds", type=int, default=400, help="round-robin rounds per rep")
    p.add_argument("--served-rounds", type=int, default=20, help="served rounds per rep")
    p.add_argument("--reps", type=int, default=2, help="times both regimes run, in turn")
    p.add_argument("--lock", default=None, help="lock file held around every timing")
    p.add_argument("--out", default=None, help="JSON to write")
    return p.parse_args(argv)


def _fractions(text: str, flag: str) -> list[float]:
    try:
        values = [float(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise BenchError(f"{flag} {text!r}: comma-separated numbers") from None
    if not all(0 < f < 1 for f in values):
        raise BenchError(f"{flag} {text!r}: each must lie between 0 and 1")
    return values


def check(args: argparse.Namespace) -> tuple[tuple[int, ...], list[float], list[float]]:
    """The input shape and the two lists of fractions. Raises BenchError on bad input."""
    from lut_builder.fileio import check_output
    from lut_builder.specs import parse_shape

    fit, extra = _fractions(args.fractions, "--fractions"), _fractions(args.extra, "--extra")
    if not fit:
        raise BenchError("--fractions: at least one uniform copy to fit on")
    for name in ("samples", "rounds", "served_rounds", "reps"):
        if getattr(args, name) < (0 if name == "samples" else 1):
            raise BenchError(f"--{name.replace('_', '-')} must be at least 1")
    shape = parse_shape(args.input_shape)
    if len(shape) != 4:
        raise BenchError(f"--input-shape must be N,C,H,W, not {args.input_shape!r}")
    if not Path(args.table).is_file():
        raise BenchError(f"--table {args.table!r} is not a file")
    if args.pareto and not Path(args.pareto).is_file():
        raise BenchError(f"--pareto {args.pareto!r} is not a file")
    if args.out:
        check_output(args.out, flag="--out")
    return shape, fit, extra


def build_models(args, model, x, step, fit, extra) -> list[tuple[str, str, Any]]:
    """``(name, kind, model)``: dense, calibration copies, extra uniform copies, random
    widths, and the pareto result's models."""
    import json

    import numpy as np
    import torch.nn as nn

    from halp_trt.graph import ChannelGraph, random_keep, uniform_width

    models = [("dense", "dense", model)]
    models += [(f"uniform_{f:g}", "fitted", uniform_width(model, x, f, step)) for f in fit]
    models += [(f"uniform_{f:g}", "uniform", uniform_width(model, x, f, step)) for f in extra]
    rng = np.random.default_rng(0)
    for s in range(args.samples):
        m = copy.deepcopy(model)
        graph = ChannelGraph(m, x)
        graph.remove(random_keep(graph, rng, step))
        models.append((f"random_{s:02d}", "random", m.eval()))
    if args.pareto:
        result = json.loads(Path(args.pareto).read_text())
        if result.get("model") != args.model:
            raise BenchError(f"--pareto is a run of {result.get('model')!r}, not {args.model!r}")
        convs = [n for n, mm in model.named_modules() if isinstance(mm, nn.Conv2d)]
        graph0 = ChannelGraph(copy.deepcopy(model), x)
        for r in result.get("runs", []):
            if r.get("status") != "ok" or "widths" not in r:
                continue
            counts = keep_counts(graph0, convs, r["widths"])
            m = copy.deepcopy(model)
            ChannelGraph(m, x).remove({g: list(range(k)) for g, k in counts.items()})
            name = f"{r['method']}/{r['target']}/seed{r['seed']}"
            models.append((name, f"plan {r['method']}", m.eval()))
    return models


def fit_and_score(
    rows: list[dict], regime: str, timed: str | None = None, stored: Any = None
) -> dict[str, Any]:
    """The affine model fitted on the dense model and the calibration copies timed in
    ``regime`` (or ``stored``: a :class:`lut_builder.Calibration`, e.g. the table's own),
    and each kind's speed-up error against the timings of ``timed`` (by default the same
    regime; the table's calibration against served timings is what a deployment meets)."""
    from lut_builder import fit_calibration

    med = [statistics.median(r[timed or regime]) for r in rows]
    if stored is None:
        fitted = [statistics.median(r[regime]) for r in rows]
        fit_idx = [i for i, r in enumerate(rows) if r["kind"] in ("dense", "fitted")]
        cal = fit_calibration([(rows[i]["layers_ms"], fitted[i]) for i in fit_idx])
    else:
        cal = stored
    p0 = cal.predict(rows[0]["layers_ms"])
    kinds: dict[str, list[tuple[float, float]]] = {}
    for r, m in zip(rows[1:], med[1:]):
        err = (cal.predict(r["layers_ms"]) / p0) / (m / med[0]) - 1
        kinds.setdefault(r["kind"], []).append((err, m / med[0]))
    return {
        "scale": cal.scale,
        "overhead_ms": cal.overhead_ms,
        "kind": cal.kind,
        "speedup_errors": {
            k: {
                "n": len(v),
                "median_abs": statistics.median(abs(e) for e, _ in v),
                "max_abs": max(abs(e) for e, _ in v),
                "mean": statistics.fmean(e for e, _ in v),
                "ratio_min": min(q for _, q in v),
                "ratio_max": max(q for _, q in v),
            }
            for k, v in kinds.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    import prune_quality
    import torch

    from halp_trt.errors import UserError
    from halp_trt.prune.feedback import served_times
    from halp_trt.specs import example_input, load_model
    from lut_builder import Calibration, LatencyTable, predict_latency
    from lut_builder.backends import make_runner
    from lut_builder.end_to_end import stored_regime
    from lut_builder.fileio import atomic_write_json
    from lut_builder.signatures import model_layers
    from lut_builder.timing import time_interleaved

    args = parse_args(argv)
    try:
        shape, fit, extra = check(args)
        torch.manual_seed(0)
        model = load_model(args.model).eval()
        x = example_input(model, shape)
        with LatencyTable.open(args.table) as table:
            models = build_models(args, model, x, table.step, fit, extra)
            rows = []
            for name, kind, m in models:
                layers = model_layers(m, x)
                items = [(i.signature, i.c_in, i.c_out) for i in layers.values()]
                rows.append(
                    {
                        "name": name,
                        "kind": kind,
                        "layers_ms": predict_latency(table, items, overhead=False),
                    }
                )
            fingerprint = table.fingerprint
            # How the table's calibration timed its whole models.
            table_regime = stored_regime(table.overhead)
            # The table's own calibration (None when it has none), scored below too.
            stored = (
                None
                if table.overhead_ms is None
                else Calibration(table.overhead_ms, table.scale, "stored")
            )
    except (BenchError, UserError, OSError, ValueError) as exc:
        print(f"calibration_regime.py: error: {exc}", file=sys.stderr)
        return 2
    runners = [make_runner("onnxruntime", m, x, threads=1) for _, _, m in models]
    try:
        for r in rows:
            r["round-robin"], r["served"] = [], []
        for rep in range(args.reps):
            with prune_quality.bench_lock(args.lock):
                rr = time_interleaved(
                    runners, warmup=20, rounds=args.rounds, min_time_s=None, clock="thread",
                    sync=runners[0].sync, warm=True,
                )  # fmt: skip
                served = served_times(runners, rounds=args.served_rounds)
            for r, a, b in zip(rows, rr, served):
                r["round-robin"].append(statistics.median(a))
                r["served"].append(statistics.median(b))
            print(f"rep {rep + 1}/{args.reps} timed", file=sys.stderr)
    finally:
        for runner in runners:
            runner.close()
    fits = {regime: fit_and_score(rows, regime) for regime in REGIMES}
    # As tables were built before they calibrated served: round-robin, models served.
    fits["round-robin, served"] = fit_and_score(rows, "round-robin", "served")
    if stored is not None:  # the table as built, its speed-ups against served timings
        fits["table, served"] = fit_and_score(rows, "table", "served", stored)
    result = {
        "benchmark": "calibration_regime",
        "model": args.model,
        "input_shape": list(shape),
        "table": Path(args.table).name,
        "table_fingerprint": fingerprint,
        "table_regime": table_regime,
        "pareto": args.pareto,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "lock")},
        "fits": fits,
        "rows": rows,
        "host": {"python": platform.python_version(), "torch": torch.__version__},
        "command": shlex.join(
            ["python", "bench/calibration_regime.py", *(sys.argv[1:] if argv is None else argv)]
        ),
    }
    print(f"{'fitted, timed':<20} {'kind':<28} {'n':>3} {'median':>7} {'max':>7} "
          f"{'mean':>7}  over dense")  # fmt: skip
    for regime, f in fits.items():
        for kind, e in f["speedup_errors"].items():
            print(
                f"{regime:<20} {kind:<28} {e['n']:>3} "
                f"{e['median_abs']:>7.1%} {e['max_abs']:>7.1%} {e['mean']:>+7.1%}  "
                f"{e['ratio_min']:.3f}-{e['ratio_max']:.3f}"
            )
    if args.out:
        atomic_write_json(Path(args.out), result, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
