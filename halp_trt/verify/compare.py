"""Original vs pruned, timed on the same backend in one run.

Both models are loaded as runners of :mod:`lut_builder.backends` on one backend and fed
the same input. After warm-up rounds, every round times both models in short chunks of
back-to-back inferences (about ``chunk_ms`` each, after one untimed inference that
refills the caches), alternating between the models chunk by chunk (A B B A ...), until
each model has run for ``min_block_ms``. Both models thus sample the same moments of the
machine, so a slow drift or a burst of another process on a shared host hits both
alike; each model's figure for the round is its median chunk, so a preempted chunk does
not decide it. (Timing each model in one long block per round by the wall clock instead
gave per-round spreads of 3-14% on a loaded 2-core machine where this gives 1.5-3.5%.)

**One CPU thread.** A runner that runs on the calling thread (ONNX Runtime or torch at
one CPU thread; its ``clock`` is ``"thread"``) is timed by that thread's CPU time, which
a preemption does not advance, in blocks (:func:`lut_builder.timing.time_blocks`): every
round each model serves one block of at least ``min_block_ms`` of back-to-back inferences
after three untimed ones, the order turning round by round; its figure for the round is
the block's median. This is how the pruner's latency feedback times at one thread, so
verify reads the speed-up the pruner steered by. Short chunks after one untimed inference
read a small model after a large one slower than it is served: on a Zen 5 CPU a
MobileNetV2 copy timed 0.99-1.12 of its cost served alone in chunks, 0.97-1.01 in blocks
(bench/results/timing_methods_mobilenetv2_zen5_blocks.json), and verify in blocks read
nine copies at 0.950-1.007 of alone (..._zen5_verify.json). On one uniform copy at 0.3
of the widths verify read 0.18 of the dense model in blocks, 0.19-0.20 in chunks; at 0.5,
0.30-0.31 and 0.34. The blocks' per-round ratios spread wider (interquartile range 6-16%
of the median against 4-8% in chunks), their median's 95% interval within about 3% at 30
rounds. The report's ``timing`` says which way it was timed; ``chunk_ms`` applies to
chunks only.

Figures: each model's median latency per inference (with p10/p90) and throughput
(samples per second at the batch size); the **speed-up** is the median over rounds of
the per-round ratio original / pruned, and its **spread** is that ratio's interquartile
range divided by the median (a bootstrap 95% confidence interval of the median ratio is
given beside it). With a plan (``plan.json``), the plan's predicted latency is set against
the measured one, and the budget checked.

**Threads.** A CPU latency table describes inference at the thread count it was
measured at (its fingerprint says which): a model pruned on a 1-thread table is not
planned for 2 threads. On a CPU backend, verify times at the table's thread count (the
``table`` given, else the one a pruning plan records) unless told another, and then
says so in a note; the report keeps both counts.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lut_builder.errors import UserError
from lut_builder.parallelism import check_thread_count

BACKENDS = ("onnxruntime", "torch", "tensorrt")
#: Timing in blocks (one CPU thread): untimed inferences that start each block, and the
#: least timed ones in it: those of the pruner's feedback (halp_trt.prune.feedback).
BLOCK_WARM_RUNS = 3
BLOCK_MIN_RUNS = 5


@dataclass(frozen=True)
class ModelTiming:
    """Latency of one model over the timed rounds (per inference, milliseconds);
    ``inner`` is the number of timed inferences per round."""

    label: str
    source: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    throughput: float
    inner: int
    rounds: int


@dataclass(frozen=True)
class SpeedupStats:
    """The per-round ratio original / pruned, summarised."""

    median: float
    q25: float
    q75: float
    spread: float
    ci95: tuple[float, float]
    ratio_of_medians: float


@dataclass
class VerifyReport:
    """Result of :func:`verify_models`."""

    backend: str
    options: dict[str, Any]
    input_shape: list[int]
    warmup: int
    rounds: int
    original: ModelTiming
    pruned: ModelTiming
    speedup: SpeedupStats
    plan: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    #: CPU threads both models were timed at (None on a GPU).
    threads: int | None = None
    #: CPU threads the latency table was measured at (None: no table, or a GPU table).
    table_threads: int | None = None
    #: How both models were timed: ``"blocks"`` (one CPU thread, the thread's CPU time) or
    #: ``"chunks"`` (the wall clock); see the module notes.
    timing: str = "chunks"

    @property
    def batch(self) -> int:
        return self.input_shape[0]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["speedup"]["ci95"] = list(self.speedup.ci95)
        return d


def quantile(xs: Sequence[float], q: float) -> float:
    """Quantile with linear interpolation (numpy's default)."""
    s = sorted(xs)
    pos = (len(s) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def speedup_stats(
    original_ms: Sequence[float],
    pruned_ms: Sequence[float],
    *,
    seed: int = 0,
    resamples: int = 2000,
) -> SpeedupStats:
    """Summarise per-round ratios ``original[i] / pruned[i]``.

    Raises:
        ValueError: sequences of different or zero length, or a non-positive time.
    """
    import numpy as np

    if len(original_ms) != len(pruned_ms) or not original_ms:
        raise ValueError("need the same, non-zero number of rounds for both models")
    if min(*original_ms, *pruned_ms) <= 0:
        raise ValueError("times must be positive")
    ratios = np.asarray(original_ms, dtype=float) / np.asarray(pruned_ms, dtype=float)
    med = float(np.median(ratios))
    q25, q75 = float(quantile(ratios, 0.25)), float(quantile(ratios, 0.75))
    rng = np.random.default_rng(seed)
    boot = np.median(rng.choice(ratios, size=(resamples, len(ratios)), replace=True), axis=1)
    ci = (float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975)))
    return SpeedupStats(
        median=med,
        q25=q25,
        q75=q75,
        spread=(q75 - q25) / med,
        ci95=ci,
        ratio_of_medians=float(np.median(original_ms) / np.median(pruned_ms)),
    )


