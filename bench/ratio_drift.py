"""Does a pruned model's measured latency ratio follow its weights, or the moment it is timed?

halp-trt's pruner times its plan against the dense model at the pruning step, early in
the fine-tuning; bench/pareto.py times the fine-tuned model of the same widths at the
end. The two have differed by up to 7% on the shared development machines. Widths
equal, what differs is the weights (trained, or as at the step) and the time.

This trains a dense model (``--pretrain-epochs``), cuts it to one width fraction
(``--fraction``, largest L2 norms, ``--align``ed: bench/prune_quality.py's uniform
width), fine-tunes a copy of the cut model for ``--epochs``, and then times the untrained
and the trained copy against the dense model alternately, ``--reps`` times each (the
untrained copy first in even repetitions, the trained one in odd), the pruner's way
(:class:`halp_trt.prune.MeasuredLatency`: ONNX Runtime CPU, one thread, interleaved with
the dense model until the median's 95% interval is within 1%), under the bench lock. If
the weights decided the speed (denormal values, say), the two copies would differ
consistently; if the machine does, both move together from one measurement to the next.
The order alternates so that a machine drifting one way over the run shows as a
trained/untrained ratio that flips with the order, and a weight effect as one that keeps
its side of 1 in both orders. The summary also sets the measurements' scatter beside the
spread each one's own 95% interval implies: where the scatter is the larger, the machine
moved between measurements by more than any one of them could see, and a landing check
made at another moment cannot be tighter than that scatter.

    python bench/ratio_drift.py --model halp_trt.models:resnet18_cifar \\
        --data npz:runs/digits_hard.npz --input-shape 8,3,16,16 --fraction 0.55 \\
        --out bench/results/ratio_drift_resnet18_hard.json

With ``--table FILE --target T`` the cut is halp-trt's own plan instead, made as
bench/pareto.py's ``halp-auto-calib`` makes it (``auto`` importance on 8 minibatches of the
dense model, one knapsack on the table with the measured-latency feedback, the channels
removed before any training): the untrained copy is then the model the pruner timed at its
step, widths and weights, and its reading there (``step`` in the JSON) stands beside the
same model's readings minutes later and the fine-tuned copy's. Where bench/pareto.py's end
timing reads a plan away from the pruner's step, this tells a model that runs at another
speed after fine-tuning (the trained copy away from the untrained one) from a reading that
moved (both copies together, away from the step).
"""

from __future__ import annotations

