"""Fidelity of the network latency model: predicted vs measured end-to-end latency.

For a model and backend: build (or reuse) the latency table, draw random channel
assignments at the grid step (every prunable group keeps a random multiple of the step,
random channels), build each as a real pruned model (``ChannelGraph.remove``), predict its
latency from the table (sum of layer lookups + the overhead term calibrated once on the
unpruned model) and measure it end to end on the same backend. All models are timed
interleaved in one run, so machine noise hits them alike, and as the table's calibration
timed them (``--timing table``, the default: served, one block of back-to-back inferences
of each model in turn, for a table calibrated so; round-robin, one inference of each in
turn, for one calibrated before the build timed served), or as ``--timing`` says.

Three calibrations of the network latency model are reported:

- ``table``: stored in the table at build time (what a user of the table gets; affine,
  ``scale * layers + overhead``, fitted on the model and its 3/4- and 1/2-width copies
  timed in blocks spread over the build, unless the table was built with
  ``--calibration additive``);
- ``run additive``: ``layers + overhead`` with the overhead from the unpruned model
  measured in this same interleaved run (the latency model as HALP states it);
- ``run affine``: the affine map fitted on the unpruned model and the two uniform copies
  measured in this same run (what the table's model can do without clock drift between
  build and use).

The uniform copies are timed with the samples but are not samples: errors are over the
random assignments only.

Besides each prediction's error in milliseconds, the error of the table's predicted
speed-up is reported (``errors_table_speedup``: the predicted latency of each sample
over that of the unpruned model, against the same ratio measured in this run). It is
what pruning to a fraction of the unpruned model depends on, and a change of the
machine's speed between the table's calibration and this run cancels out of it: on a
shared 2-core machine, a MobileNetV2's latency in the table's unit moved by up to 11%
between consecutive 2-second measurements. Every speed-up divides by the same one
measurement of the unpruned model, so that measurement's noise shifts all of a run's
speed-up errors alike: over five runs of one MobileNetV2 table (Xeon) that shift was
-2.4% to +2.5% at 30 served rounds and -0.6% and +1.0% at 120, the default since;
``bench/lut_spread.py --same-table`` reads several runs of one table against their mean.

The level of the run against the table's calibration is recorded too
(``level_vs_calibration``): for the unpruned model and each uniform copy, its latency
measured in this run over the one the build's calibration measured, and the
calibration's own measurement (:class:`~lut_builder.end_to_end.BlockSampler`, its blocks
in a row) repeated right before and right after this run. A shift common to the three
is the machine's state having moved since the build, not the latency model's shape.

The draw is the one `lut-builder build` checks its latency model with
(`halp_trt.graph.random_keep`): with seed 0 the check's copies are the first samples, and
the JSON sets what the build's check said of them (``table_check``) beside their
speed-ups' errors measured here (``errors_table_speedup_check_copies``).

A table built with probes (:func:`lut_builder.table.grid.fill`) is priced a second time
filled with its lines whatever its probes chose, with the same calibration
(``errors_table_speedup_lines``): the two fills on the same measured models.

``--remeasure`` separates the table's points from the way they add up. After the whole
models are timed, every layer configuration they use (each layer's signature and
channel counts, measured or filled in the table) is measured again on the same backend,
in the table's unit, with the table's timing loop where it records one (else the
backend's defaults; ``remeasure_loop`` says which), and each model's layers are summed
both ways:
``errors_points_speedup`` is how far the table's layer sums stand from the fresh ones as
a fraction of the unpruned model's (what a speed-up sees; a level common to all points,
the machine's state since the build, cancels), ``errors_fresh_speedup`` the speed-up
error of the table's calibration applied to the fresh sums. Where the second is as large
as ``errors_table_speedup``, what the table misses is how the layers add up in the
network, not its points. ``remeasured`` lists every configuration with its table and
fresh value (and whether the table measured it or filled it), ``remeasured_by_signature``
the fresh-over-table ratios per signature with its share of the unpruned model's layers.
Every row also carries ``output_elements`` (the elements its convolutions write, summed)
and the JSON ``residual_vs_elements``: across the samples, the correlation of the
speed-up error with the elements written per millisecond of the layer sum (data the
network moves between its layers, which a scale on the layer sum does not see).

Run under the benchmark lock, e.g.:

    flock /tmp/halp-trt-bench.lock .venv/bin/python bench/lut_fidelity.py \\
        --model halp_trt.models:resnet56 --input-shape 1,3,32,32

Prints a table and writes bench/results/lut_fidelity_<model>_<backend>.json.
"""

