"""How steady a whole model's latency is in a table's unit: the level a calibration fits.

A table predicts whole-model latency in its unit (its reference workload's fastest run);
its calibration (``scale * layers + overhead``) is fitted on the model and its 3/4- and
1/2-width copies timed during the build, each run divided by the reference runs around
it. If that ratio is the same whenever it is measured, a later measurement of the same
models finds the level the calibration found. This script measures how far it is from
that, in one process, with the table's own runners and reference:

- ``phases`` consecutive measurements of the three calibration models (interleaved,
  ``--rounds`` rounds each, as :func:`lut_builder.measure_end_to_end` times them), and
  for each the median reference run over the table's unit (the machine's state: 1.0 is
  the fastest run the table saw);
- between phases, alternately ``--gap`` seconds of per-layer measuring (what a build
  does between its calibration blocks: the table's own planned points, measured again
  and discarded) and ``--gap`` seconds of sleep, so a process-state effect of the build
  would show as a difference between the two kinds of phase;
- a paired check of the measuring context: in the same rounds, the three models timed
  among themselves (as the calibration times them) and among the ``--samples`` random
  pruned models of ``bench/lut_fidelity.py`` (as the fidelity run times them).

    flock /tmp/halp-trt-bench.lock python bench/lut_level.py \\
        --model halp_trt.models:resnet56 --input-shape 1,3,32,32 \\
        --table bench/results/lut_fidelity_resnet56_onnxruntime_int8.sqlite

Writes ``--out`` (JSON) and prints a summary. Nothing is written to the table.
"""

from __future__ import annotations

