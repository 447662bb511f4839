"""Do the bench's round-robin timing and the pruner's timing see the same speed-up?

bench/pareto.py times every model of one seed in turn with the dense one (round-robin,
:func:`prune_quality.measure_interleaved`); halp-trt's pruner timed its plan and the
dense model alone, one inference each in turn (``pair``: each after one untimed
inference, the median of 120 per-round ratios, as :class:`halp_trt.prune.MeasuredLatency`
did before it timed blocks). On one CPU the two disagreed by 7-14% for the MobileNetV2 at
0.3x and agreed within 1-2% elsewhere. A
model served in deployment runs alone, again and again; the third way here times that:
each model in a block of consecutive inferences, alternating with a block of the dense
model (``--blocks`` pairs of blocks of ``--block-runs`` inferences each; the ratio of
their medians per pair, the median over the pairs). A fourth, ``chunked``, is the
pruner's timing for several threads (:func:`lut_builder.timing.time_chunked`: chunks of
about 3 ms of back-to-back inferences, alternating, wall clock, 20 ms a model per round,
15 rounds, the median of the per-round ratios): whether it sees what ``alone`` sees. A
fifth, ``blocks``, is the pruner's feedback as it now times
(:class:`halp_trt.prune.MeasuredLatency`: one block of back-to-back inferences of each
model a round, to its precision). A sixth, ``verify``, is what ``halp-trt verify``
reports (:func:`halp_trt.verify.verify_models` at one thread, by default at its own
defaults: blocks of 100 ms, 30 rounds after 5; the inverse of its speed-up).
``ms`` and ``dense_ms`` in the rows are the round-robin's medians, for scale.

The models are the dense one and its uniform-width copies at ``--fractions`` (largest
L2 norms, ``--align``ed; untrained: bench/ratio_drift.py found that the weights do not
move the speed), as many as a bench/pareto.py seed times. Everything runs ``--reps``
times in turn, under the bench lock, ONNX Runtime CPU, one thread, thread clock.

    python bench/timing_methods.py --model halp_trt.models:mobilenetv2_cifar \\
        --input-shape 8,3,16,16 --out bench/results/timing_methods_mobilenetv2.json
"""

from __future__ import annotations

