"""Accuracy at equal measured latency: halp-trt against uniform width scaling and
Torch-Pruning's global L2 magnitude pruning.

Real data (scikit-learn's digits, 1797 8x8 images resized to 32x32, one channel), a CIFAR
ResNet, an ONNX Runtime CPU latency table (one thread), target 0.5x of the unpruned
model's predicted latency. Per seed:

1. A dense model is trained (``--pretrain-epochs``); every method starts from it.
2. ``halp-taylor``: HALP's loop (Taylor importance, exponential schedule, ``--steps``
   steps spread over the first half of ``--epochs`` fine-tuning epochs).
   ``halp-sp-lamp``: SP-LAMP scores, one-shot knapsack at the first iteration, then the
   same fine-tuning. Both solve on the table for the 0.5x target.
3. Baselines, each brought to the measured latency of the ``halp-taylor`` model:
   ``uniform`` keeps the same fraction of every prunable channel group (largest L2
   filter norms), ``tp-l2-global`` is Torch-Pruning's ``MagnitudePruner(p=2,
   global_pruning=True)``. Both round widths to the backend's channel alignment (16
   here, Torch-Pruning's ``round_to``), as a careful user would: unaligned widths fall
   off ONNX Runtime's blocked (NCHWc) kernels and run slower than wider aligned ones
   (``uniform-unaligned`` is timed to show it). The knob is chosen on a grid by the
   table's prediction, then the candidate is timed round-robin against the
   ``halp-taylor`` model and tightened while it is more than 2% slower. Aligned widths
   move in steps, so each baseline is also run one step up (``uniform+``,
   ``tp-l2-global+``: the cheapest grid point predicted slower than the matched one);
   the halp-trt model's latency lies between the two. All fine-tune for the same
   ``--epochs`` with the same optimiser settings.
4. All models are timed round-robin in one run (``time_interleaved``, thread clock,
   ONNX Runtime CPU, one intra-op thread), each run once untimed right before each
   timed run: a deployed model runs alone and warm, while eight models taking turns
   evict each other from the caches (timed cold, the 0.5x model measured 0.53x of the
   dense one instead of 0.50x).
5. Equal latency: each baseline's accuracy at the halp-trt model's measured latency is
   interpolated linearly between its two runs (``... at equal latency`` in the
   summary: halp-trt minus baseline, per seed, mean and spread over the seeds).

Two fine-tuning budgets tell different things: with ``--epochs 5`` every method
recovers on digits (a saturated task: one validation image is 0.28 points); with
``--epochs 2 --steps 5 --out bench/results/prune_quality_short.json`` how much a
method keeps at pruning time still shows.

The CIFAR ResNet is ResNet-20 at 1.5x width (24/48/96 channels), not ResNet-56 and
not the standard 16/32/64 ResNet-20: on this CPU ONNX Runtime computes convolutions in
blocks of 16 channels (NCHWc), so a 16-channel stage cannot get any faster, and the
table's smallest reachable latency for the standard ResNet-20 is 0.55x (0.5x is
infeasible); ResNet-56 would triple the training time on two cores.

Run under the benchmark lock (it also takes the lock itself around every timing)::

    .venv/bin/python bench/prune_quality.py

Prints a table and writes bench/results/prune_quality.json.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import math
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from lut_builder.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
LOCK = "/tmp/halp-trt-bench.lock"
#: The deployment every model of a bench run is timed in, and its tables measured on: a
#: backend, its CPU thread count (None on a GPU) and the runners' further options
#: (``device``, ``precision``). ONNX Runtime on one CPU thread unless a bench sets it
#: (``bench/pareto.py --backend torch --device cuda --precision fp16``).
DEPLOY: dict[str, Any] = {"backend": "onnxruntime", "threads": 1, "options": {}}
METHODS = ("halp-taylor", "halp-sp-lamp", "uniform", "uniform+", "tp-l2-global", "tp-l2-global+")
BASELINES = ("uniform", "uniform+", "tp-l2-global", "tp-l2-global+")


def lock_holder(fh: Any) -> int | None:
    """The process holding a ``flock`` on the open file ``fh`` (from /proc/locks), or
    None when none does or it cannot be told (no /proc)."""
    st = os.fstat(fh.fileno())
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        f = line.split()
        if len(f) >= 6 and f[1] == "FLOCK" and f[5] == dev and f[4].isdigit():
            return int(f[4])
    return None


def ancestors(pid: int | None = None) -> set[int]:
    """This process's parent, its parent's parent... (from /proc; empty without it)."""
    out: set[int] = set()
    pid = os.getpid() if pid is None else pid
    while pid > 1:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            break
        pid = next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("PPid:")), 0)
        out.add(pid)
    return out


class InheritedLockError(UserError):
    """The benchmark lock is held by this process or one it runs under (a user error:
    one line, exit code 2, as the scripts print every UserError)."""


def _try_lock(fh: Any, path: str) -> bool:
    """Take the lock on ``fh`` if it is free (True); False if another process holds it.
    Raises InheritedLockError where that process is this one or one it runs under, e.g.
    ``flock LOCK python bench/pareto.py``: the script takes the lock itself around its
    timings, and would wait for its own parent forever."""
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        holder = lock_holder(fh)
        if holder is not None and holder in ancestors() | {os.getpid()}:
            raise InheritedLockError(
                f"the benchmark lock {path} is held by process {holder}, this one "
                "or one it runs under (a flock around the command?): this script takes "
                "the lock itself around its timings and would wait for it forever; run it "
                "without"
            ) from None
        return False


def check_lock_not_inherited(path: str | None = None) -> None:
    """Raise InheritedLockError (one line) when the benchmark lock is held by this process
    or one it runs under (:func:`_try_lock`); scripts call it before any training."""
    try:
        fh = open(path or LOCK, "a")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise UserError(f"cannot open the benchmark lock {path or LOCK}: {exc.strerror}") from None
    with fh:
        if _try_lock(fh, path or LOCK):
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def bench_lock(path: str | None = None, say: Any = None):
    """Hold the machine-wide benchmark lock (no two timing runs overlap): ``path``, or
    :data:`LOCK`, as the ``flock`` command takes it. ``say`` is told how long the wait
    was when it was longer than a second. Raises InheritedLockError at once where the lock is
    held by this process or one it runs under (:func:`_try_lock`)."""
    with open(path or LOCK, "a") as fh:
        t0 = time.perf_counter()
        if not _try_lock(fh, path or LOCK):
            fcntl.flock(fh, fcntl.LOCK_EX)
        waited = time.perf_counter() - t0
        if say is not None and waited > 1:
            say(f"  (waited {waited:.0f} s for {path or LOCK})")
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def deploy_options() -> dict[str, Any]:
    """:data:`DEPLOY`'s backend options: its runners' and its table's (``threads`` where it
    has a thread count)."""
    options = dict(DEPLOY["options"])
    if DEPLOY["threads"] is not None:
        options["threads"] = DEPLOY["threads"]
    return options


def deploy_runner(model: nn.Module, x: torch.Tensor) -> Any:
    """A runner of ``model`` in :data:`DEPLOY`'s deployment."""
    from lut_builder.backends import make_runner

    return make_runner(DEPLOY["backend"], model, x, **deploy_options())


