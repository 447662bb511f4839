"""The network latency model: ``scale * sum(layer latencies) + overhead``.

:func:`predict_latency` evaluates it on a :class:`~lut_builder.table.LatencyTable`;
:func:`fit_calibration` fits its two terms to whole-network measurements, and
:func:`calibrate_overhead` makes those measurements (on the model and narrowed copies
of it, see :func:`~lut_builder.end_to_end.measure_end_to_end`) and stores the terms in
the table. The narrowed copies come from the caller or from a hook another package
installs (:func:`variants_hook`): lut-builder itself cannot narrow a model.

The calibration also checks the fitted model on copies it was not fitted on, each
prunable group at its own random width, as pruning leaves a network (``checks`` of
:func:`calibrate_overhead`, from the caller or the :data:`CHECK_HOOK` entry point; see
:func:`check_latency_model`): every table says how well it predicts such networks.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .end_to_end import DEFAULT_REGIME, BlockTimings, stored_regime
from .signatures import LayerSignature
from .table import LatencyTable

#: The entry point group of the hook that makes narrowed copies of a model.
VARIANTS_HOOK = "lut_builder.calibration_variants"
#: ``variants(model, example_input, alignment) -> list of narrowed copies``.
VariantsFactory = Callable[[Any, Any, int], Sequence[Any]]
#: The entry point group of the hook that makes random-width copies to check on:
#: ``check(model, example_input, alignment, count) -> list of copies``.
CHECK_HOOK = "lut_builder.check_variants"
#: How many random-width copies a build checks its latency model on by default.
CHECK_COPIES = 4
#: A check whose speed-ups err by more (median, max) is reported as a warning: the
#: latency model then predicts pruned networks worse than a deployment can rely on.
CHECK_LIMITS = (0.05, 0.10)


def predict_latency(
    table: LatencyTable,
    layers: Iterable[tuple[LayerSignature, int, int]],
    *,
    overhead: bool = True,
) -> float:
    """Predicted network latency: ``scale * sum(layer lookups) + overhead_ms``.

    Args:
        table: the latency table.
        layers: ``(signature, c_in, c_out)`` of every conv/linear layer of the network.
        overhead: apply the table's calibrated terms (scale 1 and overhead 0 if it has
            none); False gives the plain sum of the layers.

    Returns:
        Milliseconds.

    Raises:
        UserError: as :meth:`LatencyTable.lookup`.
    """
    total = math.fsum(table.lookup(sig, ci, co) for sig, ci, co in layers)
    if overhead:
        total = table.scale * total + (table.overhead_ms or 0.0)
    return total


@dataclass(frozen=True)
class Calibration:
    """The network latency model's terms: ``measured ~ scale * layers + overhead_ms``."""

    overhead_ms: float
    scale: float
    kind: str  # "additive" (scale 1) or "affine"
    note: str = ""

    def predict(self, layers_ms: float) -> float:
        return self.scale * layers_ms + self.overhead_ms


def fit_calibration(
    points: Sequence[tuple[float, float]], *, min_spread: float = 0.15
) -> Calibration:
    """Fit the network latency model to whole-network measurements.

    ``points`` are ``(sum of the layers' table latencies, measured latency)``, the
    unpruned model first. With one point (or points too close together to tell a slope
    from noise: both their layer sums and their measured latencies spanning less than
    ``min_spread`` of the largest) the model is additive: scale 1 and
    ``overhead = measured - layers`` of the first point.

    Either span will do: the models are far enough apart when the whole networks'
    latencies differ well beyond their measurement noise, even where the table's layer
    sums barely move. That is the case of INT8 layers at batch 1, which cost nearly the
    same at every width: for a CIFAR ResNet-56 on ONNX Runtime INT8 (1x3x32x32) the layer
    sums of the model and its 3/4- and 1/2-width copies spanned 13.4% in one build and
    15.2% in another, while the three networks measured 21-25% apart (fitted scale
    1.7-1.8). With the layer sums alone the first build fell back to the additive model,
    which mispredicted the 1/2-width copy by 11% in its own calibration.

    With narrower versions of the model measured too, the model is affine, fitted by
    least squares on relative error. Why: inside a network, a narrower model runs faster
    than its layers timed one by one predict, and more so the narrower it is (smaller
    weights and activations stay in cache; the ops between layers shrink with the
    channels). A constant overhead misses that by up to 20% on a CPU; a scale on the layer
    sum captures it. A fitted scale outside [0.5, 2] is not trusted (the additive model is
    used and the reason kept in ``note``).

    Raises:
        ValueError: no points, or a non-positive or non-finite value.
    """
    if not points:
        raise ValueError("no whole-network measurement to calibrate with")
    for lay, meas in points:
        if not (math.isfinite(lay) and math.isfinite(meas) and lay > 0 and meas > 0):
            raise ValueError(f"bad calibration point: layers {lay!r} ms, measured {meas!r} ms")
    lay0, meas0 = points[0]
    sums = [p[0] for p in points]
    measured = [p[1] for p in points]
    if len(points) < 2:
        return Calibration(meas0 - lay0, 1.0, "additive")
    if max(_span(sums), _span(measured)) < min_spread:
        note = "calibration widths too close together for a slope"
        return Calibration(meas0 - lay0, 1.0, "additive", note)
    # Weighted least squares: minimise sum(((a + b*L - M) / M)^2).
    import numpy as np

    lay = np.array(sums, dtype=float)
    meas = np.array(measured, dtype=float)
    a_mat = np.stack([np.ones_like(lay), lay], axis=1) / meas[:, None]
    (a, b), *_ = np.linalg.lstsq(a_mat, np.ones_like(meas), rcond=None)
    if not (0.5 <= b <= 2.0) or not math.isfinite(a):
        note = f"fitted scale {b:.3f} is implausible; additive overhead used"
        return Calibration(meas0 - lay0, 1.0, "additive", note)
    return Calibration(float(a), float(b), "affine")