def verify_models(
    original: Any,
    pruned: Any,
    *,
    backend: str,
    input_shape: Sequence[int],
    warmup: int = 5,
    rounds: int = 30,
    min_block_ms: float = 100.0,
    chunk_ms: float = 3.0,
    plan: Any = None,
    labels: tuple[str, str] = ("original", "pruned"),
    sources: tuple[str, str] = ("", ""),
    table: Any = None,
    **options: Any,
) -> VerifyReport:
    """Time ``original`` and ``pruned`` on one backend, interleaved; see the module notes.

    Args:
        original, pruned: what :func:`lut_builder.backends.make_runner` takes for the
            backend (``nn.Module``, ``.onnx`` path, ``.engine`` path).
        backend: ``onnxruntime``, ``torch`` or ``tensorrt``.
        input_shape: the input, batch first; both models get the same tensor.
        warmup: untimed rounds.
        rounds: timed rounds.
        min_block_ms: the least time each model runs per round.
        chunk_ms: the least duration of one timed chunk of inferences (wall-clock
            runners; at one CPU thread each round is one block, see the module notes).
        plan: a :class:`halp_trt.solver.Plan` (with ``base_ms`` when it is a pruning
            run's plan) for predicted vs measured latency, or None.
        labels, sources: names shown for the two models.
        table: the plan's :class:`lut_builder.LatencyTable`, or None. When it was measured
            against a reference workload (a shared CPU), both models are also timed
            against that reference after the main rounds, giving milliseconds in the
            table's unit: the prediction's error without the machine's current speed
            in it.
        **options: backend options for the runners (``threads``, ``device``, ...). On
            a CPU backend ``threads`` defaults to the thread count of ``table`` (else of
            the table a pruning plan records; else 1); another count is used as asked,
            with a note saying that the table describes another deployment.

    Returns:
        A :class:`VerifyReport`.

    Raises:
        UserError: unknown backend, bad counts, a model the backend cannot run, or a
            runner that fails on the input.
        PlanError: a plan that cannot be the pruned model's (:func:`check_plan`),
            before anything is timed.
    """
    import torch

    from lut_builder.backends import make_runner
    from lut_builder.specs import random_input
    from lut_builder.timing import time_blocks, time_chunked

    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if rounds < 3 or warmup < 0 or min_block_ms < 0 or chunk_ms <= 0:
        raise UserError(
            "verify needs at least 3 rounds, warmup >= 0, a block time >= 0 and a chunk time > 0"
        )
    shape = tuple(int(d) for d in input_shape)
    if plan is not None:
        check_plan(plan, pruned)
    options, table_threads, threads_note = _thread_options(backend, options, table, plan)
    x = random_input(shape, generator=torch.Generator().manual_seed(0))
    runners = []
    try:
        for model in (original, pruned):
            runners.append(make_runner(backend, model, x, **options))
        if backend == "torch":  # the layout and graph replay the runners chose
            r0 = runners[0]
            options = {**options, "channels_last": r0.channels_last, "cuda_graph": r0.cuda_graph}
        for r, label in zip(runners, labels):
            try:
                r()
                r.sync()
            except Exception as exc:
                raise UserError(
                    f"the {label} model fails on an input of shape {shape} on {backend}: "
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                ) from exc
        timing = "blocks" if all(r.clock == "thread" for r in runners) else "chunks"
        if timing == "blocks":
            times, inner = time_blocks(
                runners,
                rounds=warmup + rounds,
                block_ms=min_block_ms,
                warm_runs=BLOCK_WARM_RUNS,
                min_runs=BLOCK_MIN_RUNS,
                clock="thread",
            )
            times = [t[warmup:] for t in times]
        else:
            times, inner = time_chunked(
                runners,
                warmup=warmup,
                rounds=rounds,
                min_block_ms=min_block_ms,
                chunk_ms=chunk_ms,
            )
        in_table_unit, unit_note = _time_in_table_unit(
            table if plan is not None else None, runners, warmup, rounds
        )
    finally:
        for r in runners:
            r.close()
    timings = []
    for label, source, t, k in zip(labels, sources, times, inner):
        med = quantile(t, 0.5)
        timings.append(
            ModelTiming(
                label=label,
                source=source,
                median_ms=med,
                p10_ms=quantile(t, 0.1),
                p90_ms=quantile(t, 0.9),
                throughput=shape[0] * 1e3 / med,
                inner=k,
                rounds=len(t),
            )
        )
    report = VerifyReport(
        backend=backend,
        options={
            k: (str(v) if not isinstance(v, (int, float, bool)) else v) for k, v in options.items()
        },
        input_shape=list(shape),
        warmup=warmup,
        rounds=rounds,
        original=timings[0],
        pruned=timings[1],
        speedup=speedup_stats(times[0], times[1]),
        threads=options.get("threads"),
        table_threads=table_threads,
        timing=timing,
    )
    if threads_note:
        report.notes.append(threads_note)
    if plan is not None:
        report.plan = plan_comparison(plan, report, in_table_unit)
    if unit_note:
        report.notes.append(unit_note)
    return report