from __future__ import annotations

import argparse
import copy
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

#: The whole-model timing loop of the calibration this bench fits (``--recalibrate``) and
#: times before and after its run: ``lut-builder build``'s (20 warm-up rounds, 2 s in all
#: over its blocks).
CALIBRATION_LOOP: dict[str, Any] = {"warmup": 20, "min_time_s": 2.0}
#: The per-layer timing loop of ``--remeasure`` over the table's own (which a table
#: records since builds record it; before, the backend's defaults, those of every table
#: here, are used). Empty: the table's.
REMEASURE_LOOP: dict[str, Any] = {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="halp_trt.models:resnet56")
    p.add_argument("--input-shape", default="1,3,32,32")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--table", default=None, help="reuse this table (default: build one)")
    p.add_argument("--strategy", default="sparse", choices=("sparse", "full"))
    p.add_argument("--step", type=int, default=None, help="grid step (default: alignment)")
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--rounds", type=int, default=300, help="round-robin timing rounds")
    p.add_argument(
        "--timing", default="table", choices=("table", "served", "round-robin"),
        help="how whole models are timed: as the table's calibration timed them (default), "
        "served (blocks of back-to-back inferences) or round-robin (one inference each)",
    )  # fmt: skip
    p.add_argument(
        "--served-rounds", type=int, default=120,
        help="served timing rounds (every speed-up divides by the unpruned model's median: "
        "its noise shifts all of them alike)",
    )  # fmt: skip
    p.add_argument("--min-keep", type=float, default=0.25, help="smallest kept fraction")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default=None, help="onnxruntime backend method override")
    p.add_argument(
        "--gate", type=float, default=None,
        help="onnxruntime backend gate: count only runs made while the reference ran "
        "within GATE times its fastest run (the table, its calibration and this run)",
    )  # fmt: skip
    p.add_argument(
        "--precision", default="fp32",
        help="table and runners: fp32; int8 (Q/DQ models); torch: fp16 or bf16 too",
    )  # fmt: skip
    p.add_argument(
        "--device", default=None,
        help="torch backend: cpu or cuda[:N], for the table and the whole models alike",
    )  # fmt: skip
    p.add_argument(
        "--calibration", default="affine", choices=("affine", "additive"),
        help="the table's calibration when it is built (or recalibrated)",
    )  # fmt: skip
    p.add_argument(
        "--recalibrate", action="store_true",
        help="with --table: calibrate the given table again with the current model",
    )  # fmt: skip
    p.add_argument(
        "--remeasure", action="store_true",
        help="measure every layer configuration of the timed models again on the backend "
        "and set the table's layer sums beside the fresh ones (see the module notes)",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="JSON path (default under bench/results)")
    args = p.parse_args(argv)

    from halp_trt.graph import (
        CALIBRATION_FRACTIONS,
        CHECK_MIN_KEEP,
        ChannelGraph,
        calibration_variants,
        check_variants,
        random_keep,
    )
    from lut_builder import (
        LatencyTable,
        calibrate_overhead,
        fit_calibration,
        measure_end_to_end,
        predict_latency,
    )
    from lut_builder.backends import get_backend, make_runner
    from lut_builder.build import build_table
    from lut_builder.end_to_end import BlockSampler, stored_regime
    from lut_builder.latency_model import CHECK_COPIES
    from lut_builder.signatures import model_layers
    from lut_builder.specs import example_input, load_model, parse_shape

    torch.manual_seed(args.seed)
    shape = parse_shape(args.input_shape)
    model = load_model(args.model)
    x = example_input(model, shape)
    tag = re.sub(r"[^A-Za-z0-9]+", "_", args.model.split(":")[-1]).strip("_")
    suffix = f"_{args.precision}" if args.precision != "fp32" else ""
    out_json = (
        Path(args.out)
        if args.out
        else ROOT / "bench/results" / (f"lut_fidelity_{tag}_{args.backend}{suffix}.json")
    )
    # Whole models run at the table's precision (an INT8 table: INT8 Q/DQ models).
    ropts = {"precision": args.precision} if args.precision != "fp32" else {}
    if args.device is not None:
        ropts["device"] = args.device

    # How a table built or recalibrated here times its whole models: as --timing says,
    # served for "table" (the build's default).
    build_regime = "served" if args.timing == "table" else args.timing

    def runner(m: torch.nn.Module) -> object:
        return make_runner(args.backend, m, x, **ropts)

    def calibrate() -> None:
        """The network latency model, as `lut-builder build --calibration` fits it."""
        with LatencyTable.open(table_path, writable=True) as table:
            affine = args.calibration == "affine"
            variants = calibration_variants(model, x, table.step) if affine else []
            checks = check_variants(model, x, table.step, CHECK_COPIES)
            calibrate_overhead(
                table, runner, model, x, variants=variants, checks=checks,
                regime=build_regime, **CALIBRATION_LOOP,
            )  # fmt: skip

    # 1. The table: built here unless given (build time and points/s recorded).
    build = None
    if args.table is None:
        opts = {"method": args.method} if args.method else {}
        if args.gate is not None:
            opts["gate"] = args.gate
        opts.update(ropts)
        backend = get_backend(args.backend, **opts)
        table_path = out_json.with_suffix(".sqlite")  # git-ignored
        for suffix in ("", "-wal", "-shm"):
            Path(f"{table_path}{suffix}").unlink(missing_ok=True)
        t0 = time.perf_counter()
        # Calibrated by the build itself, as `lut-builder build` does: its whole-model
        # runs spread over the time the points are measured.
        res = build_table(
            table_path, model, x, backend, step=args.step, strategy=args.strategy,
            info={"model": args.model, "input_shape": list(shape)},
            calibration=args.calibration, variants=calibration_variants,
            check_variants=check_variants, runner_options=ropts, regime=build_regime,
        )  # fmt: skip
        measure_s = res.seconds
        build = {
            "points": res.measured,
            "measure_seconds": round(measure_s, 2),
            "total_seconds_with_calibration": round(time.perf_counter() - t0, 2),
            "points_per_s": round(res.points_per_s, 3),
            "strategy": args.strategy,
            "fingerprint_options": backend.fingerprint().get("options"),
        }
        print(
            f"table: {res.measured} points in {measure_s:.1f} s "
            f"({res.points_per_s:.2f} points/s), strategy {args.strategy}"
        )
    else:
        table_path = Path(args.table)
        # Checked before --recalibrate writes into it: a table of another precision or
        # device is refused as it was given.
        with LatencyTable.open(table_path) as given:
            fp = given.fingerprint
        on_gpu = str(args.device or "cpu").startswith("cuda")
        if fp.get("precision", args.precision) != args.precision or (
            args.backend == "torch" and str(fp.get("device", "cpu")).startswith("cpu") == on_gpu
        ):
            print(
                f"lut_fidelity.py: error: {table_path} was measured at {fp.get('precision')} "
                f"on {fp.get('device')}: give the --precision and --device it was measured at",
                file=sys.stderr,
            )
            return 2
        if args.recalibrate:
            calibrate()
    table = LatencyTable.open(table_path)
    step = args.step or table.step
    # --remeasure: a measurer of the table's own kind (refused, before anything is timed,
    # where this backend would not measure what the table's points measured).
    measurer = remeasure_loop = None
    if args.remeasure:
        measurer, why = table_measurer(
            table, args.backend, get_backend, {**REMEASURE_LOOP, **ropts}
        )
        if measurer is None:
            table.close()
            print(f"lut_fidelity.py: error: --remeasure: {why}", file=sys.stderr)
            return 2
        source = (
            "the table"
            if table.timing_loop
            else "the backend's defaults (the table records no timing loop)"
        )
        if REMEASURE_LOOP:
            source = f"{', '.join(sorted(REMEASURE_LOOP))} set here, the rest from {source}"
        remeasure_loop = {"loop": measurer.timing_loop(), "from": source}
        print(f"--remeasure times each point with {remeasure_loop['loop']}: {source}", flush=True)

    # 2. Random assignments at the grid step, each a really pruned model.
    #    The draw of `lut-builder build`'s check (`halp_trt.graph.check_variants`): with
    #    the same seed its copies are the first samples here.
    rng = np.random.default_rng(args.seed)
    models, assignments = [("unpruned", model)], []
    uniform = calibration_variants(model, x, table.step)
    models += [(f"uniform_{f:g}", m) for f, m in zip(CALIBRATION_FRACTIONS, uniform)]
    n_ref = len(models)  # the unpruned model and its uniform copies: not samples
    for s in range(args.samples):
        m = copy.deepcopy(model)
        graph = ChannelGraph(m, x)
        keep = random_keep(graph, rng, step, args.min_keep)
        graph.remove(keep)
        models.append((f"pruned_{s:02d}", m.eval()))
        assignments.append({str(g): len(v) for g, v in keep.items()})

    # 3. Predictions: sum of lookups (the overhead is added below).
    shapes = [
        [(i.signature, i.c_in, i.c_out) for i in model_layers(m, x).values()] for _, m in models
    ]
    sums = [predict_latency(table, layers, overhead=False) for layers in shapes]

    # 4. End-to-end, all models interleaved round by round, in the table's unit (each
    #    run against the table's reference workload when it has one).
    runners = [runner(m) for _, m in models]
    clock = runners[0].clock

    table_regime = stored_regime(table.overhead)
    regime = table_regime if args.timing == "table" else args.timing
    rounds = args.served_rounds if regime == "served" else args.rounds

    def calibration_now() -> list[float]:
        """The calibration models timed now as the build's calibration times them (its
        blocks, in a row): the calibration's own measurement, at this run's time."""
        sampler = BlockSampler(table, runners[:n_ref], regime=regime, **CALIBRATION_LOOP)
        return sampler.finish().medians()

    cal_before = calibration_now()
    t0 = time.perf_counter()
    meas = measure_end_to_end(table, runners, warmup=5, runs=rounds, min_time_s=None, regime=regime)
    e2e_s = time.perf_counter() - t0
    cal_after = calibration_now()
    for r in runners:
        r.close()

    table_over, table_scale = table.overhead_ms or 0.0, table.scale
    run_over = meas[0].median_ms - sums[0]
    run_fit = fit_calibration([(sums[i], meas[i].median_ms) for i in range(n_ref)])
    rows = []
    pred_t0 = table_scale * sums[0] + table_over
    for (name, _), s, t in zip(models, sums, meas):
        pred_t, pred_r, pred_a = table_scale * s + table_over, s + run_over, run_fit.predict(s)
        rows.append(
            {
                "model": name,
                "sample": len(rows) >= n_ref,
                "measured_ms": t.median_ms,
                "measured_spread": t.spread,
                "layers_ms": s,
                "pred_table_ms": pred_t,
                "pred_run_ms": pred_r,
                "pred_run_affine_ms": pred_a,
                "err_table": (pred_t - t.median_ms) / t.median_ms,
                "err_run": (pred_r - t.median_ms) / t.median_ms,
                "err_run_affine": (pred_a - t.median_ms) / t.median_ms,
                # Predicted over measured fraction of the unpruned model's latency.
                "err_table_speedup": (pred_t / pred_t0) / (t.median_ms / meas[0].median_ms) - 1,
                "speedup": meas[0].median_ms / t.median_ms,
            }
        )
    # The table's own value of every configuration (its fill as it chose), for --remeasure.
    configs = sorted({p for layers in shapes for p in layers}, key=lambda p: (p[0].key(), p[1:]))
    in_table, table_values = set(), {}
    if measurer is not None:
        in_table = {(sig, q.c_in, q.c_out) for sig in table.signatures() for q in table.points(sig)}
        table_values = {p: table.lookup(*p) for p in configs}
    # A table whose grids have probes, priced again filled with its lines whatever the
    # probes chose (as tables built before probes were), with the same calibration: the
    # two fills on the same measured models.
    if any(table.grid(sig).probes for sig in table.signatures()):
        table.use_lines()
        for row, layers in zip(rows, shapes):
            s = predict_latency(table, layers, overhead=False)
            row["pred_table_lines_ms"] = table_scale * s + table_over
        lines0 = rows[0]["pred_table_lines_ms"]
        for row in rows:
            row["err_table_speedup_lines"] = (row["pred_table_lines_ms"] / lines0) / (
                row["measured_ms"] / rows[0]["measured_ms"]
            ) - 1
    elements = [output_elements(layers) for layers in shapes]
    for row, n in zip(rows, elements):
        row["output_elements"] = n
    remeasured_points = remeasured = by_signature = None
    if measurer is not None:
        remeasured_points = len(configs)
        fresh_points = remeasure(measurer, configs, table.unit_ms)
        measurer.close()
        fresh = [sum(fresh_points[p] for p in layers) for layers in shapes]
        labels = signature_labels({p[0] for p in configs})
        remeasured = [
            {"signature": labels[p[0]], "c_in": p[1], "c_out": p[2],
             "table_ms": table_values[p], "fresh_ms": fresh_points[p],
             "measured_in_table": p in in_table}
            for p in configs
        ]  # fmt: skip
        by_signature = signature_summary(
            configs, in_table, table_values, fresh_points, shapes[0], labels
        )
        fresh0, meas0 = fresh[0], rows[0]["measured_ms"]
        pred_f0 = table_scale * fresh0 + table_over
        for row, f in zip(rows, fresh):
            row["layers_fresh_ms"] = f
            row["err_points_speedup"] = (row["layers_ms"] / rows[0]["layers_ms"]) / (f / fresh0) - 1
            row["err_fresh_speedup"] = ((table_scale * f + table_over) / pred_f0) / (
                row["measured_ms"] / meas0
            ) - 1
    pruned = [r for r in rows if r["sample"]]
    # The level of this run against the table's calibration: each calibration model's
    # latency measured here over the one the calibration measured (a shift common to
    # all of them is the machine's state, not the latency model's shape).
    cal_points = (table.overhead or {}).get("points") or []
    level_shift = [
        {"model": name, "calibrated_ms": p["measured_ms"], "measured_ms": t.median_ms,
         "ratio": t.median_ms / p["measured_ms"],
         "calibration_before_run_ms": before, "calibration_after_run_ms": after}
        for (name, _), p, t, before, after in zip(
            models[:n_ref], cal_points, meas, cal_before, cal_after
        )
    ]  # fmt: skip

    def stats(key: str, rows: list[dict] | None = None) -> dict[str, float]:
        errs = [abs(r[key]) for r in (pruned if rows is None else rows)]
        return {"median_abs": statistics.median(errs), "max_abs": max(errs)}

    # The build's check drew its copies as the first samples here (same draw and seed):
    # their speed-ups' errors now, against what the check said of them then.
    check = (table.overhead or {}).get("check")
    same = (
        pruned[: check["copies"]]
        if check and args.seed == 0 and args.min_keep == CHECK_MIN_KEEP and step == table.step
        else []
    )

    result = {
        "model": args.model,
        "input_shape": list(shape),
        "backend": args.backend,
        "precision": args.precision,
        "device": args.device,
        "table": str(
            table_path.relative_to(ROOT) if table_path.is_relative_to(ROOT) else table_path
        ),
        "table_fingerprint": table.fingerprint,
        "table_overhead_ms": table_over,
        "table_scale": table_scale,
        "table_calibration": (table.overhead or {}).get("model", "additive"),
        # The latency model's own check at the build (random-width copies drawn as the
        # first samples here, timed then with the calibration's blocks), if it has one.
        "table_check": check,
        "errors_table_speedup_check_copies": stats("err_table_speedup", same) if same else None,
        "run_overhead_ms": run_over,
        "run_affine": {
            "scale": run_fit.scale,
            "overhead_ms": run_fit.overhead_ms,
            "kind": run_fit.kind,
            "note": run_fit.note,
        },
        "step": step,
        "samples": args.samples,
        "rounds": rounds,
        "timing": regime,
        "table_calibration_timing": table_regime,
        "clock": clock,
        "normalized_by_reference": table.reference,
        "seed": args.seed,
        "e2e_seconds": round(e2e_s, 1),
        "build": build,
        "errors_table_overhead": stats("err_table"),
        "errors_run_overhead": stats("err_run"),
        "errors_run_affine": stats("err_run_affine"),
        "errors_table_speedup": stats("err_table_speedup"),
        "errors_table_speedup_lines": (
            stats("err_table_speedup_lines") if "err_table_speedup_lines" in rows[0] else None
        ),
        "errors_points_speedup": (
            stats("err_points_speedup") if "err_points_speedup" in rows[0] else None
        ),
        "errors_fresh_speedup": (
            stats("err_fresh_speedup") if "err_fresh_speedup" in rows[0] else None
        ),
        "remeasured_points": remeasured_points,
        # The per-point timing loop of the fresh measurements, and where it came from.
        "remeasure_loop": remeasure_loop,
        # Per signature: fresh over table values of its configurations (median, p10, p90),
        # and its share of the unpruned model's layer sum; then every configuration.
        "remeasured_by_signature": by_signature,
        "remeasured": remeasured,
        "residual_vs_elements": residual_vs_elements(pruned),
        "level_vs_calibration": level_shift,
        "calibration_block_medians_ms": (table.overhead or {}).get("block_medians_ms"),
        "targets": {"median_abs": 0.05, "max_abs": 0.10},
        "rows": rows,
        "assignments": assignments,
        "host": {"python": platform.python_version(), "torch": torch.__version__},
        "command": shlex.join(
            ["python", "bench/lut_fidelity.py", *(sys.argv[1:] if argv is None else argv)]
        ),
    }
    table.close()
    _print(result)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    from lut_builder.fileio import atomic_write_json

    atomic_write_json(out_json, result, indent=2)
    print(f"wrote {out_json.relative_to(ROOT) if out_json.is_relative_to(ROOT) else out_json}")
    return 0