def deploy_feedback(dense: nn.Module, x: torch.Tensor) -> Any:
    """The pruner's measured-latency feedback against ``dense`` in :data:`DEPLOY`'s
    deployment (:class:`halp_trt.prune.MeasuredLatency`)."""
    from halp_trt.prune import MeasuredLatency

    return MeasuredLatency(
        dense, x, backend=DEPLOY["backend"], threads=DEPLOY["threads"],
        runner_options=DEPLOY["options"],
    )  # fmt: skip


def build_model(depth: int, width: int, channels: int) -> nn.Module:
    from halp_trt.models import CifarResNet

    return CifarResNet(depth, 10, channels, width=width)


#: The timing loops of the tables built here (:func:`build_or_open_table`): the per-layer
#: measurer's and the whole-model calibration's. Empty: the backends' defaults and
#: `lut-builder build`'s, as a user's table is measured.
TABLE_LOOP: dict[str, Any] = {}
CALIBRATION_LOOP: dict[str, Any] = {}


def build_or_open_table(path: Path, model: nn.Module, x: torch.Tensor, step: int) -> Any:
    """The measured table at ``path``, built first if missing or incomplete (resumed) and
    calibrated first if it is not (a build whose calibration failed leaves its points:
    they are kept)."""
    from halp_trt.graph import calibration_variants, check_variants
    from lut_builder import LatencyTable, calibrate_overhead
    from lut_builder.backends import get_backend
    from lut_builder.build import build_table
    from lut_builder.latency_model import CHECK_COPIES

    def calibrate(table: Any) -> float:
        # As `lut-builder build` does: affine, on the model and its 3/4 and 1/2 copies,
        # rounded to the grid step (an AVX2 CPU's alignment, 8, is finer than a step-16
        # grid, whose narrowest point is 16), checked on random-width copies.
        return calibrate_overhead(
            table,
            lambda m: deploy_runner(m, x),
            model,
            x,
            variants=calibration_variants(model, x, table.step),
            checks=check_variants(model, x, table.step, CHECK_COPIES),
            **CALIBRATION_LOOP,
        )

    # Looked at under the lock: a bench beside this one building the same table holds it
    # until its build is done (the file exists while it is being built), and a build cut
    # short is resumed.
    with bench_lock():
        if not _complete(path):
            backend = get_backend(DEPLOY["backend"], **deploy_options(), **TABLE_LOOP)
            build_table(path, model, x, backend, step=step, calibrate=calibrate)
            backend.close()
        table = LatencyTable.open(path)
        if table.overhead_ms is None:
            table.close()
            with LatencyTable.open(path, writable=True) as writable:
                calibrate(writable)
            table = LatencyTable.open(path)
    return table