def check_plan(plan: Any, pruned: Any) -> None:
    """Refuse a plan that cannot be ``pruned``'s: a predicted latency, budget or (a
    pruning plan's) target or unpruned prediction that is not a positive number, or,
    with ``pruned`` a module, widths that are not its layers' (another model, or the
    unpruned one); with ``pruned`` an ONNX file, widths it does not have, compared as
    a multiset (:func:`onnx_layer_widths`). An engine is not compared layer by layer.

    Raises:
        PlanError: the first figure or layer that does not fit, named.
    """
    import torch.nn as nn

    from ..solver.plan import PlanError

    for name in ("predicted_ms", "budget_ms", "target_ms", "base_ms"):
        value = getattr(plan, name, None)
        if value is None and name in ("target_ms", "base_ms"):
            continue  # a solver plan has no pruning facts
        if not (_is_number(value) and math.isfinite(value) and value > 0):
            raise PlanError(f"invalid plan: {name} must be a positive number, not {value!r}")
    widths = getattr(plan, "widths", None) or {}
    if isinstance(pruned, (str, os.PathLike)) and str(pruned).endswith(".onnx"):
        _check_onnx_widths(widths, pruned)
    if not isinstance(pruned, nn.Module):
        return
    modules = dict(pruned.named_modules())
    for name, layer in widths.items():
        module = modules.get(name)
        if isinstance(module, nn.Conv2d):
            here: tuple[int, int] | None = (module.in_channels, module.out_channels)
        elif isinstance(module, nn.Linear):
            here = (module.in_features, module.out_features)
        else:
            here = None
        if here != tuple(layer):
            has = "has no such conv/linear layer" if here is None else f"has {here[0]} -> {here[1]}"
            raise PlanError(
                f"the plan is not the pruned model's: its layer {name} is {layer[0]} -> "
                f"{layer[1]} channels, the pruned model {has}"
            )