def table_measurer(
    table: object, backend: str, get_backend: object, options: dict
) -> tuple[object, str]:
    """A per-layer measurer that measures what ``table``'s points measured: ``backend``
    built with ``options`` (the run's precision and device, a timing loop), the
    table's measuring options (those its constructor takes) and its timing loop where it
    records one (:attr:`LatencyTable.timing_loop`; ``options`` first), refused unless its
    fingerprint's options and precision are the table's. Returns ``(measurer, "")`` or
    ``(None, why)``."""
    from lut_builder.backends import backend_options

    fp = table.fingerprint
    if fp.get("backend") != backend:
        return None, f"{table.path} was measured on {fp.get('backend')}, not {backend}"
    # The table's own timing loop where it records one; ``options`` may override it.
    options = {**(getattr(table, "timing_loop", None) or {}), **options}
    try:
        accepted = backend_options(backend)
        stored = {k: v for k, v in (fp.get("options") or {}).items() if k in accepted}
        measurer = get_backend(backend, **{**stored, **options})
    except Exception as exc:  # noqa: BLE001 - one line for any refusal
        return None, f"cannot measure as {table.path} was measured: {exc}"
    mine = measurer.fingerprint()
    if mine.get("options") != fp.get("options") or mine.get("precision") != fp.get("precision"):
        measurer.close()
        return None, (
            f"this {backend} measures with {mine.get('options')} at {mine.get('precision')}, "
            f"{table.path} was measured with {fp.get('options')} at {fp.get('precision')}"
        )
    return measurer, ""