def _complete(path: Path) -> bool:
    """Whether ``path`` holds a table whose every planned point is measured."""
    from lut_builder import LatencyTable

    if not path.exists():
        return False
    with LatencyTable.open(path, force=True) as table:
        return table.complete


def measure_interleaved(
    models: dict[str, nn.Module], x: torch.Tensor, rounds: int, time_runners=None
) -> dict:
    """All models in one run, under the bench lock: per model median, p10, p90 (ms) and the
    median per-round ratio to ``models["dense"]`` (and the runner's ``runner_note``
    where it did not run as the table's layers were timed). ``time_runners(runners, rounds)`` returns
    each runner's per-round times; by default round-robin, one inference each a round
    (``time_interleaved``, each after one untimed), on the runners' clock. The runners are
    :data:`DEPLOY`'s."""
    from lut_builder.timing import time_interleaved

    def round_robin(runners: list, rounds: int) -> list[list[float]]:
        clock = runners[0].clock
        return time_interleaved(runners, warmup=20, rounds=rounds, clock=clock, warm=True)

    names = list(models)
    with bench_lock():
        runners = [deploy_runner(models[n].eval(), x) for n in names]
        notes = [getattr(r, "note", "") for r in runners]  # e.g. run eagerly on a GPU
        try:
            samples = (time_runners or round_robin)(runners, rounds)
        finally:
            for r in runners:
                r.close()
    ref = np.array(samples[names.index("dense")])
    out = {}
    for n, s, note in zip(names, samples, notes):
        q = np.quantile(s, [0.1, 0.5, 0.9])
        out[n] = {
            "median_ms": float(q[1]), "p10_ms": float(q[0]), "p90_ms": float(q[2]),
            "ratio_to_dense": float(np.median(np.array(s) / ref)),
            **({"runner_note": note} if note else {}),
        }  # fmt: skip
    return out


def uniform_prune(dense: nn.Module, x: torch.Tensor, fraction: float, align: int) -> nn.Module:
    """Every prunable group keeps ``fraction`` of its channels (largest L2 filter norms),
    rounded to a multiple of ``align`` (at least ``align``, at most all)."""
    from halp_trt.graph import ChannelGraph, uniform_width
    from halp_trt.importance import get_importance

    scores = get_importance("l2")(ChannelGraph(copy.deepcopy(dense).eval(), x)).scores()
    return uniform_width(dense, x, fraction, align, scores=scores)


