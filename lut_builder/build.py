"""Planning and measuring a latency table for a model.

**The grid.** For each layer signature, the channel counts a pruned model can reach: the
multiples of the grid step up to the layer's full width, plus the full width itself
(grouped convs: multiples of lcm(step, channels per group), c_in = c_out, since whole
groups are pruned; depthwise convs: c_in = c_out; both a 1-D grid). Widths fixed by
the model are not varied: a layer reading the model's input keeps its c_in, a layer
producing the model's output keeps its c_out. Layers sharing a signature are measured
once, on the union of their axes.

**Strategies.** ``full`` measures the whole 2-D product of both axes. ``sparse`` (the
default) measures, per signature, a coarse 2-D grid of at most ``coarse`` values per
axis (evenly spread, always including the smallest width and the full widths) plus two
full-resolution lines through the full widths (every c_in at the full c_out, every c_out
at the full c_in) and :data:`PROBES` probes off both; :func:`lut_builder.table.grid.fill`
fills the rest with a bilinear surface over the coarse grid, corrected by the lines
where that predicts the probes better. Axes with at most ``coarse`` values are measured in
full. For a ResNet-18 at step 16 this plans 528 points instead of 2740 (5.2x fewer;
564 with the probes); ``bench/lut_build.py`` measured full grids of three of its
signatures on ONNX Runtime: the filled points were off by a median 3.3-5.5% from their
measurements, where simply measuring the same points again differed by a median
1.2-6.3%.

**Crash safety and sharding.** Every point is committed as it is measured; running the
same build again measures only the planned points still missing. The plan is registered
in the transaction that checks an existing file's target, values and plan, so a build
refused there leaves the file as it was. ``shard=(i, n)`` takes
every n-th point of the plan (in a fixed order), so n processes (one per GPU) can fill
one file; the process that finds nothing missing at the end marks the table complete.
Points are measured in a shuffled (but fixed) order, so that the progress bar's rate,
and with it the time-left estimate, is representative of the whole build.

**Calibration.** The process that completes the table then fits the network latency
model on whole-model runs (:mod:`lut_builder.latency_model`): affine on the model and
narrowed copies of it when it has them (given, or from a
``lut_builder.calibration_variants`` hook), additive otherwise, saying why. An unsharded
build takes those runs in blocks spread over its whole measuring time (one block after
each eighth of the points, the last at the end; see
:class:`~lut_builder.end_to_end.BlockSampler`), so that the calibration sees the same
mix of machine states as the points: a MobileNetV2 calibrated in one 2-second stretch at
the end of its build was 10% off the same model measured minutes later on a shared
machine. Whole models are timed as they are served, one inference after another (the
``regime`` of :func:`~lut_builder.end_to_end.measure_end_to_end`): a table calibrated on
one inference of each model in turn predicted served MobileNetV2s pruned to 0.3x 13-16%
fast at batch 1 on a Zen 3.

(About 500 lines: planning, the argument checks and the resumable, shardable
measuring loop belong to one call, :func:`build_table`.)
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import socket
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends.base import Backend, make_runner
from .end_to_end import DEFAULT_REGIME, REGIMES, BlockSampler
from .errors import UserError
from .fileio import check_output
from .latency_model import (
    CHECK_COPIES,
    VariantsFactory,
    calibrate_overhead,
    calibration_copies,
    check_copies,
)
from .parallelism import ParallelCheck, check_parallelism
from .signatures import LayerInfo, LayerSignature, model_layers
from .table import Grid, LatencyTable

STRATEGIES = ("sparse", "full")
#: Network latency models :func:`build_table` can calibrate.
CALIBRATIONS = ("affine", "additive", "none")


@dataclass
class _Axes:
    values_in: set[int] = field(default_factory=set)
    values_out: set[int] = field(default_factory=set)
    full_in: set[int] = field(default_factory=set)
    full_out: set[int] = field(default_factory=set)
    varied_in: bool = False
    varied_out: bool = False


def axis_values(full: int, step: int) -> list[int]:
    """Multiples of ``step`` up to ``full``, and ``full`` itself (ascending).

    Raises:
        ValueError: non-positive ``full`` or ``step``.
    """
    if full < 1 or step < 1:
        raise ValueError("full width and step must be positive")
    return sorted(set(range(step, full + 1, step)) | {full})


def fixed_widths(model: Any, example_input: Any) -> tuple[set[str], set[str]]:
    """Layers whose c_in is the model's input and whose c_out is the model's output.

    Found with hooks on one forward pass: a layer whose first argument *is* the input
    tensor, or whose result *is* (one of) the model's outputs. Those widths are never
    pruned, so their axes are not varied.

    Returns:
        ``(reads_input, writes_output)``: sets of layer names.
    """
    import torch
    import torch.nn as nn

    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    input_ids = {id(t) for t in inputs if torch.is_tensor(t)}
    reads: set[str] = set()
    # Outputs are kept alive until the end: a freed tensor's id could be reused.
    outs: dict[int, tuple[str, Any]] = {}
    handles = []

    def hook(name: str) -> Callable[..., None]:
        def fn(module: nn.Module, args: tuple, out: Any) -> None:
            if args and id(args[0]) in input_ids:
                reads.add(name)
            if torch.is_tensor(out):
                outs.setdefault(id(out), (name, out))

        return fn

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            result = model(*inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    results = result if isinstance(result, (tuple, list)) else [result]
    if isinstance(result, Mapping):
        results = list(result.values())
    writes = {outs[id(t)][0] for t in results if torch.is_tensor(t) and id(t) in outs}
    return reads, writes


def check_grid_options(step: int | None, strategy: str, coarse: int) -> None:
    """Check the grid options of :func:`plan_grids` (``step`` None: the default).

    Raises:
        UserError: naming the option: an unknown strategy, a step that is not a positive
            integer, fewer than 2 coarse values.
    """
    if strategy not in STRATEGIES:
        raise UserError(f"unknown grid strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 1):
        raise UserError(f"the grid step must be a positive integer, not {step!r}")
    if isinstance(coarse, bool) or not isinstance(coarse, int) or coarse < 2:
        raise UserError("the sparse grid needs at least 2 coarse values per axis")


def plan_grids(
    layers: Mapping[str, LayerInfo],
    *,
    step: int,
    strategy: str = "sparse",
    coarse: int = 6,
    fixed_in: set[str] = frozenset(),  # type: ignore[assignment]
    fixed_out: set[str] = frozenset(),  # type: ignore[assignment]
) -> dict[LayerSignature, Grid]:
    """The grid of every signature of a model.

    Args:
        layers: the model's layers (:func:`~lut_builder.signatures.model_layers`).
        step: channel step of the grid.
        strategy: ``"sparse"`` or ``"full"`` (see the module notes).
        coarse: values per axis of the sparse strategy's coarse 2-D grid (>= 2).
        fixed_in, fixed_out: names of layers whose c_in / c_out is not varied.

    Returns:
        ``{signature: Grid}`` in the order the signatures first appear.

    Raises:
        UserError: unknown strategy, step < 1 or coarse < 2.
    """
    check_grid_options(step, strategy, coarse)
    axes: dict[LayerSignature, _Axes] = {}
    for info in layers.values():
        sig = info.signature
        ax = axes.setdefault(sig, _Axes())
        s = step
        if sig.group_mode == "grouped":
            s = math.lcm(step, sig.channel_unit)
        var_in = info.name not in fixed_in
        var_out = info.name not in fixed_out
        if sig.diagonal:
            var_in = var_out = var_in and var_out
        ax.values_in |= set(axis_values(info.c_in, s)) if var_in else {info.c_in}
        ax.values_out |= set(axis_values(info.c_out, s)) if var_out else {info.c_out}
        ax.full_in.add(info.c_in)
        ax.full_out.add(info.c_out)
        ax.varied_in |= var_in
        ax.varied_out |= var_out
    grids = {}
    for sig, ax in axes.items():
        vin, vout = sorted(ax.values_in), sorted(ax.values_out)
        if sig.diagonal:
            both = sorted(set(vin) | set(vout))
            grids[sig] = Grid(both, both, diagonal=True)
            continue
        if strategy == "full" or (len(vin) <= coarse and len(vout) <= coarse):
            grids[sig] = Grid(vin, vout)
            continue
        cin = _coarse(vin, ax.full_in, coarse)
        cout = _coarse(vout, ax.full_out, coarse)
        # Lines through the largest full widths, at full resolution of the other axis.
        grid = Grid(
            vin,
            vout,
            coarse_in=cin,
            coarse_out=cout,
            lines_in=[max(ax.full_in)] if len(vout) > len(cout) else [],
            lines_out=[max(ax.full_out)] if len(vin) > len(cin) else [],
        )
        grids[sig] = dataclasses.replace(grid, probes=_probes(grid))
    return grids


#: Where a sparse grid's probes go, as fractions of its fine axes (c_in, c_out): the
#: wide half, where pruned layers stay and where a layer's cost is large, both sides of
#: the diagonal, and one narrower point. Each takes the unplanned point nearest to it.
PROBES = ((0.95, 0.7), (0.7, 0.95), (0.85, 0.85), (0.45, 0.6))


def _probes(grid: Grid) -> list[tuple[int, int]]:
    """The points of :data:`PROBES` on ``grid``: for each fraction the unplanned point
    nearest to it (in steps along each axis), each point once; none where every point
    is planned."""
    planned = set(grid.points())
    free = [
        (i, j)
        for i, a in enumerate(grid.c_in)
        for j, b in enumerate(grid.c_out)
        if (a, b) not in planned
    ]
    picked: list[tuple[int, int]] = []
    for fi, fo in PROBES:
        want = (fi * (len(grid.c_in) - 1), fo * (len(grid.c_out) - 1))
        rest = [p for p in free if p not in picked]
        if rest:
            picked.append(min(rest, key=lambda p: (p[0] - want[0]) ** 2 + (p[1] - want[1]) ** 2))
    return [(grid.c_in[i], grid.c_out[j]) for i, j in picked]


def _coarse(values: list[int], fulls: set[int], count: int) -> list[int]:
    """``count`` values spread evenly over ``values``, with the ends and full widths."""
    if len(values) <= count:
        return list(values)
    idx = {round(i * (len(values) - 1) / (count - 1)) for i in range(count)}
    return sorted({values[i] for i in idx} | (fulls & set(values)))


@dataclass
class BuildResult:
    """What a build (or one shard of it) did."""

    path: Path
    planned: int
    measured: int
    skipped: int
    seconds: float
    complete: bool
    overhead_ms: float | None = None
    scale: float = 1.0
    #: The calibrated network latency model: ``"affine"``, ``"additive"`` or None.
    calibration: str | None = None
    #: Why the calibration is what it is, when it is not what was asked for.
    calibration_note: str = ""
    #: The model's speed-up at the table's threads over one, checked before and after
    #: measuring an ONNX Runtime table at several threads (empty where not checked).
    parallel: list[ParallelCheck] = field(default_factory=list)
    #: The latency model checked on random-width copies
    #: (:func:`~lut_builder.latency_model.check_latency_model`), or None.
    check: dict[str, Any] | None = None
    #: Why there is no check, when one was asked for.
    check_note: str = ""

    @property
    def points_per_s(self) -> float:
        return self.measured / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "planned": self.planned,
            "measured": self.measured,
            "skipped": self.skipped,
            "seconds": self.seconds,
            "points_per_s": self.points_per_s,
            "complete": self.complete,
            "overhead_ms": self.overhead_ms,
            "scale": self.scale,
            "calibration": self.calibration,
            "calibration_note": self.calibration_note,
            "parallel": [c.to_dict() for c in self.parallel],
            "check": self.check,
            "check_note": self.check_note,
        }


def build_table(
    path: str | os.PathLike,
    model: Any,
    example_input: Any,
    backend: str | Backend,
    *,
    step: int | None = None,
    strategy: str = "sparse",
    coarse: int = 6,
    shard: tuple[int, int] = (0, 1),
    info: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    calibration: str = "affine",
    variants: Sequence[Any] | VariantsFactory | None = None,
    runner_options: Mapping[str, Any] | None = None,
    backend_options: Mapping[str, Any] | None = None,
    calibrate: Callable[[LatencyTable], float | None] | None = None,
    check: int = CHECK_COPIES,
    check_variants: Sequence[Any] | Callable[..., Sequence[Any]] | None = None,
    regime: str = DEFAULT_REGIME,
) -> BuildResult:
    """Plan, measure and store the latency table of a model on a backend (resumable), then
    calibrate the network latency model on whole-model measurements.

    Every argument is checked before anything is measured or the table file is touched.

    Args:
        path: the table file; created, or resumed if it holds the same target and
            plan (anything else is refused before the file changes). Its directory must
            exist and be writable.
        model: the ``nn.Module`` (its layers are read with one forward pass).
        example_input: its input (the batch size is part of every signature).
        backend: a backend name (made with ``get_backend(backend, **backend_options)``
            and closed at the end) or a :class:`~lut_builder.backends.Backend` (the
            caller's to close).
        step: grid step; the backend's alignment by default.
        strategy, coarse: see :func:`plan_grids`.
        shard: ``(i, n)``: measure only every n-th planned point starting at i.
        info: extra facts stored in the table (model spec, input shape...).
        progress: called as ``progress(done, total)`` after each point of this shard.
        on_start: called with the number of points this shard will measure.
        calibration: the network latency model, fitted by the process that completes
            the table (see :func:`~lut_builder.latency_model.calibrate_overhead`):
            ``"affine"`` (``scale * layers + overhead``, fitted on the model and its
            ``variants``; additive when there are none, saying why), ``"additive"``
            (``layers + overhead``, from the model alone) or ``"none"``. Backends that
            do not measure (``analytic``) are never calibrated.
        variants: the narrowed copies of ``model`` the affine model is fitted on: a list
            of modules, or a callable ``variants(model, example_input, alignment)``
            returning one; it is called with the grid step as ``alignment``, so the
            copies' widths stay on the measured grid. None: the
            ``lut_builder.calibration_variants`` entry point
            (halp-trt installs :func:`halp_trt.graph.calibration_variants`).
        runner_options: options of the whole-model runner the calibration times with
            (:func:`~lut_builder.backends.make_runner` on the backend's name).
        backend_options: constructor options of a backend given by name.
        calibrate: for advanced use, replaces the built-in calibration: called with the
            table once it is complete, returns the overhead term it stored, if any.
        check: how many copies of the model, each group at a random width, the built-in
            calibration checks its fitted latency model on (measured with the
            calibration's models, not fitted on; 0: none). The result is stored with the
            calibration and returned as the result's ``check``.
        check_variants: those copies: a list of modules, or a callable
            ``check_variants(model, example_input, alignment, count)``. None: the
            ``lut_builder.check_variants`` entry point (halp-trt installs
            :func:`halp_trt.graph.check_variants`).
        regime: how the built-in calibration and its check time whole models
            (:func:`~lut_builder.end_to_end.measure_end_to_end`): ``"served"``, one
            inference after another as a model is deployed (the default), or
            ``"round-robin"``, one inference of each model in turn (as tables were
            calibrated before; at batch 1 on a Zen 3 it predicted served MobileNetV2s
            pruned to 0.3x 13-16% fast).

    Returns:
        A :class:`BuildResult` (its ``calibration`` and ``calibration_note`` say which
        latency model the table has and why).

    Raises:
        UserError: a bad argument (the message names it); an unknown backend or options
            it rejects; the file holds another target's table or another plan; a
            backend rejects a point; a runner of the calibration fails (an unsharded
            build makes its runners before it measures the first point).
    """
    import torch

    _check_build_arguments(
        path, backend, step, strategy, coarse, shard, calibration, variants, runner_options,
        backend_options, check, check_variants, regime,
    )  # fmt: skip
    owned = isinstance(backend, str)
    if owned:
        from .backends import get_backend

        backend = get_backend(backend, **dict(backend_options or {}))
    try:
        # A CPU table describes one thread count: the calibration runs at it too.
        threads = getattr(backend, "threads", None)
        runner_options = dict(runner_options or {})
        if threads is not None and runner_options.setdefault("threads", threads) != threads:
            raise UserError(
                f"runner_options threads={runner_options['threads']!r}: the calibration "
                f"must run at the {threads} CPU threads the table is measured at"
            )
        step = step or backend.alignment
        layers = model_layers(model, example_input)
        if not layers:
            raise UserError("the model has no Conv2d or Linear layer to measure")
        reads, writes = fixed_widths(model, example_input)
        grids = plan_grids(
            layers, step=step, strategy=strategy, coarse=coarse, fixed_in=reads, fixed_out=writes
        )
        x = example_input[0] if isinstance(example_input, tuple) else example_input
        fingerprint = {
            **backend.fingerprint(),
            "batch": int(x.shape[0]) if torch.is_tensor(x) else None,
            "is_measurement": backend.is_measurement,
        }
        # Checks an existing file (target, values, plan) and registers the plan in one
        # transaction: a refused build leaves the file as it was.
        table = LatencyTable.create(
            path,
            fingerprint,
            backend.alignment,
            step=step,
            info={**dict(info or {}), "strategy": strategy, "coarse": coarse},
            plan=grids,
            reference_kind=backend.reference_kind,
        )
        try:
            if backend.is_measurement and not table.complete:
                # Each process that measures points says how it timed them.
                table.append_info(
                    "timing_loops",
                    {**backend.timing_loop(), "worker": f"{socket.gethostname()}:{os.getpid()}"},
                )
            builtin = calibrate is None and calibration != "none" and backend.is_measurement
            options = dict(runner_options or {})

            def runner(m: Any) -> Any:
                return make_runner(backend.name, m, example_input, **options)

            copies: list[Any] = []
            checks: list[Any] = []
            note = check_note = ""
            if builtin and calibration == "affine" and table.overhead_ms is None:
                # Rounded to the grid step, not the backend's alignment: a copy
                # narrower than the grid's smallest width cannot be looked up.
                copies, note = calibration_copies(variants, model, example_input, table.step)
            if builtin and table.overhead_ms is None:
                checks, check_note = check_copies(
                    check_variants, model, example_input, table.step, check
                )
            # An unsharded build spreads its calibration's runs over its measuring time.
            runners: list[Any] = []
            sampler = None
            parallel: list[ParallelCheck] = []
            try:
                checking = _checks_parallelism(backend, threads) and not table.complete
                if checking:
                    parallel.append(_check_parallel(table, backend, model, example_input, options))
                if builtin and shard[1] == 1 and table.overhead_ms is None:
                    for m in (model, *copies, *checks):
                        runners.append(runner(m))
                    sampler = BlockSampler(table, runners, warmup=20, regime=regime)
                between = None if sampler is None else _sample_when_due(sampler)
                result = _measure(table, backend, shard, progress, on_start, between)
                if checking and result["measured"]:
                    # Again after measuring: a machine's load changes over a long build.
                    parallel.append(_check_parallel(table, backend, model, example_input, options))
                # One process calibrates: the one that completed the table, or an
                # unsharded run resuming a table whose calibration was interrupted.
                newly, n = result.pop("newly"), shard[1]
                overhead = table.overhead_ms
                if overhead is None and (newly or (table.complete and n == 1)):
                    if calibrate is not None:
                        overhead = calibrate(table)
                    elif builtin:
                        overhead = calibrate_overhead(
                            table,
                            runner,
                            model,
                            example_input,
                            variants=copies,
                            timed=None if sampler is None else sampler.finish(),
                            note=note,
                            checks=checks,
                            check_note=check_note,
                            regime=regime,
                        )
            finally:
                for r in runners:
                    r.close()
            details = table.overhead or {}
            return BuildResult(
                Path(path),
                **result,
                complete=table.complete,
                overhead_ms=overhead,
                scale=table.scale,
                calibration=details.get("model"),
                calibration_note=details.get("note", ""),
                parallel=parallel,
                check=details.get("check"),
                check_note=details.get("check_note", ""),
            )
        finally:
            table.close()
    finally:
        if owned:
            backend.close()


def _checks_parallelism(backend: Backend, threads: int | None) -> bool:
    """Whether a build checks that its threads run in parallel (see
    :mod:`lut_builder.parallelism`): ONNX Runtime tables measured at several threads."""
    return backend.name == "onnxruntime" and backend.is_measurement and (threads or 1) > 1


def _check_parallel(
    table: LatencyTable, backend: Backend, model: Any, example_input: Any, options: Mapping
) -> ParallelCheck:
    """Check that the table's threads run in parallel now, record it in the table and
    warn when they do not."""
    check = check_parallelism(
        lambda n: make_runner(backend.name, model, example_input, **{**options, "threads": n}),
        backend.threads,
    )
    table.append_info(
        "parallel_checks",
        {**check.to_dict(), "worker": f"{socket.gethostname()}:{os.getpid()}", "at": time.time()},
    )
    warning = check.warning()
    if warning:
        warnings.warn(warning, UserWarning, stacklevel=2)
    return check


def _sample_when_due(sampler: BlockSampler) -> Callable[[float], None]:
    """A ``between`` callback for :func:`_measure` taking the sampler's blocks when due."""

    def between(fraction_done: float) -> None:
        if sampler.due(fraction_done):
            sampler.sample()

    return between


def _measure(
    table: LatencyTable,
    backend: Backend,
    shard: tuple[int, int],
    progress: Callable[[int, int], None] | None,
    on_start: Callable[[int], None] | None,
    between: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Measure this shard's missing points of the table's plan; mark it complete
    when nothing is missing. ``between`` is called with the fraction of the points done
    after each point. Returns BuildResult's counts and ``newly`` (this call completed
    the table)."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    normalized = backend.reference_kind is not None
    if normalized:
        if table.reference is None:
            backend.measure_reference()
            offer = backend.reference_floor_ms
        else:  # resuming, or another shard: start from the table's unit
            offer = backend.reference_floor_ms or table.unit_ms
        backend.reference_ms = table.adopt_reference(
            backend.reference_kind, offer, getattr(backend, "gate", None)
        )
    plan = table.planned()
    i, n = shard
    mine = {(s, a, b) for k, (s, a, b) in enumerate(plan) if k % n == i}
    todo = [p for p in table.missing() if p in mine]
    random.Random(f"{i}/{n}").shuffle(todo)
    if on_start:
        on_start(len(todo))
    t0 = time.perf_counter()
    measured = skipped = 0
    for k, (sig, c_in, c_out) in enumerate(todo):
        timing = backend.measure(sig, c_in, c_out)
        unit = backend.reference_ms if normalized else None
        if table.add_point(sig, c_in, c_out, timing, worker=worker, unit_ms=unit):
            measured += 1
        else:
            skipped += 1
        floor = backend.reference_floor_ms if normalized else None
        if floor is not None and floor < backend.reference_ms:
            # A faster reference run than the table's unit: offer it (the table
            # rescales all its ratios at once) and measure in the new unit.
            backend.reference_ms = table.adopt_reference(
                backend.reference_kind, floor, getattr(backend, "gate", None)
            )
        if between:
            between((k + 1) / len(todo))
        if progress:
            progress(k + 1, len(todo))
    seconds = time.perf_counter() - t0
    if measured:
        table.append_info(
            "builds",
            {
                "worker": worker,
                "shard": f"{i}/{n}",
                "points": measured,
                "seconds": round(seconds, 3),
                "finished_at": time.time(),
            },
        )
    newly = table.mark_complete()
    return {
        "planned": len(plan),
        "measured": measured,
        "skipped": skipped,
        "seconds": seconds,
        "newly": newly,
    }


def _check_build_arguments(
    path: Any,
    backend: Any,
    step: Any,
    strategy: Any,
    coarse: Any,
    shard: Any,
    calibration: Any,
    variants: Any,
    runner_options: Any,
    backend_options: Any,
    check: Any = CHECK_COPIES,
    check_variants: Any = None,
    regime: Any = DEFAULT_REGIME,
) -> None:
    """The checks of :func:`build_table` that need no model, backend or file.

    Raises:
        UserError: the first bad argument, named.
    """
    if not isinstance(backend, (str, Backend)):
        raise UserError(f"backend must be a backend name or a Backend, not {backend!r}")
    if backend_options is not None:
        if not isinstance(backend, str):
            raise UserError("backend_options apply to a backend given by name, not a Backend")
        if not isinstance(backend_options, Mapping):
            raise UserError(f"backend_options must be a mapping, not {backend_options!r}")
    check_grid_options(step, strategy, coarse)
    if not (
        isinstance(shard, tuple)
        and len(shard) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
        and 0 <= shard[0] < shard[1]
    ):
        raise UserError(f"shard must be (i, n) with 0 <= i < n, not {shard!r}")
    if calibration not in CALIBRATIONS:
        raise UserError(f"unknown calibration {calibration!r}; known: {', '.join(CALIBRATIONS)}")
    if not (variants is None or callable(variants) or isinstance(variants, (list, tuple))):
        raise UserError(
            "variants must be a list of modules or a callable (model, example_input, "
            f"alignment) -> list, not {type(variants).__name__}"
        )
    if runner_options is not None and not isinstance(runner_options, Mapping):
        raise UserError(f"runner_options must be a mapping, not {runner_options!r}")
    if isinstance(check, bool) or not isinstance(check, int) or check < 0:
        raise UserError(f"check must be a count of copies (0 or more), not {check!r}")
    if not (
        check_variants is None
        or callable(check_variants)
        or isinstance(check_variants, (list, tuple))
    ):
        raise UserError(
            "check_variants must be a list of modules or a callable (model, example_input, "
            f"alignment, count) -> list, not {type(check_variants).__name__}"
        )
    if regime not in REGIMES:
        raise UserError(f"unknown regime {regime!r}; known: {', '.join(REGIMES)}")
    check_output(path, kind="file", flag="the table file")