#: Operators whose output has their first input's shape (see :func:`onnx_layer_widths`).
_SHAPE_KEEPING = ("DequantizeLinear", "QuantizeLinear", "Identity", "Cast")


def onnx_layer_widths(path: str | os.PathLike) -> Counter[tuple[int, int]] | None:
    """The ``(in, out)`` channels of an ONNX file's convolutions (from their weights'
    shapes and groups) and of its fully connected layers (``Gemm``, and ``MatMul`` by a
    2-D weight, counted both ways round: the exporters transpose them differently), with
    their counts. A weight is read through the operators that keep a constant's shape
    or permute it (an INT8 file's ``QuantizeLinear``/``DequantizeLinear``, a cast, a
    transpose). None when a layer's weight is computed otherwise (from activations, or
    by an operator not followed here) or the file does not parse: the widths cannot all
    be read, and a plan is then not compared with them."""
    import onnx

    try:
        graph = onnx.load(os.fspath(path), load_external_data=False).graph
    except Exception:  # not ONNX, or unreadable: the runner says so in its own words
        return None
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    for node in graph.node:  # in the graph's order, which ONNX requires topological
        source = shapes.get(node.input[0]) if node.input else None
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            shapes[node.output[0]] = tuple(node.attribute[0].t.dims)
        elif source is not None and node.op_type in _SHAPE_KEEPING:
            shapes[node.output[0]] = source
        elif source is not None and node.op_type == "Transpose":
            perm = [a.ints for a in node.attribute if a.name == "perm"]
            order = list(perm[0]) if perm else list(reversed(range(len(source))))
            shapes[node.output[0]] = tuple(source[i] for i in order)
    found: Counter[tuple[int, int]] = Counter()
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        shape = shapes.get(node.input[1])
        if shape is None:  # a weight computed in the graph from more than a constant,
            return None  # or attention's activations times activations: not read
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv" and len(shape) >= 3:
            found[(shape[1] * int(attrs.get("group", 1)), shape[0])] += 1
        elif node.op_type != "Conv" and len(shape) == 2:
            found[(shape[0], shape[1])] += 1
            found[(shape[1], shape[0])] += shape[0] != shape[1]
    return found