import argparse
import copy
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--input-shape", required=True)
    p.add_argument("--table", required=True, help="a table measured against a reference")
    p.add_argument("--phases", type=int, default=12)
    p.add_argument("--rounds", type=int, default=60, help="rounds per phase")
    p.add_argument("--gap", type=float, default=6.0, help="seconds between phases")
    p.add_argument("--samples", type=int, default=20, help="random pruned models (context)")
    p.add_argument("--paired-rounds", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSON path")
    args = p.parse_args(argv)
    for flag, value, least in (
        ("--phases", args.phases, 3), ("--rounds", args.rounds, 1), ("--gap", args.gap, 0),
        ("--samples", args.samples, 0), ("--paired-rounds", args.paired_rounds, 1),
    ):  # fmt: skip
        if value < least:
            p.error(f"{flag} must be at least {least}, not {value}")

    from halp_trt.graph import ChannelGraph, calibration_variants
    from lut_builder import LatencyTable
    from lut_builder.backends import get_backend, make_reference, make_runner
    from lut_builder.errors import UserError
    from lut_builder.fileio import atomic_write_json, check_output
    from lut_builder.specs import example_input, load_model, parse_shape
    from lut_builder.timing import get_clock, time_relative

    try:
        check_output(args.out, kind="file", flag="--out")
        table = LatencyTable.open(args.table)
        if table.reference is None:
            raise UserError(f"{args.table!r} was not measured against a reference workload")
        torch.manual_seed(args.seed)
        model = load_model(args.model)
        x = example_input(model, parse_shape(args.input_shape))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fp = table.fingerprint
    precision, threads = fp.get("precision", "fp32"), fp["options"]["threads"]
    ropts = {"threads": threads, **({"precision": precision} if precision != "fp32" else {})}
    backend = get_backend(fp["backend"], alignment=table.alignment, **ropts)
    unit = table.unit_ms
    backend.reference_ms = unit
    models = [model, *calibration_variants(model, x, table.step)]
    names = ["unpruned", "uniform_0.75", "uniform_0.5"][: len(models)]
    runners = [make_runner(fp["backend"], m, x, **ropts) for m in models]
    reference = make_reference(table.reference["kind"])
    clock = runners[0].clock
    plan = table.planned()
    done = [0]

    def measure_layers(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            sig, c_in, c_out = plan[done[0] % len(plan)]
            backend.measure(sig, c_in, c_out)
            done[0] += 1

    t0 = time.perf_counter()
    phases = []
    for k in range(args.phases):
        kind = "fresh" if k == 0 else ("after_layers" if k % 2 else "after_sleep")
        if kind == "after_layers":
            measure_layers(args.gap)
        elif kind == "after_sleep":
            time.sleep(args.gap)
        rel = time_relative(
            runners, reference, warmup=3 if k == 0 else 0, rounds=args.rounds, clock=clock,
            warm=True,
        )  # fmt: skip
        refs = [t / q for t, q in zip(rel.time_ms[0], rel.ratio[0]) if q > 0]
        phases.append(
            {
                "t_s": round(time.perf_counter() - t0, 1),
                "kind": kind,
                "state": statistics.median(refs) / unit,
                "ms": [statistics.median(r) * unit for r in rel.ratio],
            }
        )
        print(
            f"{phases[-1]['t_s']:6.1f} s {kind:12s} state {phases[-1]['state']:.2f}  "
            + "  ".join(f"{n} {v:.3f}" for n, v in zip(names, phases[-1]["ms"])),
            flush=True,
        )

    # The measuring context, paired round by round.
    rng = np.random.default_rng(args.seed)
    graph0 = ChannelGraph(copy.deepcopy(model), x)
    step = table.step
    pruned = []
    for _ in range(args.samples):
        keep = {}
        for g in graph0.prunable:
            lo = max(step, int(np.ceil(0.25 * g.size / step)) * step)
            k = int(rng.choice(sorted(set(range(lo, g.size + 1, step)) | {g.size})))
            keep[g.id] = sorted(rng.choice(g.size, size=k, replace=False).tolist())
        m = copy.deepcopy(model)
        ChannelGraph(m, x).remove(keep)
        pruned.append(make_runner(fp["backend"], m.eval(), x, **ropts))
    clock_fn = get_clock(clock)

    def timed(fn: object) -> float:
        s = clock_fn()
        fn()  # type: ignore[operator]
        return clock_fn() - s

    def sequence(rs: list) -> list[float]:
        reference()
        before, out = timed(reference), []
        for r in rs:
            r()
            t = timed(r)
            reference()
            after = timed(reference)
            out.append(t / ((before + after) / 2))
            before = after
        return out

    among3, among_all = [], []
    for k in range(args.paired_rounds):
        order = (False, True) if k % 2 else (True, False)
        for big in order:
            if big:
                among_all.append(sequence(runners + pruned)[: len(runners)])
            else:
                among3.append(sequence(runners))
    for r in runners + pruned:
        r.close()

    def summary(i: int) -> dict:
        meds = [ph["ms"][i] for ph in phases]
        mid = statistics.median(meds)
        lay = [ph["ms"][i] for ph in phases if ph["kind"] == "after_layers"]
        slp = [ph["ms"][i] for ph in phases if ph["kind"] == "after_sleep"]
        return {
            "model": names[i],
            "phase_median_ms": mid,
            "phase_cv": statistics.pstdev(meds) / statistics.mean(meds),
            "phase_range": (max(meds) - min(meds)) / mid,
            "after_layers_over_after_sleep": (
                statistics.median(lay) / statistics.median(slp) if lay and slp else None
            ),
            "state_correlation": float(np.corrcoef([ph["state"] for ph in phases], meds)[0, 1]),
            "among_all_over_among3": statistics.median(
                a[i] / b[i] for a, b in zip(among_all, among3)
            ),
        }

    result = {
        "model": args.model,
        "input_shape": list(x.shape),
        "table": args.table,
        "precision": precision,
        "threads": threads,
        "clock": clock,
        "unit_ms": unit,
        "reference": table.reference["kind"],
        "phases": phases,
        "rounds_per_phase": args.rounds,
        "gap_s": args.gap,
        "layers_measured_between": done[0],
        "paired_rounds": args.paired_rounds,
        "context_models": len(runners) + len(pruned),
        "summary": [summary(i) for i in range(len(runners))],
        "host": {"python": platform.python_version(), "torch": torch.__version__},
        "command": shlex.join(
            ["python", "bench/lut_level.py", *(sys.argv[1:] if argv is None else argv)]
        ),
    }
    table.close()
    for s in result["summary"]:
        print(
            f"{s['model']}: phases {s['phase_median_ms']:.3f} ms, cv {100 * s['phase_cv']:.1f}%, "
            f"range {100 * s['phase_range']:.1f}%, corr. with state {s['state_correlation']:+.2f}; "
            f"after layers / after sleep {s['after_layers_over_after_sleep']:.3f}; "
            f"among {result['context_models']} / among {len(runners)} "
            f"{s['among_all_over_among3']:.3f}"
        )
    atomic_write_json(Path(args.out), result, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