def _span(values: Sequence[float]) -> float:
    """``(max - min) / max`` of positive values."""
    return (max(values) - min(values)) / max(values)


def calibrate_overhead(
    table: LatencyTable,
    runner_or_backend: Any,
    model: Any,
    example_input: Any,
    *,
    variants: Sequence[Any] = (),
    warmup: int = 20,
    runs: int | None = None,
    min_time_s: float = 2.0,
    blocks: int = 8,
    regime: str = DEFAULT_REGIME,
    timed: BlockTimings | None = None,
    store: bool = True,
    note: str = "",
    checks: Sequence[Any] = (),
    check_note: str = "",
) -> float:
    """Calibrate the network latency model on whole-network measurements and store it.

    The per-layer table misses what happens between and around the layers: the ops
    between them (pooling, residual adds that are not fused, reshapes), input and output
    layout changes, the runtime's per-inference cost, and that layers inside a network
    run warmer than alone. The unpruned ``model`` is measured end to end; with
    ``variants`` (narrower versions of it, e.g. every group at 3/4 and 1/2 of its
    channels) all are measured interleaved and an affine map ``scale * layers + overhead``
    is fitted (:func:`fit_calibration`), else the overhead is ``measured - layers``.

    Each model's latency is the median of its medians over ``blocks`` blocks of runs
    (:class:`~lut_builder.end_to_end.BlockSampler`): on a shared machine a whole model's
    speed relative to the table's reference moves with the load (a MobileNetV2's
    consecutive 2-second measurements ranged over 11%), so one short measurement fits the
    latency model to whichever state it met. Here the blocks are measured in a row;
    :func:`~lut_builder.build_table` spreads them over the whole build and passes them as
    ``timed``. Each block's medians and their disagreement (``block_spread``) are stored.

    Args:
        table: the table, opened writable when ``store`` is True.
        runner_or_backend: a backend name (``"onnxruntime"``, ``"torch"``,
            ``"tensorrt"``), a callable making a :class:`~lut_builder.backends.Runner`
            for a model (with the backend options the table was built with), or, without
            ``variants``, a runner for ``model``.
        model: the unpruned ``nn.Module``.
        example_input: its input.
        variants: narrower versions of ``model`` (same signatures, fewer channels).
        warmup, runs, min_time_s: the end-to-end timing loop (``runs`` and
            ``min_time_s`` are totals over the blocks; ``runs`` None: the regime's).
        blocks: how many blocks the runs are split into (>= 1).
        regime: how each whole model is timed (:func:`~lut_builder.end_to_end.
            measure_end_to_end`): ``"served"`` (one inference after another, as a model
            is deployed; the default) or ``"round-robin"``. The fit predicts the regime
            it was timed in, and the regime is stored with it.
        timed: the models' blocks already measured (``model`` first, then ``variants``
            in order); nothing is run then and ``runner_or_backend`` is not used.
        store: write the result into the table.
        note: why the calibration is what it is (e.g. why no ``variants`` were given),
            stored with the details unless the fit has a note of its own.
        checks: narrowed copies the fitted model is checked on, not fitted on (e.g.
            every group at a random width); measured with the others, after
            ``variants`` (so ``timed`` has them last). The result is stored as the
            details' ``check`` (:func:`check_latency_model`).
        check_note: why there are no ``checks``, stored as the details' ``check_note``.

    Returns:
        The overhead in milliseconds (negative when the layers measured alone cost more
        than inside the network); the scale is in the table (``table.scale``).

    Raises:
        UserError: a layer of a model is not in the table, or a runner fails.
    """
    from .signatures import model_layers

    def layer_sum(m: Any) -> tuple[float, int]:
        layers = model_layers(m, example_input)
        items = [(i.signature, i.c_in, i.c_out) for i in layers.values()]
        return predict_latency(table, items, overhead=False), len(layers)

    fitted = 1 + len(variants)
    sums = [layer_sum(m) for m in (model, *variants, *checks)]
    if timed is None:
        timed = _measure_blocks(
            runner_or_backend, table, model, example_input, [*variants, *checks],
            blocks=blocks, warmup=warmup, runs=runs, min_time_s=min_time_s, regime=regime,
        )  # fmt: skip
    elif len(timed.blocks[0]) != len(sums):
        raise ValueError(
            f"timed has {len(timed.blocks[0])} models, not the model, its "
            f"{len(variants)} variants and {len(checks)} checks"
        )
    measured = [(s, ms) for (s, _), ms in zip(sums, timed.medians())]
    points = measured[:fitted]
    cal = fit_calibration(points)
    check = None
    if checks:
        try:
            blocks = [timed.block_medians(i) for i in (0, *range(fitted, len(sums)))]
            check = {**check_latency_model(cal, points[0], measured[fitted:], blocks),
                     "regime": timed.regime}  # fmt: skip
        except ValueError as exc:  # a check that cannot be computed must not cost the fit
            check_note = f"the latency model could not be checked: {exc}"
    if store:
        table.set_overhead(
            cal.overhead_ms,
            {
                "model": cal.kind,
                "note": cal.note or note,
                "measured_ms": points[0][1],
                "layers_ms": sums[0][0],
                "layers": sums[0][1],
                "points": [
                    {"layers_ms": lay, "measured_ms": ms, "predicted_ms": cal.predict(lay)}
                    for lay, ms in points
                ],
                # The model's block medians summarised (n = blocks), and per model.
                "timing": timed.summary(0).to_dict(),
                "blocks": len(timed.blocks),
                "block_runs": timed.n,
                "block_medians_ms": [timed.block_medians(i) for i in range(len(sums))],
                "block_spread": timed.spread(0),
                "runner": timed.runner,
                "clock": timed.clock,
                "regime": timed.regime,
                "normalized": table.reference is not None,
                "calibrated_at": time.time(),
                "check": check,
                "check_note": "" if check is not None else check_note,
            },
            scale=cal.scale,
        )
    return cal.overhead_ms