def tp_prune(dense: nn.Module, x: torch.Tensor, ratio: float, align: int) -> nn.Module:
    """Torch-Pruning's global L2 magnitude pruning of ``ratio`` of the channels, widths
    rounded to multiples of ``align`` (its ``round_to``)."""
    import warnings

    import torch_pruning as tp

    model = copy.deepcopy(dense).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MagnitudePruner(
            model,
            x,
            importance=tp.importance.MagnitudeImportance(p=2),
            global_pruning=True,
            pruning_ratio=ratio,
            ignored_layers=[model.fc],
            round_to=align,
        )
        pruner.step()
    return model


def measure_ratio(a: nn.Module, b: nn.Module, x: torch.Tensor, rounds: int = 100) -> float:
    """Median per-round latency ratio a / b, timed round-robin in one run (:data:`DEPLOY`'s
    runners, on their clock)."""
    from lut_builder.timing import time_interleaved

    with bench_lock():
        ra, rb = deploy_runner(a.eval(), x), deploy_runner(b.eval(), x)
        try:
            sa, sb = time_interleaved([ra, rb], warmup=10, rounds=rounds, clock=ra.clock, warm=True)
        finally:
            ra.close()
            rb.close()
    return float(np.median(np.array(sa) / np.array(sb)))


def match_latency(
    make, predict, reference: nn.Module, x, knobs, *, both_sides=False, ratio_of=None
):
    """The knob of ``make`` whose model runs as fast as ``reference``, measured
    (``ratio_of(model, reference, x)``: by default :func:`measure_ratio`, round-robin).

    Every knob of the grid is pruned and priced on the table (a grid, not a bisection:
    Torch-Pruning's widths with ``round_to`` are not monotone in its ratio); the
    candidate with the highest predicted latency within the reference's predicted
    latency is taken (ties: more parameters). It is then timed round-robin against the
    reference; while it is more than 2% slower, the predicted budget is lowered by that
    ratio and the choice repeated (at most 3 times). With ``both_sides``, a candidate more
    than 2% faster raises the budget alike, for a table that prices the reference more
    optimistically than the candidates; the candidate returned is then the slowest tried
    within 2% over the reference (else the fastest tried).

    Returns ``(knob, model, measured ratio to reference, history, priced)``; ``priced``
    lists ``(predicted ms, parameters, knob)`` of every grid point.
    """
    priced = []
    for k in knobs:
        m = make(k)
        priced.append((predict(m), sum(p.numel() for p in m.parameters()), k))
    budget = predict(reference)
    history = []
    tried = []
    for _ in range(4):
        fits = [c for c in priced if c[0] <= budget] or [min(priced)]
        pred_ms, _, knob = max(fits)
        if any(t[0] == knob for t in tried):
            break  # the grid gives nothing closer
        model = make(knob)
        ratio = (ratio_of or measure_ratio)(model, reference, x)
        history.append({"knob": knob, "budget_ms": budget, "predicted_ms": pred_ms, "ratio": ratio})
        tried.append((knob, model, ratio))
        if ratio <= 1.02 and (not both_sides or ratio >= 0.98):
            break
        budget /= ratio
    within = [t for t in tried if t[2] <= 1.02]
    knob, model, ratio = (
        max(within, key=lambda t: t[2]) if within else min(tried, key=lambda t: t[2])
    )
    return knob, model, ratio, history, priced