def remeasure(measurer: object, configs: list[tuple], unit_ms: float) -> dict[tuple, float]:
    """Fresh measurements of layer configurations ``(signature, c_in, c_out)``, each once,
    in a shuffled order (so drift spreads over the models that use them), in a table's
    unit where the measurer normalises by a reference workload."""
    import random

    if getattr(measurer, "reference_kind", None) is not None:
        measurer.measure_reference()
        measurer.reference_ms = unit_ms  # ratios to the reference, in the table's unit
    todo = list(configs)
    random.Random(0).shuffle(todo)
    fresh: dict[tuple, float] = {}
    t0 = time.perf_counter()
    for k, point in enumerate(todo, 1):
        fresh[point] = measurer.measure(*point).median_ms
        if k % 50 == 0 or k == len(todo):
            print(
                f"remeasured {k}/{len(todo)} points ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    return fresh


def signature_summary(
    configs: list[tuple],
    in_table: set,
    table_values: dict,
    fresh_points: dict,
    dense: list[tuple],
    labels: dict,
) -> list[dict]:
    """Per signature (largest share of the unpruned model's layer sum, ``dense``, first):
    how its configurations measured again against the table (fresh / table: median, p10,
    p90 over all of them, and the median over those the table measured)."""
    dense_ms = sum(table_values[p] for p in dense)
    share: dict[Any, float] = {}
    for p in dense:
        share[p[0]] = share.get(p[0], 0.0) + table_values[p] / dense_ms
    by_sig: dict[Any, list[tuple]] = {}
    for p in configs:
        by_sig.setdefault(p[0], []).append(p)
    sigs = sorted(by_sig, key=lambda g: (-share.get(g, 0.0), g.key()))
    out = []
    for sig in sigs:
        mine = by_sig[sig]
        ratios = np.array([fresh_points[p] / table_values[p] for p in mine])
        measured = [fresh_points[p] / table_values[p] for p in mine if p in in_table]
        out.append(
            {
                "signature": labels[sig],
                "share_of_unpruned": share.get(sig, 0.0),
                "configurations": len(mine),
                "measured_in_table": len(measured),
                "fresh_over_table": {
                    "median": float(np.median(ratios)),
                    "p10": float(np.percentile(ratios, 10)),
                    "p90": float(np.percentile(ratios, 90)),
                },
                "fresh_over_table_measured": float(np.median(measured)) if measured else None,
            }
        )
    return out


def signature_labels(sigs: set) -> dict:
    """Each signature's short label (``LayerSignature.short``), numbered where two
    signatures would share one (they differ in what the label leaves out)."""
    ordered = sorted(sigs, key=lambda g: g.key())
    shorts = [g.short() for g in ordered]
    return {
        g: label if shorts.count(label) == 1 else f"{label} [{k}]"
        for k, (g, label) in enumerate(zip(ordered, shorts))
    }


def output_elements(layers: list[tuple]) -> int:
    """Elements the convolutions (and linear layers) of a model write, summed: each
    layer's batch x output channels x output pixels, from its ``(signature, c_in,
    c_out)``."""
    return sum(sig.batch * c_out * sig.out_hw[0] * sig.out_hw[1] for sig, _, c_out in layers)


def residual_vs_elements(samples: list[dict]) -> float | None:
    """Across the samples, the correlation of the table's speed-up error with the
    elements written per millisecond of the layer sum (None with fewer than 3)."""
    if len(samples) < 3:
        return None
    err = np.array([r["err_table_speedup"] for r in samples])
    density = np.array([r["output_elements"] / r["layers_ms"] for r in samples])
    if err.std() == 0 or density.std() == 0:
        return None
    return float(np.corrcoef(err, density)[0, 1])


def _print(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    timing = r.get("timing", "round-robin")
    t = Table(
        title=f"{r['model']} {r['input_shape']} on {r['backend']} (clock: {r['clock']}, "
        f"timed {timing})"
    )
    for c in (
        "model",
        "speed-up",
        "measured ms",
        "spread",
        "predicted ms",
        "error",
        "err (run add.)",
        "err (run aff.)",
    ):
        t.add_column(c, justify="right")
    for row in r["rows"]:
        t.add_row(
            row["model"],
            f"{row['speedup']:.2f}x",
            f"{row['measured_ms']:.3f}",
            f"{100 * row['measured_spread']:.0f}%",
            f"{row['pred_table_ms']:.3f}",
            f"{100 * row['err_table']:+.1f}%",
            f"{100 * row['err_run']:+.1f}%",
            f"{100 * row['err_run_affine']:+.1f}%",
        )
    con = Console()
    con.print(t)
    for s in r["level_vs_calibration"]:
        cal = s["calibrated_ms"]
        con.print(
            f"{s['model']}: measured here / by the table's calibration {s['ratio']:.3f}; "
            f"the calibration's measurement repeated before this run "
            f"{s['calibration_before_run_ms'] / cal:.3f}, after it "
            f"{s['calibration_after_run_ms'] / cal:.3f}"
        )
    if r.get("table_check"):
        from lut_builder.latency_model import describe_check

        con.print(f"the table's build: {describe_check(r['table_check'])}", highlight=False)
        same = r.get("errors_table_speedup_check_copies")
        if same:
            con.print(
                f"the same {r['table_check']['copies']} copies here: speed-ups off by "
                f"{same['median_abs']:.1%} median, {same['max_abs']:.1%} at most"
            )
    for key, label in (
        ("errors_table_overhead", f"table ({r['table_calibration']})"),
        ("errors_run_overhead", "run, additive"),
        ("errors_run_affine", "run, affine"),
        ("errors_table_speedup", f"table ({r['table_calibration']}), speed-up"),
        ("errors_table_speedup_lines", "the same filled with its lines, speed-up"),
        ("errors_points_speedup", "the table's layer sums against fresh ones, as speed-ups"),
        ("errors_fresh_speedup", "the table's calibration on fresh layer sums, speed-up"),
    ):
        e = r.get(key)
        if e is None:
            continue
        if key in ("errors_points_speedup", "errors_fresh_speedup"):  # diagnostics
            con.print(
                f"{label}: median |error| {100 * e['median_abs']:.1f}%, "
                f"max {100 * e['max_abs']:.1f}%"
            )
            continue
        con.print(
            f"{label}: median |error| {100 * e['median_abs']:.1f}% (target 5%), "
            f"max {100 * e['max_abs']:.1f}% (target 10%)"
        )
    for sig in r.get("remeasured_by_signature") or []:
        f = sig["fresh_over_table"]
        con.print(
            f"{sig['signature']}: {100 * sig['share_of_unpruned']:.0f}% of the unpruned layer "
            f"sum, {sig['configurations']} configurations ({sig['measured_in_table']} measured "
            f"in the table): fresh / table {f['median']:.3f} (p10 {f['p10']:.3f}, "
            f"p90 {f['p90']:.3f})",
            highlight=False,
        )
    if r.get("residual_vs_elements") is not None:
        con.print(
            "speed-up error against elements written per ms of the layer sum, over the "
            f"samples: correlation {r['residual_vs_elements']:+.2f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