def check_latency_model(
    cal: Calibration,
    base: tuple[float, float],
    copies: Sequence[tuple[float, float]],
    blocks: Sequence[Sequence[float]] | None = None,
) -> dict[str, Any]:
    """How well a fitted latency model predicts networks it was not fitted on.

    Args:
        cal: the fitted model.
        base: ``(layers_ms, measured_ms)`` of the unpruned model.
        copies: ``(layers_ms, measured_ms)`` of each held-out copy, measured with it.
        blocks: the block medians the measurements are the medians of (the unpruned
            model's, then each copy's, block by block; :class:`~lut_builder.end_to_end.
            BlockTimings`), or None.

    Returns:
        ``copies`` (how many), per copy (``points``) the prediction, its relative error
        and the error of the predicted speed-up over the unpruned model (the prediction
        over the unpruned model's prediction, against the same ratio measured: what
        pruning to a fraction of a model depends on), the median and largest of each
        error in magnitude, and ``within``: whether the speed-ups' errors are within
        :data:`CHECK_LIMITS`. With ``blocks`` (two or more), how precisely the check
        measured the speed-ups: per copy ``speedup_se``, the standard error of its
        measured speed-up (relative; the standard deviation of its per-block speed-ups'
        logarithms over the square root of the blocks), and their median,
        ``speedup_se_median``; a miss within two of them is what measuring again could
        move.

    Raises:
        ValueError: no copies, a value that is not positive and finite, or ``blocks``
            not one list per model of equal lengths.
    """
    if not copies:
        raise ValueError("no copy to check the latency model on")
    ses = speedup_standard_errors(blocks, len(copies)) if blocks is not None else None
    for lay, meas in (base, *copies):
        if not (math.isfinite(lay) and math.isfinite(meas) and lay > 0 and meas > 0):
            raise ValueError(f"bad check point: layers {lay!r} ms, measured {meas!r} ms")
    pred0, meas0 = cal.predict(base[0]), base[1]
    if not pred0 > 0:
        raise ValueError(f"the latency model predicts {pred0!r} ms for the unpruned model")
    rows = []
    for lay, meas in copies:
        pred = cal.predict(lay)
        rows.append(
            {
                "layers_ms": lay,
                "measured_ms": meas,
                "predicted_ms": pred,
                "error": pred / meas - 1,
                "speedup_error": (pred / pred0) / (meas / meas0) - 1,
            }
        )
    errors = [abs(r["error"]) for r in rows]
    speedups = [abs(r["speedup_error"]) for r in rows]
    median, largest = statistics.median(speedups), max(speedups)
    precision = {}
    if ses is not None:
        for r, se in zip(rows, ses):
            r["speedup_se"] = se
        precision = {"speedup_se_median": statistics.median(ses)}
    return {
        "copies": len(rows),
        "error_median": statistics.median(errors),
        "error_max": max(errors),
        "speedup_error_median": median,
        "speedup_error_max": largest,
        "within": median <= CHECK_LIMITS[0] and largest <= CHECK_LIMITS[1],
        **precision,
        "points": rows,
    }