def _check_onnx_widths(widths: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Refuse a plan whose layer widths the pruned ONNX file does not have, as many
    times as the plan has them (the file's layers are unnamed once BatchNorm is folded:
    compared by width, not by name)."""
    from ..solver.plan import PlanError

    found = onnx_layer_widths(path)
    if found is None or not widths:
        return
    wanted = Counter(tuple(int(c) for c in w) for w in widths.values())
    for (c_in, c_out), count in sorted(wanted.items()):
        if found[(c_in, c_out)] < count:
            names = [n for n, w in widths.items() if tuple(w) == (c_in, c_out)]
            raise PlanError(
                f"the plan is not the pruned ONNX file's: it has {count} layer(s) of "
                f"{c_in} -> {c_out} channels ({', '.join(names[:3])}"
                f"{', ...' if len(names) > 3 else ''}), {os.fspath(path)} has "
                f"{found[(c_in, c_out)]}"
            )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _thread_options(
    backend: str, options: dict[str, Any], table: Any, plan: Any
) -> tuple[dict[str, Any], int | None, str]:
    """The runners' options with the thread count to time at; the table's thread count;
    a note when the two differ. See the module notes.

    Raises:
        UserError: a thread count that is not a positive integer.
    """
    from lut_builder.table import table_threads

    on_cpu = backend == "onnxruntime" or (
        backend == "torch" and str(options.get("device") or "cpu").startswith("cpu")
    )
    if not on_cpu:
        return options, None, ""
    if table is not None:
        fingerprint = table.fingerprint
    else:
        facts = getattr(plan, "table", None)
        fingerprint = facts.get("fingerprint") if isinstance(facts, Mapping) else None
    measured = table_threads(fingerprint) if isinstance(fingerprint, Mapping) else None
    asked = options.get("threads")
    if asked is None:
        threads = measured or 1
        what = f"the table's thread count ({threads}, timed unless threads are given)"
        check_thread_count(threads, what)
    else:
        threads = check_thread_count(asked)
    note = ""
    if measured is not None and threads != measured:
        note = (
            f"timed at {threads} CPU thread{'s' if threads > 1 else ''}, but the latency table "
            f"was measured at {measured}: the plan describes a {measured}-thread deployment "
            f"(build the table with --threads {threads} to plan for {threads})"
        )
    return {**options, "threads": threads}, measured, note


def _time_in_table_unit(
    table: Any, runners: Sequence[Any], warmup: int, rounds: int
) -> tuple[tuple[float, float] | None, str]:
    """Both models' median latency in the table's unit, or None and why not."""
    if table is None:
        return None, ""
    if table.reference is None:
        return None, ""  # the table is in plain milliseconds already
    table_clock = (table.fingerprint.get("options") or {}).get("clock")
    if table_clock and runners[0].clock != table_clock:
        return None, (
            f"not timed in the table's unit: the table used the {table_clock} clock, these "
            f"runners the {runners[0].clock} clock (use the table's thread count)"
        )
    from lut_builder import measure_end_to_end
    from lut_builder.end_to_end import stored_regime

    # Timed as the table's calibration timed, so prediction and measurement compare alike.
    served = stored_regime(table.overhead) == "served"
    t = measure_end_to_end(
        table, list(runners), warmup=warmup, runs=rounds if served else max(20, rounds),
        min_time_s=None, regime="served" if served else "round-robin",
    )  # fmt: skip
    return (t[0].median_ms, t[1].median_ms), ""


#: How far over its budget a measured latency may land and still meet it: the timing's
#: own run-to-run spread on a shared machine is a few percent. One verdict, used by
#: ``halp-trt verify`` and by the report of ``halp-trt run``.
BUDGET_TOLERANCE = 0.05


def plan_comparison(
    plan: Any, report: VerifyReport, in_table_unit: tuple[float, float] | None = None
) -> dict[str, Any]:
    """Predicted vs measured latency, and whether the budget was met.

    A budget given relative to the unpruned model (a pruning plan whose target ends in
    ``x``, e.g. ``0.5x``) is checked as a ratio: the measured pruned/original latency
    against budget/base predicted, which a table's absolute bias (layers it does not
    price, another machine's speed) cannot skew. An absolute budget (``3ms``, or a
    solver plan without the unpruned model's prediction) is checked in milliseconds.
    Either way the measurement may exceed the budget by :data:`BUDGET_TOLERANCE`.

    ``in_table_unit``: the original's and the pruned model's latency timed against the
    table's reference workload (see :func:`verify_models`); the prediction errors in
    those units are added under ``table_unit``.
    """
    from ..prune.schedule import target_fraction

    measured = report.pruned.median_ms
    predicted = float(plan.predicted_ms)
    budget = float(plan.budget_ms)
    out: dict[str, Any] = {
        "predicted_ms": predicted,
        "measured_ms": measured,
        "error": (predicted - measured) / measured,
        "budget_ms": budget,
        "budget_check": "absolute",
        "tolerance": BUDGET_TOLERANCE,
        "within_budget": measured <= budget * (1 + BUDGET_TOLERANCE),
    }
    base = getattr(plan, "base_ms", None)
    if base:
        out["base_predicted_ms"] = float(base)
        out["base_measured_ms"] = report.original.median_ms
        out["predicted_speedup"] = float(base) / predicted
        out["measured_speedup"] = report.speedup.median
        if target_fraction(getattr(plan, "target", None)) is not None:
            out["budget_check"] = "relative"
            out["budget_ratio"] = budget / float(base)
            out["measured_ratio"] = 1.0 / report.speedup.median
            limit = out["budget_ratio"] * (1 + BUDGET_TOLERANCE)
            out["within_budget"] = out["measured_ratio"] <= limit
    if in_table_unit is not None:
        orig, pruned = in_table_unit
        unit: dict[str, Any] = {
            "pruned_ms": pruned,
            "error": (predicted - pruned) / pruned,
            "original_ms": orig,
        }
        if base:
            unit["base_error"] = (float(base) - orig) / orig
        out["table_unit"] = unit
    return out