def train_halp(
    dense, data, config, x, table, target, importance, schedule, steps, *, feedback=False,
    min_keep=None, monotone_table=False, window=None, min_interval=None,
):  # fmt: skip
    """HALP's loop on a copy of ``dense``: ``steps`` pruning steps (one for ``oneshot``)
    spread over the first ``window`` (None: the pruner's default, half) of the ``config.epochs``
    fine-tuning epochs, at least ``min_interval`` iterations apart (None: the pruner's
    default; fewer steps where the window is shorter, as ``halp-trt prune`` fits them),
    importance ``importance``, the plan solved on ``table`` for
    ``target``, on ``config``'s device; with ``feedback``, each step's plan measured
    against ``dense`` in :data:`DEPLOY`'s deployment (ONNX Runtime, one thread, unless a
    bench set another) and the budgets corrected
    (:class:`halp_trt.prune.MeasuredLatency`); ``min_keep``: the pruner's floor (None:
    its default); ``monotone_table``: plan on the table's monotone envelope instead of
    its points as measured (the pruner's default).

    Returns ``(pruned model, plan, facts)``.
    """
    from halp_trt.prune import Pruner
    from halp_trt.prune.schedule import DEFAULT_SPREAD, MIN_INTERVAL, fit_schedule
    from halp_trt.train import Trainer

    measure = deploy_feedback(dense, x) if feedback else None
    device = config.resolved_device()
    model = copy.deepcopy(dense).to(device)  # trained and pruned where the config trains
    trainer = Trainer(model, data, config)
    per_epoch = trainer.iterations_per_epoch
    if schedule == "oneshot":
        steps, interval = 1, 1
    else:  # the steps as halp-trt prune fits them to the run
        fit = fit_schedule(
            steps, per_epoch * config.epochs, schedule=schedule,
            spread=DEFAULT_SPREAD if window is None else window,
            min_interval=MIN_INTERVAL if min_interval is None else min_interval,
        )  # fmt: skip
        steps, interval = fit.steps, fit.interval
    pruner = Pruner(
        model, x.to(device), table, target, importance=importance, steps=steps, interval=interval,
        schedule=schedule, feedback=measure, min_keep=min_keep,
        monotone_table=monotone_table,
    )  # fmt: skip
    trainer.pruner = pruner
    try:
        result = trainer.fit()
        slim, plan = pruner.finalize()  # may still prune (and measure) to the target
    finally:
        if measure is not None:
            measure.close()
    return (
        slim,
        plan,
        {
            **plan_facts(pruner, plan),
            "interval": interval,
            "steps": steps,
            "pruning_overhead": result.pruning_overhead,
            "pruner_s": result.pruner_s,
            "pruning_iterations_s": result.pruning_iterations_s,
            "timers_s": dict(pruner.timers),
            "slimmed_at": result.slimmed_at,
            "slim_s": result.slim_s,
            "kept": {str(g): len(k) for g, k in plan.keep.items()},
            "min_keep": pruner.min_keep,
            **before_bn(result),
        },
    )


def plan_facts(pruner, plan) -> dict[str, Any]:
    """What a finished pruner's plan predicted and each of its steps measured (the
    measured ratios None where there was no feedback)."""
    return {
        "target_ms": plan.target_ms,
        "plan_predicted_ms": plan.predicted_ms,
        "base_predicted_ms": plan.base_ms,
        "steps_measured_ratio": [h.measured_ratio for h in pruner.history],
        "steps_measured_halfwidth": [h.measured_halfwidth for h in pruner.history],
        "steps_feedback_tries": [[list(t) for t in h.feedback_tries] for h in pruner.history],
        "steps_predicted_ratio": [h.predicted_ms / plan.base_ms for h in pruner.history],
    }


def before_bn(result) -> dict[str, float]:
    """``val_acc_before_bn``: the last epoch's validation accuracy of a
    :class:`~halp_trt.train.TrainResult`, before the trainer re-estimated the BatchNorm
    statistics (none when it did not)."""
    if not result.bn_batches or not result.epochs:
        return {}
    return {"val_acc_before_bn": result.epochs[-1]["val_acc"]}