def speedup_standard_errors(blocks: Sequence[Sequence[float]], copies: int) -> list[float] | None:
    """Per copy, the standard error of its measured speed-up over the unpruned model
    from paired block medians (:func:`check_latency_model`), or None with fewer than two
    blocks.

    Args:
        blocks: the unpruned model's block medians, then each copy's, block by block.
        copies: how many copies.

    Raises:
        ValueError: not ``copies + 1`` lists of one length, or a value that is not
            positive and finite.
    """
    if len(blocks) != copies + 1 or len({len(b) for b in blocks}) != 1:
        raise ValueError(
            f"blocks must be {copies + 1} lists of equal length (the model's, then each copy's)"
        )
    n = len(blocks[0])
    if n < 2:
        return None
    for value in (v for b in blocks for v in b):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"bad block median: {value!r} ms")
    base = blocks[0]
    return [
        statistics.stdev(math.log(b0 / b) for b0, b in zip(base, copy)) / math.sqrt(n)
        for copy in blocks[1:]
    ]


def describe_check(check: Mapping[str, Any]) -> str:
    """One line for a stored check (:func:`check_latency_model`), with a warning when its
    speed-ups err beyond :data:`CHECK_LIMITS`."""
    timed = "served" if stored_regime(check) == "served" else "timed round-robin"
    line = (
        f"latency model checked on {check['copies']} random-width copies ({timed}): predicted "
        f"speed-ups off by {check['speedup_error_median']:.1%} median, "
        f"{check['speedup_error_max']:.1%} at most (latencies {check['error_median']:.1%}, "
        f"{check['error_max']:.1%})"
    )
    se = check.get("speedup_se_median")
    if se is not None:
        line += (
            f", measured to ±{2 * se:.1%} (two standard errors over its blocks, median of "
            "the copies)"
        )
    if not check["within"]:
        line += (
            f"; beyond {CHECK_LIMITS[0]:.0%} / {CHECK_LIMITS[1]:.0%}: pruned networks will "
            "not land where this table predicts (measure them, e.g. halp-trt's --feedback)"
        )
        if over_within_scatter(check):
            line += (
                "; over the limits by less than the check's own measurement scatters (two "
                "standard errors), so a second measurement may not confirm it"
            )
    return line


def over_within_scatter(check: Mapping[str, Any]) -> bool:
    """Whether a check (:func:`check_latency_model`) over :data:`CHECK_LIMITS` is over
    each limit it passes by less than two standard errors of its measurement: the median
    miss by less than two of the median standard error, the largest by less than two of
    its own copy's. False for a check within the limits or without standard errors."""
    se = check.get("speedup_se_median")
    if se is None or check["within"]:
        return False
    median, largest = check["speedup_error_median"], check["speedup_error_max"]
    worst = max(check["points"], key=lambda p: abs(p["speedup_error"]))
    return median <= CHECK_LIMITS[0] + 2 * se and largest <= CHECK_LIMITS[1] + 2 * worst.get(
        "speedup_se", se
    )