import argparse
import copy
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = load_pareto().OneLineParser(prog="ratio_drift.py", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model spec (module:function or file:function)")
    p.add_argument("--data", default="digits", help="data spec (digits, npz:FILE, ...)")
    p.add_argument("--input-shape", required=True, help="N,C,H,W of the timing input")
    p.add_argument("--fraction", type=float, default=0.55, help="width kept, 0 < F < 1")
    p.add_argument(
        "--table", default=None, help="cut by halp-trt's plan on this latency table, not uniformly"
    )
    p.add_argument("--target", default="0.5x", help="the plan's target (with --table)")
    p.add_argument("--align", type=int, default=16, help="channel step of the widths")
    p.add_argument("--pretrain-epochs", type=int, default=1)
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning of the trained copy")
    p.add_argument("--reps", type=int, default=4, help="measurements of each copy")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lock", default=None, help="lock file held around the timing")
    p.add_argument("--out", default=None, help="JSON to write")
    return p.parse_args(argv)


def check(args: argparse.Namespace) -> tuple[tuple[int, ...], Any]:
    """The input shape and the loaded data (bench/pareto.py's checks of shape, model and
    data together). Raises BenchError (or a UserError: also where the bench lock is held
    by a flock this run runs under) on bad input."""
    import prune_quality

    from lut_builder.fileio import check_output

    prune_quality.check_lock_not_inherited(args.lock)
    if not 0 < args.fraction < 1:
        raise BenchError(f"--fraction must lie between 0 and 1, not {args.fraction}")
    for name in ("align", "epochs", "reps", "batch_size"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be at least 1")
    if args.pretrain_epochs < 0:
        raise BenchError("--pretrain-epochs must be at least 0")
    if args.table is not None:
        from halp_trt.prune.schedule import target_fraction

        if not Path(args.table).is_file():
            raise BenchError(f"--table {args.table} does not exist")
        fraction = target_fraction(args.target)
        if fraction is None or not 0 < fraction < 1:
            raise BenchError(
                f"--target must be a fraction below 1x, like 0.5x, not {args.target!r}"
            )
    if args.out:
        check_output(args.out, flag="--out")
    shape, x, data, _ = load_pareto().model_and_data(args)
    if args.table is not None:
        check_table(args, x)
    return shape, data


def check_table(args: argparse.Namespace, x: Any) -> None:
    """``--table`` is a table of this model that can price ``--target``, measured on
    ONNX Runtime (where the plan's feedback times it) or of MACs (bench/pareto.py's
    ``halp-auto-macs-calib``): a pruner set up on the untrained model raises where a
    layer is missing or the target is out of the table's reach, before any training.
    Raises BenchError or a UserError."""
    from halp_trt.prune import Pruner
    from halp_trt.specs import load_model
    from lut_builder import LatencyTable

    with LatencyTable.open(args.table) as table:
        backend = (table.fingerprint or {}).get("backend")
        if backend not in ("onnxruntime", "analytic"):
            raise BenchError(
                f"--table {args.table} was measured on {backend or 'no known backend'}; "
                "the plan's feedback times on onnxruntime (a MACs table also prices it)"
            )
        Pruner(load_model(args.model), x, table, args.target, schedule="oneshot", steps=1)


def scatter_and_claim(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """The measurements' ``scatter`` (sample standard deviation of all ratios over their
    median), their median 95% ``halfwidth_median`` and the standard deviation it implies
    (``implied_sd``, the half-width over 1.96); the scatter None below two measurements."""
    ratios = [row["ratio"] for row in rows]
    half = statistics.median(row["halfwidth"] for row in rows)
    scatter = statistics.stdev(ratios) / statistics.median(ratios) if len(ratios) > 1 else None
    return {"scatter": scatter, "halfwidth_median": half, "implied_sd": half / 1.96}


def pair_ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Trained over untrained per repetition (each pair timed back to back), and the
    medians of the pairs by which copy was timed first (None where no pair was)."""
    by = {(row["rep"], row["copy"]): row for row in rows}
    reps = sorted({row["rep"] for row in rows})
    pairs = [by[r, "trained"]["ratio"] / by[r, "untrained"]["ratio"] for r in reps]
    out: dict[str, Any] = {"per_rep": pairs, "median": statistics.median(pairs)}
    for first in ("untrained", "trained"):
        own = [p for r, p in zip(reps, pairs) if by[r, first].get("first") == first]
        out[f"{first}_first_median"] = statistics.median(own) if own else None
    return out


def plan_cut(dense: Any, data: Any, x: Any, args: argparse.Namespace) -> tuple[Any, dict]:
    """The dense model cut by halp-trt's plan as bench/pareto.py's ``halp-auto-calib``
    cuts it (:func:`pareto.halp_calibrated`: ``auto``, 8 minibatches, one knapsack on
    ``--table`` to ``--target``, measured-latency feedback), before any training: the model
    the pruner timed at its step. Returns it and the pruner's own reading of it there (its
    ratio to the dense model and the half-width of that reading's 95% interval; both None
    where the pruner set the reading aside, its timings too scattered to trust)."""
    import prune_quality

    from lut_builder import LatencyTable

    with prune_quality.bench_lock(args.lock), LatencyTable.open(args.table) as table:
        slim, facts = load_pareto().halp_calibrated(
            dense, data, x, table, args.target, "auto", batch_size=args.batch_size, feedback=True
        )
    step = {
        "ratio": facts["steps_measured_ratio"][-1],
        "halfwidth": facts["steps_measured_halfwidth"][-1],
        "importance": facts["importance"],
        "min_keep": facts["min_keep"],
    }
    return slim.eval(), step


def main(argv: list[str] | None = None) -> int:
    import prune_quality
    import torch

    from halp_trt.errors import UserError
    from halp_trt.prune import MeasuredLatency
    from halp_trt.prune.feedback import FEEDBACK_BLOCK_MS, FEEDBACK_BLOCK_RUNS
    from halp_trt.specs import example_input, load_model
    from halp_trt.train import TrainConfig, Trainer
    from lut_builder.backends.base import host_fingerprint
    from lut_builder.errors import UserError as LutUserError
    from lut_builder.fileio import atomic_write_json

    args = parse_args(argv)
    try:
        shape, data = check(args)
    except (BenchError, UserError, LutUserError, ValueError) as exc:
        print(f"ratio_drift.py: error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    t_start = time.perf_counter()

    def config(epochs: int) -> Any:
        return TrainConfig(
            epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device="cpu"
        )

    torch.manual_seed(args.seed)
    dense = load_model(args.model)
    if args.pretrain_epochs:
        Trainer(dense, data, config(args.pretrain_epochs)).fit()
    dense = dense.cpu().eval()
    x = example_input(dense, shape).cpu()
    step = None
    if args.table is not None:
        torch.manual_seed(args.seed)
        untrained, step = plan_cut(dense, data, x, args)
        print(
            f"the pruner read its plan at {step['ratio']:.4f} of the dense model "
            f"(+-{step['halfwidth']:.1%}) at its step"
            if step["ratio"] is not None
            else "the pruner set its reading of the plan aside (too scattered to trust)",
            flush=True,
        )
    else:
        untrained = prune_quality.uniform_prune(dense, x, args.fraction, args.align).eval()
    trained = copy.deepcopy(untrained).train()
    Trainer(trained, data, config(args.epochs)).fit()
    trained = trained.cpu().eval()
    copies = {"untrained": untrained, "trained": trained}
    rows: list[dict[str, Any]] = []
    with (
        prune_quality.bench_lock(args.lock),
        MeasuredLatency(dense, x, threads=1) as measure,
    ):
        for rep in range(args.reps):
            order = list(copies) if rep % 2 == 0 else list(copies)[::-1]
            for name in order:
                ratio = measure(copies[name])
                rows.append(
                    {
                        "rep": rep,
                        "copy": name,
                        "first": order[0],
                        "ratio": ratio,
                        "halfwidth": measure.halfwidth,
                        "rounds": measure.rounds_timed,
                        "at_s": time.perf_counter() - t_start,
                    }
                )
                print(f"{rep} {name:9s} {ratio:.4f} +-{measure.halfwidth:.1%}", flush=True)
    summary: dict[str, Any] = {}
    for name in copies:
        r = [row["ratio"] for row in rows if row["copy"] == name]
        summary[name] = {"median": statistics.median(r), "min": min(r), "max": max(r)}
    summary["trained_over_untrained"] = pair_ratios(rows)
    if step is not None and step["ratio"] is not None:  # each copy over the step's reading
        for name in copies:
            summary[name]["over_step"] = summary[name]["median"] / step["ratio"]
    all_r = [row["ratio"] for row in rows]
    summary["spread_of_all"] = max(all_r) / min(all_r) - 1
    summary.update(scatter_and_claim(rows))  # why: the module's docstring
    for name in copies:
        s = summary[name]
        over = f", {s['over_step']:.3f} of the step's reading" if "over_step" in s else ""
        print(f"{name:9s} median {s['median']:.4f}, range {s['min']:.4f}-{s['max']:.4f}{over}")
    pairs = summary["trained_over_untrained"]
    by_order = ", ".join(
        f"{first} first {pairs[f'{first}_first_median']:.4f}"
        for first in ("untrained", "trained")
        if pairs[f"{first}_first_median"] is not None
    )
    print(
        f"trained / untrained, back to back: median {pairs['median']:.4f} ({by_order})"
        f"; all measurements spread {summary['spread_of_all']:.1%}"
    )
    if summary["scatter"] is not None:
        print(
            f"the {len(rows)} measurements scatter {summary['scatter']:.1%} (standard "
            f"deviation over their median) where each one's 95% interval implies "
            f"{summary['implied_sd']:.1%} (median half-width {summary['halfwidth_median']:.1%})"
        )
    if args.out:
        result = {
            "benchmark": "ratio_drift",
            "command": "python bench/ratio_drift.py "
            + shlex.join(sys.argv[1:] if argv is None else argv),
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "lock")},
            "cut": "plan" if step is not None else "uniform",
            **({"step": step} if step is not None else {}),
            "widths": [
                m.out_channels for m in untrained.modules() if isinstance(m, torch.nn.Conv2d)
            ],
            "timing": "MeasuredLatency: ONNX Runtime CPU, one intra-op thread, interleaved "
            f"with the dense model in blocks of at least {FEEDBACK_BLOCK_MS:g} ms and "
            f"{FEEDBACK_BLOCK_RUNS} inferences, thread clock; the machine was shared",
            "host": {**host_fingerprint(), "torch": torch.__version__},
            "runs": rows,
            "summary": summary,
            "seconds": time.perf_counter() - t_start,
        }
        atomic_write_json(Path(args.out), result, indent=1, default=float)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