def run_seed(seed: int, args, data, table, x, log) -> dict[str, Any]:
    from halp_trt.prune import network_latency
    from halp_trt.train import TrainConfig, Trainer, evaluate
    from lut_builder.signatures import model_layers

    def config(epochs: int) -> TrainConfig:
        return TrainConfig(
            epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, device="cpu"
        )

    def predicted(model: nn.Module) -> float:
        layers = model_layers(model, x)
        return network_latency(table, layers, {n: (i.c_in, i.c_out) for n, i in layers.items()})

    def facts(model: nn.Module, t0: float, extra: dict | None = None) -> dict[str, Any]:
        loss, acc = evaluate(model, data.val)
        return {
            "val_acc": acc,
            "val_loss": loss,
            "predicted_ms": predicted(model),
            "params": sum(p.numel() for p in model.parameters()),
            "macs": sum(i.macs for i in model_layers(model, x).values()),
            "seconds": time.perf_counter() - t0,
            **(extra or {}),
        }

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    dense = build_model(args.depth, args.width, args.channels)
    Trainer(dense, data, config(args.pretrain_epochs)).fit()
    out: dict[str, Any] = {"dense": facts(dense, t0)}
    log(f"seed {seed}: dense val acc {out['dense']['val_acc']:.4f}")
    models: dict[str, nn.Module] = {"dense": dense}

    for name, importance, schedule in (
        ("halp-taylor", "taylor", "exp"),
        ("halp-sp-lamp", "sp-lamp", "oneshot"),
    ):
        t0 = time.perf_counter()
        slim, plan, extra = train_halp(
            dense, data, config(args.epochs), x, table, args.target, importance, schedule,
            args.steps,
        )  # fmt: skip
        models[name] = slim
        out[name] = facts(slim, t0, extra)
        log(
            f"seed {seed}: {name} val acc {out[name]['val_acc']:.4f}, predicted "
            f"{plan.predicted_ms:.4f} ms (target {plan.target_ms:.4f})"
        )

    reference = models["halp-taylor"]
    align = table.alignment
    for name, make, knobs in (
        ("uniform", lambda f: uniform_prune(dense, x, f, align), np.arange(1, 50) / 50),
        ("tp-l2-global", lambda r: tp_prune(dense, x, r, align), np.arange(0, 91) / 100),
    ):
        t0 = time.perf_counter()
        knob, model, ratio, history, priced = match_latency(make, predicted, reference, x, knobs)
        # Aligned widths move in steps: also the next step up, the cheapest grid point
        # predicted slower than the matched one, so the reference sits between the two.
        chosen_ms = predicted(model)
        above = [c for c in priced if c[0] > chosen_ms * 1.001]
        runs = [(name, knob, model, {"matched_ratio": ratio, "matching": history})]
        if above:
            a_ms, _, a_knob = min(above, key=lambda c: (c[0], -c[1]))
            runs.append((f"{name}+", a_knob, make(a_knob), {"predicted_before_ms": a_ms}))
        for run_name, k, m, extra in runs:
            t1 = time.perf_counter()
            Trainer(m, data, config(args.epochs)).fit()
            models[run_name] = m
            out[run_name] = facts(m, t1 if run_name != name else t0, {"knob": k, **extra})
            log(
                f"seed {seed}: {run_name} ({'fraction' if 'uniform' in name else 'ratio'} "
                f"{k:.3f}) val acc {out[run_name]['val_acc']:.4f}, predicted "
                f"{out[run_name]['predicted_ms']:.4f} ms"
            )
    # The same uniform fraction without rounding to the alignment, timed only: what
    # unaligned widths cost on this backend.
    models["uniform-unaligned"] = uniform_prune(dense, x, out["uniform"]["knob"], 1)

    timing = measure_interleaved(models, x, args.rounds)
    for name in models:
        out.setdefault(name, {"predicted_ms": predicted(models[name])})["measured"] = timing[name]
    return out