def _measure_blocks(
    runner_or_backend: Any,
    table: LatencyTable,
    model: Any,
    example_input: Any,
    variants: Sequence[Any],
    **loop: Any,
) -> BlockTimings:
    """:func:`calibrate_overhead`'s measurement when it is given no ``timed``."""
    from .backends import Runner, make_runner
    from .end_to_end import BlockSampler

    if isinstance(runner_or_backend, Runner):
        if variants:
            raise ValueError("calibrating with variants needs a backend name or a runner factory")
        make = None
    elif isinstance(runner_or_backend, str):
        name = runner_or_backend

        def make(m: Any) -> Runner:
            return make_runner(name, m, example_input)
    else:
        make = runner_or_backend
    owned: list[Runner] = []  # the runners made here, closed here
    try:
        if make is None:
            runners = [runner_or_backend]
        else:
            runners = owned
            for m in (model, *variants):
                owned.append(make(m))
        return BlockSampler(table, runners, **loop).finish()
    finally:
        for r in owned:
            r.close()


def calibration_copies(
    variants: Sequence[Any] | VariantsFactory | None, model: Any, example_input: Any, alignment: int
) -> tuple[list[Any], str]:
    """The narrowed copies of ``model`` an affine calibration is fitted on, and, when there
    are none, why (the calibration is then additive).

    Args:
        variants: as for :func:`lut_builder.build_table` (None: the entry point hook).
        model, example_input: the model.
        alignment: the table's channel step.

    Returns:
        ``(copies, note)``.
    """
    return _copies(
        variants, VARIANTS_HOOK, (model, example_input, alignment),
        "no narrowed copies of the model were made (no prunable channel group?): the "
        "latency model is additive",
    )  # fmt: skip


def check_copies(
    checks: Sequence[Any] | Callable[..., Sequence[Any]] | None,
    model: Any,
    example_input: Any,
    alignment: int,
    count: int,
) -> tuple[list[Any], str]:
    """The random-width copies of ``model`` the latency model is checked on, and, when
    there are none, why.

    Args:
        checks: a list of copies, a callable ``checks(model, example_input, alignment,
            count)``, or None: the :data:`CHECK_HOOK` entry point.
        model, example_input: the model.
        alignment: the table's channel step.
        count: how many copies a callable makes; 0: no check.

    Returns:
        ``(copies, note)``.
    """
    if count == 0:
        return [], "no check asked for"
    return _copies(
        checks, CHECK_HOOK, (model, example_input, alignment, count),
        "no random-width copies of the model were made (no prunable channel group?)",
    )  # fmt: skip


def _copies(source: Any, group: str, args: tuple, empty: str) -> tuple[list[Any], str]:
    """The copies ``source`` gives (a list, or a callable called with ``args``; None: the
    hook of entry point ``group``), and, when there are none, why (``empty`` when the
    source made none)."""
    if source is None:
        source, why = variants_hook(group)
        if source is None:
            return [], why
    copies = list(source(*args) if callable(source) else source)
    return (copies, "") if copies else ([], empty)


def check_summary(check: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A stored check (:func:`check_latency_model`) without its per-copy points, for a
    record that names the table it was solved on (a plan file, a bench's JSON)."""
    if not isinstance(check, Mapping):
        return None
    return {k: v for k, v in check.items() if k != "points"}


def variants_hook(group: str = VARIANTS_HOOK) -> tuple[Callable[..., Any] | None, str]:
    """The installed hook of an entry point ``group``, or None and why not.

    ``lut_builder.calibration_variants`` makes the narrowed copies the affine latency
    model is fitted on, :data:`CHECK_HOOK` the random-width copies it is checked on.
    Packages offer them with entry points in those groups (halp-trt:
    ``halp_trt = "halp_trt.graph:calibration_variants"`` and ``check_variants``); with
    several, the first by name is used. lut-builder itself cannot narrow a model (that
    needs the channel groups of a pruning tool), so without a hook the calibration is
    additive and the latency model is not checked.

    Returns:
        ``(hook, "")`` or ``(None, reason)``.
    """
    from importlib import metadata

    if group == VARIANTS_HOOK:
        what, then = "narrowed copies", "the latency model is additive"
    else:
        what, then = "random-width copies", "the latency model is not checked"
    found = sorted(metadata.entry_points(group=group), key=lambda ep: ep.name)
    if not found:
        return None, (
            f"no {what} of the model: none were given and no {group} "
            f"entry point is installed (halp-trt provides one); {then}"
        )
    ep = found[0]
    try:
        return ep.load(), ""
    except Exception as exc:  # a broken plugin must not cost the measured table
        return None, (
            f"the {group} hook {ep.value!r} cannot be loaded ({type(exc).__name__}: {exc}); {then}"
        )