import argparse
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
METHODS = ("round-robin", "pair", "alone", "chunked", "blocks", "verify")
#: ``pair``: timed rounds (each one inference of the copy and of the dense model).
PAIR_ROUNDS = 120


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = load_pareto().OneLineParser(prog="timing_methods.py", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model spec (module:function or file:function)")
    p.add_argument("--input-shape", required=True, help="N,C,H,W of the timing input")
    p.add_argument(
        "--fractions",
        default="0.25,0.3,0.35,0.4,0.45,0.5,0.6,0.7,0.8",
        help="widths kept by the pruned copies, each 0 < F < 1",
    )
    p.add_argument("--align", type=int, default=16, help="channel step of the widths")
    p.add_argument("--reps", type=int, default=2, help="times every method runs, in turn")
    p.add_argument("--rounds", type=int, default=100, help="round-robin rounds (as pareto.py)")
    p.add_argument("--blocks", type=int, default=15, help="alone: block pairs per model")
    p.add_argument("--block-runs", type=int, default=20, help="alone: inferences per block")
    p.add_argument(
        "--verify-rounds", type=int, default=30, help="verify: timed rounds (its default)"
    )
    p.add_argument(
        "--verify-block-ms", type=int, default=100, help="verify: block per model and round"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lock", default=None, help="lock file held around every timing")
    p.add_argument("--out", default=None, help="JSON to write")
    return p.parse_args(argv)


def check(args: argparse.Namespace) -> tuple[tuple[int, ...], list[float]]:
    """The input shape and the fractions. Raises BenchError on bad input."""
    from lut_builder.fileio import check_output
    from lut_builder.specs import parse_shape

    try:
        fractions = [float(f) for f in args.fractions.split(",")]
    except ValueError:
        raise BenchError(f"--fractions {args.fractions!r}: comma-separated numbers") from None
    if args.verify_rounds < 3:
        raise BenchError("--verify-rounds must be at least 3")
    if not fractions or not all(0 < f < 1 for f in fractions):
        raise BenchError(f"--fractions {args.fractions!r}: each must lie between 0 and 1")
    for name in ("align", "reps", "rounds", "blocks", "block_runs", "verify_block_ms"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be at least 1")
    shape = parse_shape(args.input_shape)
    if len(shape) != 4:
        raise BenchError(f"--input-shape must be N,C,H,W, not {args.input_shape!r}")
    if args.out:
        check_output(args.out, flag="--out")
    return shape, fractions


def alone(dense: Any, model: Any, blocks: int, runs: int) -> float:
    """Median over ``blocks`` pairs of the ratio of medians: a block of ``runs``
    inferences of ``model``, then one of ``dense`` (each block warmed by 3 untimed)."""
    from lut_builder.timing import time_callable

    ratios = []
    for _ in range(blocks):
        m = time_callable(model, warmup=3, runs=runs, clock="thread").median_ms
        d = time_callable(dense, warmup=3, runs=runs, clock="thread").median_ms
        ratios.append(m / d)
    return statistics.median(ratios)


def pair(dense: Any, model: Any) -> float:
    """Median per-round ratio ``model`` / ``dense``, one inference of each a round, each
    after one untimed (:func:`time_interleaved` with ``warm``; 5 untimed rounds first)."""
    from lut_builder.timing import time_interleaved

    d, m = time_interleaved([dense, model], warmup=5, rounds=PAIR_ROUNDS, clock="thread", warm=True)
    return statistics.median(a / b for a, b in zip(m, d))


def chunked(dense: Any, model: Any, rounds: int = 15) -> float:
    """Median per-round ratio ``model`` / ``dense`` by :func:`time_chunked` (the
    feedback's several-thread timing: 20 ms of 3 ms chunks a model per round)."""
    from lut_builder.timing import time_chunked

    (d, m), _ = time_chunked([dense, model], warmup=2, rounds=rounds, min_block_ms=20.0)
    return statistics.median(a / b for a, b in zip(m, d))


def main(argv: list[str] | None = None) -> int:
    import prune_quality
    import torch

    from halp_trt.errors import UserError
    from halp_trt.prune import MeasuredLatency
    from halp_trt.specs import example_input, load_model
    from halp_trt.verify import verify_models
    from lut_builder.backends import make_runner
    from lut_builder.backends.base import cpu_block_size, cpu_model
    from lut_builder.errors import UserError as LutUserError
    from lut_builder.fileio import atomic_write_json

    args = parse_args(argv)
    try:
        shape, fractions = check(args)
        torch.manual_seed(args.seed)
        dense = load_model(args.model).eval()
        x = example_input(dense, shape).cpu()
    except (BenchError, UserError, LutUserError, ValueError) as exc:
        print(f"timing_methods.py: error: {exc}", file=sys.stderr)
        return 2
    if args.lock:
        prune_quality.LOCK = args.lock
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    models = {f"{f:g}": prune_quality.uniform_prune(dense, x, f, args.align) for f in fractions}
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    rows: list[dict[str, Any]] = []
    for rep in range(args.reps):
        rr = prune_quality.measure_interleaved({"dense": dense, **models}, x, args.rounds)
        with prune_quality.bench_lock():
            with MeasuredLatency(dense, x, threads=1) as measure:
                blocks = {n: measure(m) for n, m in models.items()}
            verified = {
                n: 1.0
                / verify_models(
                    dense,
                    m,
                    backend="onnxruntime",
                    input_shape=shape,
                    threads=1,
                    rounds=args.verify_rounds,
                    min_block_ms=args.verify_block_ms,
                ).speedup.median
                for n, m in models.items()
            }
            d_run = make_runner("onnxruntime", dense, x, threads=1)
            try:
                pairs, solo, chunks = {}, {}, {}
                for n, m in models.items():
                    m_run = make_runner("onnxruntime", m, x, threads=1)
                    try:
                        pairs[n] = pair(d_run, m_run)
                        solo[n] = alone(d_run, m_run, args.blocks, args.block_runs)
                        chunks[n] = chunked(d_run, m_run)
                    finally:
                        m_run.close()
            finally:
                d_run.close()
        for n in models:
            row = {
                "rep": rep,
                "fraction": float(n),
                "params": params[n],
                "ms": rr[n]["median_ms"],
                "dense_ms": rr["dense"]["median_ms"],
                "round-robin": rr[n]["ratio_to_dense"],
                "pair": pairs[n],
                "alone": solo[n],
                "chunked": chunks[n],
                "blocks": blocks[n],
                "verify": verified[n],
            }
            rows.append(row)
            print(
                f"{rep} {n:>5}  round-robin {row['round-robin']:.4f}  pair {row['pair']:.4f}  "
                f"alone {row['alone']:.4f}  chunked {row['chunked']:.4f}  "
                f"blocks {row['blocks']:.4f}  verify {row['verify']:.4f}",
                flush=True,
            )
    summary = {}
    for n in models:
        mine = [r for r in rows if r["fraction"] == float(n)]
        med = {k: statistics.median(r[k] for r in mine) for k in METHODS}
        over = {f"{k}_over_alone": med[k] / med["alone"] for k in METHODS if k != "alone"}
        summary[n] = {**med, **over}
    print(
        f"{'kept':>5}  {'round-robin':>11}  {'pair':>7}  {'alone':>7}  {'chunked':>7}  "
        f"{'blocks':>7}  {'verify':>7}  rr/alone  pair/alone  chunked/alone  blocks/alone  "
        "verify/alone"
    )
    for n, s in summary.items():
        print(
            f"{n:>5}  {s['round-robin']:11.4f}  {s['pair']:7.4f}  {s['alone']:7.4f}  "
            f"{s['chunked']:7.4f}  {s['blocks']:7.4f}  {s['verify']:7.4f}  "
            f"{s['round-robin_over_alone']:8.3f}  {s['pair_over_alone']:10.3f}  "
            f"{s['chunked_over_alone']:13.3f}  {s['blocks_over_alone']:12.3f}  "
            f"{s['verify_over_alone']:12.3f}"
        )
    if args.out:
        atomic_write_json(
            args.out,
            {
                "benchmark": "timing_methods",
                "command": "python bench/timing_methods.py "
                + shlex.join(sys.argv[1:] if argv is None else argv),
                "model": args.model,
                "input_shape": list(shape),
                "timing": "ONNX Runtime CPU, one thread, thread clock, under the bench lock",
                "host": {
                    "cpu": cpu_model(),
                    "cpu_block": cpu_block_size(),
                    "python": platform.python_version(),
                },
                "seconds": time.perf_counter() - t_start,
                "rows": rows,
                "summary": summary,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