def summarise(per_seed: dict[int, dict], target_ms: float, fraction: float | None) -> dict:
    """Mean, spread and per-seed figures; ``fraction``: the target as a fraction of the
    unpruned latency (``0.5x``), checked against the measured ratio to the dense model
    timed in the same run."""
    summary: dict[str, Any] = {}
    names = [n for n in ("dense", *METHODS) if all(n in s for s in per_seed.values())]
    summary["methods"] = names
    for name in names:
        accs = [s[name]["val_acc"] for s in per_seed.values()]
        ratio = [
            s[name]["measured"]["median_ms"] / s["halp-taylor"]["measured"]["median_ms"]
            for s in per_seed.values()
        ]
        meas = [s[name]["measured"]["median_ms"] for s in per_seed.values()]
        summary[name] = {
            "val_acc_mean": statistics.fmean(accs),
            "val_acc_std": statistics.pstdev(accs),
            "val_acc": accs,
            "measured_ms_mean": statistics.fmean(meas),
            "measured_ms": meas,
            "measured_vs_target": [m / target_ms - 1 for m in meas],
            "measured_vs_halp_taylor": ratio,
            "measured_ratio_to_dense": [
                s[name]["measured"]["ratio_to_dense"] for s in per_seed.values()
            ],
        }
        if fraction:
            summary[name]["ratio_to_dense_vs_target"] = [
                r / fraction - 1 for r in summary[name]["measured_ratio_to_dense"]
            ]
    summary["uniform-unaligned"] = {
        "measured_ms": [s["uniform-unaligned"]["measured"]["median_ms"] for s in per_seed.values()],
        "vs_aligned": [
            s["uniform-unaligned"]["measured"]["median_ms"] / s["uniform"]["measured"]["median_ms"]
            for s in per_seed.values()
        ],
    }
    for halp in ("halp-taylor", "halp-sp-lamp"):
        for base in (b for b in BASELINES if b in names):
            d = [s[halp]["val_acc"] - s[base]["val_acc"] for s in per_seed.values()]
            summary[f"{halp} - {base}"] = {
                "acc_diff_mean": statistics.fmean(d),
                "acc_diff_min": min(d),
                "acc_diff_max": max(d),
                "per_seed": d,
                "latency_ratio": [
                    s[halp]["measured"]["median_ms"] / s[base]["measured"]["median_ms"]
                    for s in per_seed.values()
                ],
            }
    for halp in ("halp-taylor", "halp-sp-lamp"):
        for base in ("uniform", "tp-l2-global"):
            if base in names and f"{base}+" in names:
                summary[f"{halp} - {base} at equal latency"] = equal_latency(per_seed, halp, base)
    over = [s["halp-taylor"]["pruning_overhead"] for s in per_seed.values()]
    summary["pruning_overhead"] = {"per_seed": over, "max": max(over)}
    return summary


def equal_latency(per_seed: dict[int, dict], halp: str, base: str) -> dict[str, Any]:
    """``halp``'s accuracy minus ``base``'s at ``halp``'s measured latency, per seed.

    Aligned widths move in steps, so a baseline cannot be brought to exactly the same
    latency; it is trained at two adjacent steps (``base`` and ``base+``), and its
    accuracy at ``halp``'s measured latency (ratio to the dense model, timed in the same
    run) is interpolated linearly between the two. When the two do not bracket it, the
    nearer one is used and the seed is reported as not bracketed.
    """
    diffs, bracketed, at = [], [], []
    for s in per_seed.values():
        r_h, acc_h = s[halp]["measured"]["ratio_to_dense"], s[halp]["val_acc"]
        pts = sorted(
            (s[n]["measured"]["ratio_to_dense"], s[n]["val_acc"]) for n in (base, f"{base}+")
        )
        (r1, a1), (r2, a2) = pts
        inside = r1 <= r_h <= r2
        if inside and r2 > r1:
            acc_b = a1 + (a2 - a1) * (r_h - r1) / (r2 - r1)
        else:
            acc_b = a1 if abs(r_h - r1) <= abs(r_h - r2) else a2
        diffs.append(acc_h - acc_b)
        bracketed.append(inside)
        at.append(r_h)
    return {
        "acc_diff_mean": statistics.fmean(diffs),
        "acc_diff_std": statistics.pstdev(diffs),
        "per_seed": diffs,
        "bracketed": bracketed,
        "halp_ratio_to_dense": at,
    }


def print_table(per_seed: dict[int, dict], summary: dict, target_ms: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"digits 32x32, ONNX Runtime CPU, target {target_ms:.4f} ms (0.5x)")
    table.add_column("method")
    table.add_column("val acc (mean ± std)", justify="right")
    table.add_column("per seed", justify="right")
    table.add_column("measured ms", justify="right")
    table.add_column("vs target (abs)", justify="right")
    table.add_column("/dense vs target", justify="right")
    table.add_column("vs halp-taylor", justify="right")
    for name in summary["methods"]:
        s = summary[name]
        table.add_row(
            name,
            f"{s['val_acc_mean']:.4f} ± {s['val_acc_std']:.4f}",
            " ".join(f"{a:.3f}" for a in s["val_acc"]),
            " ".join(f"{m:.4f}" for m in s["measured_ms"]),
            " ".join(f"{v:+.1%}" for v in s["measured_vs_target"]),
            " ".join(f"{v:+.1%}" for v in s.get("ratio_to_dense_vs_target", [])),
            " ".join(f"{v:.3f}" for v in s["measured_vs_halp_taylor"]),
        )
    console = Console(width=150)
    console.print(table)
    for key, s in summary.items():
        if key.endswith("at equal latency"):
            console.print(
                f"{key}: accuracy {s['acc_diff_mean']:+.4f} ± {s['acc_diff_std']:.4f} "
                "(per seed "
                + " ".join(
                    f"{d:+.4f}{'' if b else ' (not bracketed)'}"
                    for d, b in zip(s["per_seed"], s["bracketed"])
                )
                + ")"
            )
        elif " - " in key:
            console.print(
                f"{key}: accuracy {s['acc_diff_mean']:+.4f} (min {s['acc_diff_min']:+.4f}, max "
                f"{s['acc_diff_max']:+.4f}); latency ratio "
                + " ".join(f"{r:.3f}" for r in s["latency_ratio"])
            )
    u = summary["uniform-unaligned"]
    console.print(
        "uniform without channel alignment (same fraction, not trained): "
        + " ".join(
            f"{m:.4f} ms ({r:.2f}x aligned)" for m, r in zip(u["measured_ms"], u["vs_aligned"])
        )
    )
    o = summary["pruning_overhead"]
    console.print(
        "pruning machinery / rest of the iterations it ran in: "
        + " ".join(f"{v:.1%}" for v in o["per_seed"])
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--width", type=int, default=24)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pretrain-epochs", type=int, default=6)
    p.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs, every method")
    p.add_argument("--steps", type=int, default=10, help="HALP pruning steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--target", default="0.5x")
    p.add_argument("--step", type=int, default=8, help="table grid step")
    p.add_argument("--table", default=None, help="table file (built if missing)")
    p.add_argument("--rounds", type=int, default=200, help="interleaved timing rounds")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training")
    p.add_argument("--out", default=str(ROOT / "bench/results/prune_quality.json"))
    args = p.parse_args(argv)
    try:
        check_lock_not_inherited()  # before any training
    except UserError as exc:  # the lock held by a flock around this run, or unopenable
        print(f"prune_quality.py: error: {exc}", file=sys.stderr)
        return 2

    from halp_trt.prune.schedule import target_fraction
    from halp_trt.train import load_data

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    x = torch.randn(1, args.channels, 32, 32)
    name = f"r{args.depth}w{args.width}c{args.channels}"
    table_path = Path(args.table or f"/tmp/prune_quality_{name}_s{args.step}.db")
    torch.manual_seed(0)
    table = build_or_open_table(
        table_path, build_model(args.depth, args.width, args.channels).eval(), x, args.step
    )
    data = load_data("digits", channels=args.channels, size=(32, 32))

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.0f} s] {msg}", flush=True)

    per_seed = {}
    for seed in args.seeds:
        per_seed[seed] = run_seed(seed, args, data, table, x, log)
    target_ms = per_seed[args.seeds[0]]["halp-taylor"]["target_ms"]
    fraction = target_fraction(args.target)
    summary = summarise(per_seed, target_ms, fraction)
    print_table(per_seed, summary, target_ms)
    result = {
        "command": "python bench/prune_quality.py "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "model": f"CifarResNet(depth={args.depth}, width={args.width}, in_channels={args.channels})",
        "data": "digits 32x32 (1437 train / 360 val)",
        "target": args.target,
        "target_ms": target_ms,
        "table": {
            "file": table_path.name,
            "fingerprint": table.fingerprint,
            "alignment": table.alignment,
            "step": table.step,
            "overhead_ms": table.overhead_ms,
            "scale": table.scale,
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "table")},
        "summary": summary,
        "seeds": {str(k): v for k, v in per_seed.items()},
        "host": {"python": platform.python_version(), "torch": torch.__version__},
        "seconds": time.perf_counter() - t_start,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from lut_builder.fileio import atomic_write_json

    atomic_write_json(out, result, indent=1, default=float)
    print(f"wrote {out} ({result['seconds'] / 60:.1f} min)")
    return 0 if math.isfinite(summary["pruning_overhead"]["max"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
