"""Accuracy against measured latency: halp-trt beside the pruning tools users already have.

For each seed a dense model is trained (``--pretrain-epochs``); every method starts from
it, and for each target (``--targets 0.7x,0.5x,0.3x``) prunes it and fine-tunes for the
same ``--epochs`` (HALP's pruning-while-training included; a search or one-shot pruning
comes before those epochs):

- ``halp-taylor``: HALP's loop (HALP's Taylor importance, exponential schedule,
  ``--steps`` steps over the first half of the epochs, or the fraction
  ``--prune-window``, fitted to the run as ``halp-trt prune`` fits them: at least
  ``--min-interval`` iterations apart, HALP's 40 by default, so a short run prunes in
  fewer steps, down to one) on the measured table (ONNX Runtime CPU, one thread), with
  measured-latency feedback and the pruner's per-group floor;
- ``halp-taylor-monotone``: the same on the table's monotone envelope
  (``Pruner(monotone_table=True)``): what the envelope is worth;
- ``halp-taylor-abs``: the same with ``taylor-abs`` importance (the coupled layers'
  terms summed in absolute value, not the absolute value of their sum), halp-trt's
  default criterion until ``taylor-weights``; ``halp-taylor-abs-mean`` with the terms
  averaged over the coupled layers instead (``taylor-abs-mean``); ``halp-taylor-l2``
  with their L2 norm (``taylor-l2``, between the two); ``halp-taylor-abs-concave``
  with each group's value concave in the score it keeps (``S * (2r - r**2)`` for a
  kept fraction ``r`` of its score ``S``, where the sum is ``S * r``: a value that adds
  per channel puts the knapsack's plans in a corner, this one between);
  ``halp-taylor-weights`` with ``taylor-weights`` (a channel scored on the weights of
  the layers that write and read it, ``sum |w * dL/dw|`` element by element, as
  Torch-Pruning's group Taylor, not on its BatchNorms): halp-trt's default criterion
  in HALP's loop until ``auto`` (in a run too short for two steps, all of this bench's,
  ``halp-trt prune`` prunes before training: ``halp-taylor-weights-calib``, and with
  ``auto`` ``halp-auto-calib``, below); ``halp-taylor-weights-norm``
  the same with each group's scores over their mean (Torch-Pruning's normaliser, below);
  ``halp-taylor-weights-summed`` (``-norm``) with each weight's ``w * dL/dw`` summed over
  the pruning window before its magnitude, as Torch-Pruning takes one summed gradient;
  ``halp-taylor-abs-floor`` with every group keeping at least the target's fraction of
  its width (:func:`target_floor`: 0.7 of each group at 0.7x);
  ``halp-taylor-abs-oneshot`` with ``taylor-abs`` in one shot (one minibatch of
  scores): the schedule of ``halp-sp-lamp`` with the criterion of the product;
- ``halp-taylor-abs-calib``, ``halp-taylor-weights-calib``,
  ``halp-taylor-weights-norm-calib``, ``halp-taylor-weights-mean-calib`` (each
  channel's terms averaged over its layers: halp-trt's ``taylor-weights-mean``, what
  ``auto`` runs from 0.55x up; :func:`terms_averaged` gives any criterion so),
  ``halp-taylor-weights-root-calib`` (summed, over the square root of their count,
  :func:`terms_root`): halp-trt's plan
  (the criterion, the knapsack on the measured table, the floor, the feedback) on
  Torch-Pruning's path: scored on the dense model over the same training batches
  Torch-Pruning's Taylor takes its gradients from, no weight updated, and pruned
  before the first fine-tuning iteration, so that
  the whole budget fine-tunes the final widths (the others score while training and
  prune a few iterations in); ``halp-taylor-weights-calib`` is, in this bench's
  loop, the path ``halp-trt prune`` and ``halp-trt run`` take by default in a run too
  short for two of HALP's steps (``PruneConfig.short_run``), as this bench's runs are
  (they score the first 8 minibatches of a pass, with the trainer's loss);
  ``halp-taylor-weights-calib4`` the same on the first 4 of those batches, as many as
  a one-step pruning while training scores on in the 2-epoch runs: whether the batches
  or the path make the difference;
  ``halp-taylor-weights-calib-steps`` the same in ``--steps`` knapsack steps of HALP's
  schedule before training, re-scored on the batches as the model narrows;
  ``halp-taylor-abs-calib16``, ``halp-taylor-weights-calib16`` on 16 batches (the 8 and
  the next 8), beside ``tp-taylor16``: whether more scored batches help either;
  ``halp-taylor-weights-calib-floor`` with every group keeping at least the target's
  fraction of its width (:func:`target_floor`, as ``halp-taylor-abs-floor``);
  ``halp-taylor-weights-concave-calib`` with each group's value concave in the score it
  keeps (:func:`concave_value`, as ``halp-taylor-abs-concave``), which spreads a cut over
  groups where the additive value takes it from the few that score least;
  ``halp-taylor-weights-calib-first`` with the groups of the first stage (written at the
  input's resolution) keeping at least the target's fraction of their width
  (:func:`first_stage_floor`), the others the pruner's floor;
  ``halp-taylor-fisher-calib`` with ``taylor-fisher`` (each minibatch's BatchNorm
  Taylor score squared, then averaged: the empirical Fisher information);
  ``halp-auto-calib`` with ``auto`` (``taylor-fisher`` below 0.55x of the dense
  latency where the residual streams are narrower than half the layers they feed,
  ``taylor-weights-mean`` otherwise: the default) and ``halp-auto-macs-calib``
  the same on the MACs table (the ablation of what the default ships);
- ``halp-sensitivity-calib``: the same path with a criterion that measures instead of
  estimating (halp-trt's ``sensitivity-loss``, through :func:`sensitivity`, which scores
  on the images FastNAS scores on): each group's loss on training images at up to six
  widths, alone, BatchNorm statistics re-estimated, as FastNAS scores its candidates;
  halp-trt's knapsack on the measured table then picks the widths FastNAS picks by a
  threshold under FLOPs; ``halp-sensitivity-max-calib`` the same with each group's
  loss increase to the eighth power, so that the knapsack bounds the largest increase,
  as FastNAS's threshold does, instead of their sum; ``halp-sensitivity-acc-calib``
  with each group's accuracy dropped instead of its loss gained, FastNAS's score
  (halp-trt's ``sensitivity``; the three share one measurement per dense model);
  ``halp-sensitivity`` halp-trt's ``--importance sensitivity --calibration-batches 8``
  as it ships: the same, each subnet scored on the 8 calibration batches themselves;
  ``halp-sensitivity-tie`` the same with :data:`SENSITIVITY_LOSS_WEIGHT` times the loss
  a width gains added to the accuracy it drops (``Sensitivity(loss_weight=...)``);
- ``halp-taylor-norm``, ``halp-taylor-abs-norm``: ``taylor`` / ``taylor-abs`` with each
  group's scores divided by their mean over its channels still alive (Torch-Pruning's
  ``normalizer="mean"``): whether groups of different sizes and depths need their
  scores put on one scale before the knapsack compares them; ``halp-taylor-abs-layers``
  the ``-norm`` scores times the number of terms each channel sums (the BatchNorms its
  group couples), so a channel's value grows with the layers it touches, as its
  latency does, without its layers' gradient scale (:func:`layer_weighted`);
- ``halp-taylor-macs``: the same importance, solver and schedule on a table of the same
  grid whose costs are MACs (lut_builder's analytic backend, compute-bound, no launch
  cost, the measured table's channel alignment): what measuring is worth;
  ``halp-taylor-abs-macs`` the same with ``taylor-abs`` (the default criterion until
  ``taylor-weights``), ``halp-taylor-weights-macs`` with ``taylor-weights`` (the
  default's ablation in HALP's loop); ``halp-taylor-weights-macs-calib`` the path of
  ``halp-taylor-weights-calib`` on the MACs table (the ablation of what a short run
  ships);
- ``halp-sp-lamp``: SP-LAMP scores, one-shot knapsack on the measured table;
  ``halp-sp-lamp-calib`` the same scores on the dense model, pruned before training (the
  path of ``halp-taylor-weights-calib``, above);
  ``halp-sp-lamp-exp`` the same scores in HALP's loop (exponential schedule, ``--steps``
  steps, feedback, floor), the schedule of ``halp-taylor-abs``: which of the two, the
  criterion or the schedule, makes them differ;
- ``tp-l2``, ``tp-taylor``: Torch-Pruning global pruning (group L2 magnitude, group
  Taylor on a few training batches), ``round_to`` = the channel step of halp-trt's
  solver (the table's alignment, or its grid step where coarser); ``tp-taylor16`` with
  its gradients summed over 16 batches instead of 8;
- ``modelopt-fastnas``: NVIDIA ModelOpt FastNAS under a FLOPs constraint (the target
  fraction of the dense FLOPs), channel divisor = the same step, its subnets scored on
  training images (``--fastnas-score``); a bench-only extra (``pip install .[bench]``):
  recorded as failed, with its error, where it is not installed or fails; run a second
  time (``modelopt-fastnas+``) at the FLOPs bound that puts its model on the other side
  of the reference's measured latency (the bound scaled by the latency ratio still to
  cover and 3% past it, then along the slope of the last two tries, searched again on the
  first search's profile of the subnets and timed against the reference, at most 3
  tries, a bound that returns the same subnet again not counted as a point; recorded as
  failed where none crosses);
- ``uniform``: every prunable group at one fraction of its width (largest L2 norms),
  rounded to the same step.

The knob-driven methods (``tp-*``, ``uniform``) are brought to the measured latency of
the reference model (``--reference``, by default ``halp-auto-calib``, the shipped default
(``auto``) on the path ``halp-trt prune`` takes, else ``halp-taylor-weights``, else
``halp-taylor-abs``, else ``halp-taylor``; ``match_latency`` of
bench/prune_quality.py: grid priced on
the table, then timed against the reference and brought within 2% of it from either
side: the table prices halp-trt's plans more optimistically than the baselines'), and
run once more one alignment step wider (``tp-l2+``...), so the halp-trt model's latency
lies between the two. Where the reference is not run or failed, they are matched to the
measured table's plan for the target (L2 scores, untrained).

All models of one seed and target are timed round-robin with the dense one in one run
(ONNX Runtime CPU, one intra-op thread, under the bench lock); with ``--timing blocks``
each model runs one block of back-to-back inferences a round instead: as the pruner's
feedback times, and as a model is served (one inference each between other models'
inferences, a small model runs slower). Accuracy at equal
latency: each method's accuracy at the reference's measured latency ratio, interpolated
linearly along that method's own points of the same seed (its runs at every target and
its ``+`` run), marked ``bracketed`` when they lie on both sides.

``--backend torch`` times every model, and measures the table, with torch instead (one
CPU thread); with ``--device cuda --precision fp16`` on the GPU: each model replayed as
one CUDA graph in channels_last, as the torch backend times its table's layers, on the
wall clock in chunks (as the pruner's feedback times there), and every model trained on
that GPU. A GPU is where a MAC count is furthest from the latency (an H200's ResNet-18
table: MACs miss random widths' speed-ups by 52% median, the table by 2%), so where
measuring should pay most.

Bad input (unknown method, a target at or above 1x, a data spec the model cannot take,
an output that cannot be written) stops it with one line and exit code 2 before any
training. A method that fails on one seed is recorded as failed with its error and the
bench goes on. The JSON and the plot are rewritten after every seed and target. A run
that a defect since fixed produced can be set aside in a committed result without
rewriting its figures: its ``status`` becomes ``"excluded"``, with ``"excluded"`` saying
why; the summary counts it apart, and bench/pareto_pool.py, bench/pareto_pairs.py and
every other reader of these files take only ``"ok"`` runs.

``--keep`` adds the seeds run to the result already in ``--out`` (same settings
otherwise; a seed run again replaces its old runs), so seeds can be run apart.

``--dense-finetune`` also trains a copy of each seed's dense model for ``--epochs``, the
training every method's model gets after its pruning, unpruned (``finetuned_val_acc`` of
the seed's dense entry, the mean in the summary, a dotted line in the plot): where the
pruned models reach it, the training budget sets their accuracy, not the channels kept.

Run under the benchmark lock (it also takes the lock itself around every timing)::

    .venv/bin/python bench/pareto.py --model halp_trt.models:mobilenetv2_cifar \\
        --data digits --input-shape 8,3,16,16 --targets 0.5x --seeds 0 \\
        --out bench/results/pareto_mobilenetv2.json
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import math
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import prune_quality  # noqa: E402
from prune_quality import (  # noqa: E402
    before_bn,
    build_or_open_table,
    match_latency,
    measure_interleaved,
    plan_facts,
    train_halp,
    uniform_prune,
)

from halp_trt.prune.schedule import DEFAULT_SPREAD, MIN_INTERVAL  # noqa: E402

METHODS = (
    "halp-taylor",
    "halp-taylor-monotone",
    "halp-taylor-abs",
    "halp-taylor-abs-floor",
    "halp-taylor-norm",
    "halp-taylor-abs-norm",
    "halp-taylor-abs-layers",
    "halp-taylor-abs-mean",
    "halp-taylor-l2",
    "halp-taylor-abs-concave",
    "halp-taylor-weights",
    "halp-taylor-weights-norm",
    "halp-taylor-weights-summed",
    "halp-taylor-weights-summed-norm",
    "halp-taylor-abs-oneshot",
    "halp-taylor-abs-calib",
    "halp-taylor-weights-calib",
    "halp-taylor-weights-norm-calib",
    "halp-taylor-weights-mean-calib",
    "halp-taylor-weights-root-calib",
    "halp-taylor-weights-calib4",
    "halp-taylor-weights-calib-steps",
    "halp-taylor-abs-calib16",
    "halp-taylor-weights-calib16",
    "halp-taylor-weights-calib-floor",
    "halp-taylor-weights-concave-calib",
    "halp-taylor-weights-calib-first",
    "halp-taylor-fisher-calib",
    "halp-auto-calib",
    "halp-auto-macs-calib",
    "halp-sensitivity-calib",
    "halp-sensitivity-max-calib",
    "halp-sensitivity-acc-calib",
    "halp-sensitivity",
    "halp-sensitivity-tie",
    "halp-taylor-macs",
    "halp-taylor-abs-macs",
    "halp-taylor-weights-macs",
    "halp-taylor-weights-macs-calib",
    "halp-sp-lamp",
    "halp-sp-lamp-exp",
    "halp-sp-lamp-calib",
    "tp-l2",
    "tp-taylor",
    "tp-taylor16",
    "modelopt-fastnas",
    "uniform",
)
#: Methods pruned by a knob brought to the reference's measured latency, run twice.
KNOB_METHODS = ("tp-l2", "tp-taylor", "tp-taylor16", "uniform")
#: Methods run a second time on the other side of the reference's measured latency (a
#: ``+`` run): the knob methods, and FastNAS at a second FLOPs bound
#: (:func:`fastnas_bracket`).
BRACKETED_METHODS = (*KNOB_METHODS, "modelopt-fastnas")


class BenchError(Exception):
    """Bad input: reported in one line, exit code 2."""


# --------------------------------------------------------------------------- methods


def layer_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """:func:`lut_builder.signatures.model_layers` of ``model`` at ``x`` from a pass on the
    meta device (shapes only): the knob methods price dozens of models a target, and a
    MobileNetV2 at 128x3x64x64 (a GPU run's latency input) takes 11 s a pass on one CPU
    thread, 0.2 s on meta; the same signatures. On the CPU where an op has no meta kernel."""
    from lut_builder.signatures import model_layers

    try:
        return model_layers(copy.deepcopy(model).to("meta"), x.to("meta"))
    except (RuntimeError, NotImplementedError):
        return model_layers(model, x)


def output_layers(model: nn.Module, classes: int) -> list[nn.Module]:
    """The classifier layers (never pruned): linear layers with ``classes`` outputs."""
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == classes]


def tp_global(dense, x, ratio, *, align, classes, criterion, grads=None) -> nn.Module:
    """Torch-Pruning's global pruning of ``ratio`` of the channels, widths rounded to
    multiples of ``align`` (``round_to``). ``criterion``: ``l2`` (group L2 magnitude)
    or ``taylor`` (group Taylor, from ``grads``: parameter name -> gradient)."""
    import warnings

    import torch_pruning as tp

    model = copy.deepcopy(dense).eval()
    if criterion == "taylor":
        for name, p in model.named_parameters():
            p.grad = grads[name].clone() if name in grads else None
        importance = tp.importance.GroupTaylorImportance()
    else:
        importance = tp.importance.GroupMagnitudeImportance(p=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(
            model,
            x,
            importance=importance,
            global_pruning=True,
            pruning_ratio=ratio,
            ignored_layers=output_layers(model, classes),
            round_to=align,
        )
        pruner.step()
    model.zero_grad(set_to_none=True)
    return model


def rescored(name: str | type, label: str, transform) -> type:
    """Criterion ``name`` (registered, or a criterion class) with ``transform`` applied to
    each group's score vector, as a class named ``{label}_{name}``."""
    from halp_trt.importance import get_importance

    base = get_importance(name) if isinstance(name, str) else name
    name = name if isinstance(name, str) else name.__name__

    class Rescored(base):  # type: ignore[valid-type, misc]
        def scores(self) -> dict[int, np.ndarray]:
            return {gid: transform(s) for gid, s in super().scores().items()}

    Rescored.__qualname__ = Rescored.__name__ = f"{label}_{name}"
    return Rescored


def summed_gradient() -> type:
    """``taylor-weights`` with each weight's ``w * dL/dw`` summed over the window's
    minibatches before its magnitude is taken: ``|sum over minibatches of w * dw|``, as
    Torch-Pruning scores one gradient summed over a few batches, where ``taylor-weights``
    averages each minibatch's ``|w * dw|`` (which keeps the minibatches' noise: the mean
    of magnitudes is never below the magnitude of the mean)."""
    from halp_trt.importance import get_importance

    base = get_importance("taylor-weights")

    class SummedGradient(base):  # type: ignore[valid-type, misc]
        @torch.no_grad()
        def accumulate(self, *, skip_nonfinite: bool = False) -> bool:
            prods = {}
            for module in {id(m): m for m, *_ in self._sources}.values():
                for pname in ("weight", "bias"):
                    p = getattr(module, pname, None)
                    if p is not None and p.grad is not None:
                        prods[(id(module), pname)] = (p.detach() * p.grad.detach()).double()
            if skip_nonfinite and not all(torch.isfinite(t).all() for t in prods.values()):
                return False
            if self._sum is None:
                self._prods: dict[tuple[int, str], torch.Tensor] = {}
                self._n = torch.zeros((), dtype=torch.float64)
                self._sum = torch.zeros(self._n_channels, dtype=torch.float64)
            for key, t in prods.items():
                self._prods[key] = self._prods[key] + t if key in self._prods else t
            self._n += 1.0
            return True

        def _products(self, module: nn.Module):
            # The window's sums, reduced per channel in magnitude by taylor-weights' gather.
            return self._prods.get((id(module), "weight")), self._prods.get((id(module), "bias"))

        def scores(self) -> dict[int, np.ndarray]:
            if self._sum is not None and self.count:
                self._sum = self._minibatch()
            return super().scores()

    SummedGradient.__qualname__ = SummedGradient.__name__ = "SummedGradient_taylor-weights"
    return SummedGradient


def mean_normalised(name: str | type) -> type:
    """Criterion ``name`` with each group's scores divided by their mean over the group's
    channels still alive (score > 0: a pruned channel's BatchNorm is zero, so is its
    Taylor score); a group with none keeps its zeros."""

    def normalise(s: np.ndarray) -> np.ndarray:
        alive = s[s > 0]
        return s / alive.mean() if alive.size else s

    return rescored(name, "MeanNormalised", normalise)


def terms_averaged(name: str) -> type:
    """Criterion ``name`` with each channel's coupled terms averaged instead of summed
    (``mean_terms``; ``taylor-abs-mean`` is ``taylor-abs`` so): on ``taylor-weights``,
    Torch-Pruning's ``group_reduction="mean"`` over the layers that write and read a
    channel, without its normaliser. A residual stream's channel, read by every block of
    its stage, is worth one layer's terms instead of all of them: between the sum, which
    keeps the streams, and the normalised scores, which cut them first."""
    from halp_trt.importance import get_importance

    class TermsAveraged(get_importance(name)):  # type: ignore[valid-type, misc]
        mean_terms = True

    TermsAveraged.__qualname__ = TermsAveraged.__name__ = f"TermsAveraged_{name}"
    return TermsAveraged


def terms_root(name: str) -> type:
    """Criterion ``name`` with each channel's summed terms divided by the square root of
    their count: between the sum (:func:`terms_averaged` measured it over-valuing a
    stream channel where little is cut, so the plan keeps the streams and cuts the
    expansions) and the mean (under-valuing it where half the latency goes, so every
    stream from 64 channels on goes to its floor). A channel coupling ``k`` layers of
    like terms scores ``sqrt(k)`` times one layer's, as ``taylor-l2`` would on signed
    terms of independent sign."""
    from halp_trt.importance import get_importance

    class TermsRoot(get_importance(name)):  # type: ignore[valid-type, misc]
        mean_terms = True  # divided by the count's square root instead of the count

        def __init__(self, graph: Any) -> None:
            super().__init__(graph)
            self._terms_per_channel = np.sqrt(self._terms_per_channel)

    TermsRoot.__qualname__ = TermsRoot.__name__ = f"TermsRoot_{name}"
    return TermsRoot


def layer_weighted(name: str) -> type:
    """Criterion ``name`` mean-normalised per group (:func:`mean_normalised`), then each
    channel's score multiplied by the number of coupled terms it sums (the BatchNorms,
    or the layers' slices, its group couples).

    With every group at mean 1 (``-norm``), a residual stream's channel is worth an
    inner channel's while it costs the latency of every block it enters and leaves, so
    the knapsack cuts the streams first; summed over its terms (``taylor-abs``) it is
    worth about as many inner channels as it has terms, times its layers' own gradient
    scale, and the knapsack keeps the streams whole. Here the count stays and the scale
    goes: a channel's value grows with the layers it touches, as its latency does, so
    the plan is set by where each group's scores fall below their mean, as
    Torch-Pruning's global ranking of normalised scores sets it. Measured: on the
    ResNet-18 at 0.7x (six epochs, 3 seeds) it halves the whole first stage, where a
    channel costs the most, keeps the later streams whole and scores 0.5 points under
    Torch-Pruning's Taylor, 0.1 under ``taylor-abs``
    (bench/results/pareto_resnet18_hard_v4_zen5_pre10_07x_e6_blocks_layers_swapped.json)."""
    base = mean_normalised(name)

    class LayerWeighted(base):  # type: ignore[valid-type, misc]
        def scores(self) -> dict[int, np.ndarray]:
            out = super().scores()
            start = 0
            for group, size in zip(self.groups, self._sizes):
                out[group.id] = out[group.id] * self._terms_per_channel[start : start + size]
                start += size
            return out

    LayerWeighted.__qualname__ = LayerWeighted.__name__ = f"LayerWeighted_{name}"
    return LayerWeighted


def concave_weights(score: np.ndarray) -> np.ndarray:
    """Scores whose prefix sums, taken in the knapsack's order, are ``S * (2r - r**2)``.

    ``r`` is the fraction of the group's score (over its alive channels, score > 0) that
    the kept prefix holds and ``S`` the group's total, so the loss of a cut is modelled
    as ``S * (1 - r)**2``, convex in what it removes, where the plain sum makes it
    linear. Channel ``i`` of the order is weighted by ``2 - r_before - r_after``: from
    about 2 for the strongest to about 0 for the weakest, which keeps the order (the
    knapsack sorts by score). Zeros (pruned channels) stay zero.
    """
    out = np.array(score, dtype=np.float64)
    alive = np.flatnonzero(out > 0)
    if alive.size == 0:
        return out
    order = alive[np.argsort(-out[alive], kind="stable")]
    frac = out[order] / out[order].sum()
    after = np.cumsum(frac)
    out[order] = out[order] * (2.0 - (after - frac) - after)
    return out


def concave_value(name: str) -> type:
    """Criterion ``name`` with each group's value concave in the score it keeps
    (:func:`concave_weights`): a value that adds per channel, under a latency bilinear
    in a block's two widths, puts the knapsack's optimum in a corner; one this concave
    puts it between."""
    return rescored(name, "Concave", concave_weights)


def match_predicted(make, predict, reference, x, knobs):
    """``match_latency`` without the timing: the grid point with the highest predicted
    latency within the reference's (ties: more parameters). Same return values, the
    measured ratio None."""
    priced = []
    for k in knobs:
        m = make(k)
        priced.append((predict(m), sum(p.numel() for p in m.parameters()), k))
    budget = predict(reference)
    pred_ms, _, knob = max([c for c in priced if c[0] <= budget] or [min(priced)])
    history = [{"knob": knob, "budget_ms": budget, "predicted_ms": pred_ms}]
    return knob, make(knob), None, history, priced


#: Training batches a pruning that comes before fine-tuning scores on.
CALIBRATION_BATCHES = 8
#: The minibatches a one-step pruning while training scores on in the 2-epoch runs of the
#: README (its step 4 iterations in): ``halp-taylor-weights-calib4`` scores on as many.
WINDOW_BATCHES = 4
#: Torch-Pruning's methods: criterion, and the training batches of its Taylor gradients.
TP_METHODS = {
    "tp-l2": ("l2", 0),
    "tp-taylor": ("taylor", CALIBRATION_BATCHES),
    "tp-taylor16": ("taylor", 2 * CALIBRATION_BATCHES),
}


def calibration_batches(data, batch_size: int, batches: int = CALIBRATION_BATCHES):
    """The first ``batches`` shuffled training batches, the same for every seed and method
    (a generator seeded 0): what Torch-Pruning's Taylor and ``*-calib`` score on."""
    from torch.utils.data import DataLoader

    gen = torch.Generator().manual_seed(0)
    loader = DataLoader(data.train, batch_size=batch_size, shuffle=True, generator=gen)
    for i, batch in enumerate(loader):
        if i == batches:
            return
        yield batch


def target_floor(min_keep: float | None, fraction: float) -> float:
    """The per-group floor of ``halp-taylor-abs-floor``: no group keeps less of its width
    than the target keeps of the latency (nor less than the pruner's floor). A trust
    region for first-order scores: where 30% of the latency has to go, no layer loses
    60% of its channels on an estimate made for small removals. Uniform width at the
    floor would cost about ``fraction**2`` of the latency, but the pruner rounds each
    floor up to whole bundles, which keeps a group narrower than a few bundles whole. A
    target those floors leave out of reach fails as under the pruner's own floor: one
    line, and the run is recorded as failed."""
    from halp_trt.prune.pruner import DEFAULT_MIN_KEEP

    return max(DEFAULT_MIN_KEEP if min_keep is None else min_keep, fraction)


def first_stage_floor(model: nn.Module, x: torch.Tensor, fraction: float) -> dict[int, int]:
    """``halp-taylor-weights-calib-first``'s floor: the channels each prunable group of
    the first stage keeps at least (``Pruner(min_channels=...)``, group id -> channels).

    The first stage is the groups some producing layer of which writes at the input's
    own resolution (the stem and the blocks before the first stride): where a channel
    costs the most latency and the plans of the cells uniform width leads cut to the
    floor. Each keeps ``fraction`` of its width, rounded up to whole units; the other
    groups keep the pruner's floor."""
    from halp_trt.graph import ChannelGraph

    graph = ChannelGraph(model, x)
    full = tuple(x.shape[-2:])

    def writes_at_full(group) -> bool:
        infos = (graph.layers.get(ref.layer) for ref in group.producers)
        return any(
            i is not None and i.signature.op == "conv2d" and tuple(i.signature.out_hw) == full
            for i in infos
        )

    return {
        g.id: max(g.unit, math.ceil(fraction * g.size / g.unit - 1e-9) * g.unit)
        for g in graph.prunable
        if writes_at_full(g)
    }


def taylor_grads(
    dense, data, batch_size: int, batches: int = CALIBRATION_BATCHES, device: str = "cpu"
):
    """Loss gradients of ``dense`` summed over ``batches`` training batches (train
    mode, on ``device``), for Torch-Pruning's Taylor importance: parameter name ->
    gradient (on the CPU)."""
    model = copy.deepcopy(dense).to(device).train()
    model.zero_grad(set_to_none=True)
    for xb, yb in calibration_batches(data, batch_size, batches):
        nn.functional.cross_entropy(model(xb.to(device)), yb.to(device)).backward()
    return {
        n: p.grad.detach().cpu().clone() for n, p in model.named_parameters() if p.grad is not None
    }


def halp_calibrated(
    dense, data, x, table, target, importance, *, batch_size: int, feedback: bool,
    min_keep=None, batches: int = CALIBRATION_BATCHES, steps: int = 1, min_channels=None,
):  # fmt: skip
    """halp-trt's plan on Torch-Pruning's path: ``Pruner.calibrate`` on a copy of
    ``dense``, ``importance`` accumulated over the calibration batches with the weights as
    they are (train mode, plain cross-entropy: the gradients :func:`taylor_grads` takes),
    one knapsack on ``table`` to ``target`` (measured-latency feedback when
    ``feedback``, the pruner's floor), the channels removed before the first fine-tuning
    iteration; the BatchNorm statistics the dense model's, as Torch-Pruning's copy
    leaves them.

    ``steps`` > 1: HALP's exponential schedule in that many knapsack steps before
    training, each scored on the same batches with the channels pruned so far masked
    (re-scored as the model narrows, no weight updated), through the pruner's step().

    Returns ``(slim model, facts)``; the fine-tuning is the caller's."""
    from halp_trt.prune import Pruner

    measure = prune_quality.deploy_feedback(dense, x) if feedback else None
    try:
        if steps == 1:
            pruner = Pruner(
                copy.deepcopy(dense), x, table, target, importance=importance,
                schedule="oneshot", steps=1, feedback=measure, min_keep=min_keep,
                calibration_batches=batches, min_channels=min_channels,
            )  # fmt: skip
            records = [pruner.calibrate(calibration_batches(data, batch_size, batches))]
        else:
            model = copy.deepcopy(dense)
            buffers = {k: v.clone() for k, v in model.named_buffers()}
            pruner = Pruner(
                model, x, table, target, importance=importance, schedule="exp",
                steps=steps, interval=1, feedback=measure, min_keep=min_keep,
            )  # fmt: skip
            model.train()
            records = []
            for _ in range(steps):
                for xb, yb in calibration_batches(data, batch_size, batches):
                    model.zero_grad(set_to_none=True)
                    nn.functional.cross_entropy(model(xb), yb).backward()
                    pruner.accumulate()
                records.append(pruner.step())
            model.zero_grad(set_to_none=True)
            with torch.no_grad():
                for k, v in model.named_buffers():
                    v.copy_(buffers[k])
        slim, plan = pruner.finalize()
    finally:
        if measure is not None:
            measure.close()
    return slim, {
        **plan_facts(pruner, plan),
        "importance": pruner.importance_name,  # what ran (auto names one)
        "min_keep": pruner.min_keep,
        **({"min_channels": {str(g): n for g, n in min_channels.items()}} if min_channels else {}),
        "calibration_batches": batches,
        "minibatches": records[0].minibatches,
        **({"calibration_steps": steps} if steps > 1 else {}),
        **getattr(pruner.importance, "facts", {}),
    }


def fastnas_score_set(data, score_on: str):
    """The images FastNAS scores subnets on (:func:`fastnas`): as many as half the
    validation set, training images spread evenly over the training split (``"train"``)
    or every second validation image (``"val"``)."""
    from torch.utils.data import Subset

    if score_on == "val":
        return Subset(data.val, range(0, len(data.val), 2))
    if score_on != "train":
        raise ValueError(f"score_on must be 'train' or 'val', not {score_on!r}")
    n = min(len(data.train), (len(data.val) + 1) // 2)
    return Subset(data.train, [i * len(data.train) // n for i in range(n)])


def fastnas(
    dense, data, x, fraction, align, batch_size, workdir: Path, score_on: str = "train"
) -> nn.Module:
    """ModelOpt FastNAS under a FLOPs constraint of ``fraction`` of the dense model's,
    every conv and linear width a multiple of ``align``; accuracy on
    :func:`fastnas_score_set` scores the sampled subnets (``score_on="val"``, how the runs
    before ``--fastnas-score`` scored, picks them on half of the images every method is
    graded on, which no other method sees)."""
    import modelopt.torch.opt as mto
    import modelopt.torch.prune as mtp
    from torch.utils.data import DataLoader

    from halp_trt.train import evaluate

    model = copy.deepcopy(dense)
    # Ten widths per layer (FastNAS's default has twenty) and half the validation set as
    # its score: its sensitivity search scores every choice of every layer.
    ratios = [round(0.1 * i, 1) for i in range(1, 11)]
    mode_cfg = {
        "nn.Conv2d": {"*": {"channels_ratio": ratios, "channel_divisor": align}},
        "nn.Linear": {"*": {"features_ratio": ratios, "feature_divisor": align}},
        "nn.BatchNorm2d": {"*": {"features_ratio": ratios, "feature_divisor": align}},
    }
    loader = DataLoader(data.train, batch_size=batch_size, shuffle=True)
    score_set = fastnas_score_set(data, score_on)
    model, _ = mtp.prune(
        model,
        mode=[("fastnas", mode_cfg)],
        constraints={"flops": f"{fraction * 100:.1f}%"},
        dummy_input=x,
        config={
            "data_loader": loader,
            "score_func": lambda m: evaluate(m, score_set)[1],
            "max_iter_data_loader": 10,
            "checkpoint": str(workdir / "fastnas_search.pth"),
            "verbose": False,
        },
    )
    plain = mto.export(model) if hasattr(mto, "export") else model
    return plain


def conv_widths(model: nn.Module) -> list[tuple[int, int]]:
    """Each convolution's input and output channels, in order: a pruned model's shape."""
    return [(m.in_channels, m.out_channels) for m in model.modules() if isinstance(m, nn.Conv2d)]


#: :func:`fastnas_bracket`'s tries, and how far past the reference's latency each aims.
BRACKET_TRIES = 3
BRACKET_MARGIN = 0.03


def fastnas_bracket(
    search, model, fraction, reference, x, ratio_of, tries=BRACKET_TRIES, same=None
):
    """A second FastNAS model, for ``model`` (searched at FLOPs ``fraction``), whose
    measured latency lies on the other side of ``reference``'s, :data:`BRACKET_MARGIN`
    past it: the FLOPs bound scaled by the latency ratio still to cover (FLOPs bound
    latency only loosely), then moved along the slope of the last two tries where it
    rises (a latency that creeps with the bound reaches the bound's end in a try or two
    instead of crawling), searched again (``search(fraction)``: FastNAS's profile of the
    subnets is kept from the first search, so a search again is its binary search alone)
    and timed against ``reference`` (``ratio_of(model, reference, x)``) until it crosses,
    at most ``tries`` times. A search that returns the model before it again (``same(a,
    b)``, where given) is no new point: recorded (``"same": True``, the ratio before it)
    and not timed.

    Returns ``(fraction, model, measured ratio to reference, history)``.

    Raises:
        RuntimeError: no bound tried crossed (or the FLOPs bound reached the dense model's).
    """
    ratio = ratio_of(model, reference, x)
    history = [{"flops_fraction": fraction, "ratio": ratio}]
    faster = ratio < 1  # the first model is faster: look for a slower one
    aim = 1 + BRACKET_MARGIN if faster else 1 - BRACKET_MARGIN
    for _ in range(tries):
        slope = 0.0  # latency per unit of the bound, from the last two tries
        if len(history) > 1:
            (f0, r0), (f1, r1) = [(h["flops_fraction"], h["ratio"]) for h in history[-2:]]
            slope = (r1 - r0) / (f1 - f0) if f1 != f0 else 0.0
        step = fraction + (aim - ratio) / slope if slope > 0 else fraction * aim / ratio
        new = round(min(0.99, max(0.01, step)), 4)
        if new == fraction:
            break  # at the bound's end: nothing more to try
        fraction, before = new, model
        model = search(fraction)
        if same is not None and same(model, before):
            history.append({"flops_fraction": fraction, "ratio": ratio, "same": True})
            continue
        ratio = ratio_of(model, reference, x)
        history.append({"flops_fraction": fraction, "ratio": ratio})
        if (ratio >= 1) if faster else (ratio <= 1):
            return fraction, model, ratio, history
    tried = ", ".join(f"{h['flops_fraction']:g}: {h['ratio']:.3f}" for h in history)
    raise RuntimeError(
        "no FLOPs bound brought FastNAS to the other side of the reference's latency "
        f"(FLOPs bound: measured ratio to it, {tried})"
    )


#: :func:`sensitivity`'s measurements, by model state and setting, for the process.
MEASURED: dict[tuple, tuple[tuple[float, float], dict]] = {}

#: ``halp-sensitivity-max-calib``'s power of each group's loss increase: the eighth root
#: of a sum of eighth powers is at most 1.3 times its largest term for 8 groups at the
#: bound, 1.5 times for 25 (``n**(1/8)``).
SENSITIVITY_POWER = 8.0
#: ``halp-sensitivity-tie``'s weight of the loss a width gains beside the accuracy it
#: drops: on the calibration minibatches a trained model fits, most groups drop no
#: accuracy down to the floor and the loss tells them apart; 0.05 keeps the network's
#: last layer at 944-1280 of 1280 in the six recorded 0.3x plans of the harder digits'
#: MobileNetV2, where accuracy alone cut it to 128-592 (FastNAS keeps it whole).
SENSITIVITY_LOSS_WEIGHT = 0.05


def weighted_sensitivity(loss_weight: float) -> type:
    """halp-trt's ``sensitivity`` with ``loss_weight`` set (the Python API's argument)."""
    from halp_trt.importance.sensitivity import Sensitivity

    class Weighted(Sensitivity):
        def __init__(self, graph) -> None:
            super().__init__(graph, loss_weight=loss_weight)

    return Weighted


def tensor_digest(named) -> str:
    """SHA-256 over ``(name, tensor)`` pairs: each name, dtype, shape and bytes (any
    dtype, bfloat16 included, which NumPy cannot hold)."""
    digest = hashlib.sha256()
    for k, v in named:
        digest.update(f"{k}:{v.dtype}:{tuple(v.shape)}".encode())
        digest.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def sensitivity(data, *, power: float = 1.0, metric: str = "loss", **options) -> type:
    """halp-trt's measuring criterion (``halp_trt.importance.sensitivity``: each group's
    loss or accuracy measured at up to six widths from the floor up, the knapsack on
    the measured table choosing) as the bench runs it: subnets scored on the training
    images FastNAS scores on (:func:`fastnas_score_set`, batches of 256) instead of the
    calibration minibatches, which still give each subnet its BatchNorm statistics; and
    one measurement per dense model and setting kept for the process (:data:`MEASURED`,
    keyed by a hash of the model's state: methods that differ in ``power`` or
    ``metric`` alone share one; ``sensitivity_evaluations`` counts the subnets a
    criterion scored itself, 0 where it found them measured).

    ``power`` > 1: a group's value is minus its loss increase (none where the loss
    fell) to that power. The sum over groups then tends, as the power grows, to the
    largest increase of any group, which is what FastNAS bounds: it takes the widths at
    which no layer's score drops by more than one threshold, set to meet the FLOPs
    constraint. ``metric="accuracy"``: the accuracy a width drops instead of the loss it
    gains (FastNAS's score). ``options``: ``points``, ``ranking``.
    """
    from torch.utils.data import DataLoader

    from halp_trt.importance.sensitivity import Sensitivity

    score_batches = list(DataLoader(fastnas_score_set(data, "train"), batch_size=256))

    class Measured(Sensitivity):
        def __init__(self, graph) -> None:
            super().__init__(
                graph, metric=metric, power=power, score_batches=score_batches, **options
            )

        def measurements(self, batches, groups, loss_fn):
            tensors = [t for xb, yb in batches for t in (xb, yb)]
            key = (tensor_digest([*self.model.state_dict().items(), *enumerate(tensors)]),
                   id(data), tuple(sorted(groups.items())), self.points, self.ranking)  # fmt: skip
            if key not in MEASURED:
                MEASURED[key] = super().measurements(batches, groups, loss_fn)
            return MEASURED[key]

    return Measured


# --------------------------------------------------------------------------- summaries


def curve_at(points: list[tuple[float, float]], r: float) -> tuple[float, bool]:
    """Accuracy at latency ratio ``r`` on the piecewise-linear curve through ``points``
    ((ratio, accuracy); the nearest point outside their range). Returns (accuracy,
    whether ``r`` lies within the points' range)."""
    pts = sorted(points)
    if len(pts) == 1 or r <= pts[0][0] or r >= pts[-1][0]:
        inside = pts[0][0] <= r <= pts[-1][0]
        near = min(pts, key=lambda p: abs(p[0] - r))
        return near[1], inside and len(pts) > 1
    for (r1, a1), (r2, a2) in zip(pts, pts[1:]):
        if r1 <= r <= r2:
            return (a1 if r2 == r1 else a1 + (a2 - a1) * (r - r1) / (r2 - r1)), True
    raise AssertionError("unreachable")


def paired_interval(diffs: list[float], level: float = 0.95) -> dict[str, Any]:
    """Student's t interval of the mean of per-seed differences (the seeds are the pairs),
    and whether it excludes zero: with 3 seeds a difference must be about 2.5 times its
    standard deviation to be told from the seeds' spread."""
    if len(diffs) < 2:
        return {"diff_sd": None, "ci": None, "resolved": False}
    from scipy import stats

    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = stats.t.ppf(0.5 + level / 2, len(diffs) - 1) * sd / len(diffs) ** 0.5
    return {
        "diff_sd": sd,
        "ci": [mean - half, mean + half],
        "resolved": bool(mean - half > 0 or mean + half < 0),
    }


#: The band a pruned model's measured latency must land in, over its target (issue
#: target: 0.95-1.02); the summary counts the models inside it (``landed``).
LANDING = (0.95, 1.02)
#: The status of a run set aside after the fact (a run's ``status`` is ``"ok"`` or
#: ``"failed"`` as written): one a defect since fixed produced, kept as it was measured
#: with ``"excluded"`` saying why. Every tool here reads only ``"ok"`` runs.
EXCLUDED = "excluded"


def summarise(
    runs: list[dict],
    methods: list[str],
    targets: list[str],
    reference: str | None = "halp-taylor",
    dense: dict[str, dict] | None = None,
) -> dict[str, Any]:
    """Per target and method: accuracy, measured ratio and time over the seeds that ran;
    accuracy at the ``reference`` method's measured latency (per seed, interpolated, on
    the seeds where the method has a plan of that target);
    with the seeds' ``dense`` entries, the mean accuracy of their unpruned copies trained
    as the methods' models are (``--dense-finetune``), where they have one."""
    ok = [r for r in runs if r["status"] == "ok" and "measured_ratio" in r]
    out: dict[str, Any] = {"by_target": {}, "equal_latency": {}, "reference": reference}
    for t in targets:
        by_method = {}
        for m in methods:
            rs = [r for r in ok if r["target"] == t and r["method"] == m]
            others = [r for r in runs if r["target"] == t and r["method"] == m]
            failed = [r for r in others if r["status"] not in ("ok", EXCLUDED)]
            excluded = sum(r["status"] == EXCLUDED for r in others)
            if not rs:
                by_method[m] = {"n": 0, "failed": len(failed)}
                if excluded:
                    by_method[m]["excluded"] = excluded
                continue
            acc = [r["val_acc"] for r in rs]
            ratio = [r["measured_ratio"] for r in rs]
            secs = [r["method_s"] for r in rs]
            by_method[m] = {
                "n": len(rs),
                "failed": len(failed),
                "val_acc_mean": statistics.fmean(acc),
                "val_acc_std": statistics.pstdev(acc),
                "measured_ratio_mean": statistics.fmean(ratio),
                "measured_ratio_std": statistics.pstdev(ratio),
                "ratio_over_target": [r["measured_ratio"] / r["target_fraction"] for r in rs],
                "landed": sum(
                    LANDING[0] <= r["measured_ratio"] / r["target_fraction"] <= LANDING[1]
                    for r in rs
                ),
                "method_s_mean": statistics.fmean(secs),
            }
            if excluded:
                by_method[m]["excluded"] = excluded
            before = [r["val_acc_before_bn"] for r in rs if "val_acc_before_bn" in r]
            if len(before) == len(rs):  # what re-estimating the BatchNorms gave
                by_method[m]["val_acc_before_bn_mean"] = statistics.fmean(before)
        out["by_target"][t] = by_method
        eq: dict[str, Any] = {}
        refs = [r for r in ok if r["target"] == t and r["method"] == reference]
        for m in methods:
            if m == reference or m.endswith("+"):  # a "+" run is a point of its method
                continue
            diffs, bracketed, seeds = [], [], []
            for ref in refs:
                mine = [r for r in ok if r["seed"] == ref["seed"] and r["method"] in (m, f"{m}+")]
                # the curve runs through the method's points of every target of the seed,
                # but a seed counts only where the method has a plan of this target: with
                # none (a pool's run of the seed at 0.3x only, beside a reference at
                # 0.5x) the nearest point would be a model of another latency
                if not any(r["target"] == t for r in mine):
                    continue
                pts = [(r["measured_ratio"], r["val_acc"]) for r in mine]
                acc, inside = curve_at(pts, ref["measured_ratio"])
                diffs.append(ref["val_acc"] - acc)
                bracketed.append(inside)
                seeds.append(ref["seed"])
            if diffs:
                eq[m] = {
                    "halp_minus_method_mean": statistics.fmean(diffs),
                    "per_seed": diffs,
                    "seeds": seeds,
                    "bracketed": bracketed,
                    **paired_interval(diffs),
                }
        out["equal_latency"][t] = eq
    finetuned = [d["finetuned_val_acc"] for d in (dense or {}).values() if "finetuned_val_acc" in d]
    if finetuned:
        out["dense_finetuned_val_acc_mean"] = statistics.fmean(finetuned)
    return out


def plot_title(title: str, width: int = 90) -> str:
    """``title`` wrapped to lines of at most ``width`` characters (the figure holds about
    90 at its font size); a spec longer than that is broken inside."""
    import textwrap

    return textwrap.fill(title, width, break_long_words=True, break_on_hyphens=False)


def spec_label(spec: str) -> str:
    """A data or model spec for a figure's title: an absolute file path in it shortened to
    the file's name (``npz:/data/x.npz`` -> ``npz:x.npz``), so that a committed figure does
    not carry the paths of the machine it was made on; the JSON keeps the spec whole."""
    kind, sep, rest = spec.partition(":")
    if sep and os.path.isabs(rest):
        return f"{kind}:{Path(rest).name}"
    return Path(spec).name if os.path.isabs(spec) else spec


def plot(
    runs: list[dict],
    methods: list[str],
    path: Path,
    title: str,
    dense_finetuned: float | None = None,
) -> None:
    """Accuracy against measured latency ratio, one line per method (mean over seeds,
    error bars: standard deviation over seeds); ``dense_finetuned``: the unpruned model
    after the same training, a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lut_builder.fileio import atomic_output

    fig, ax = plt.subplots(figsize=(7, 5))
    for m in methods:
        pts = []
        for t in sorted({r["target"] for r in runs}):
            rs = [
                r
                for r in runs
                if r["method"] == m and r["target"] == t and r["status"] == "ok"
                and "measured_ratio" in r
            ]  # fmt: skip
            if rs:
                ratio = [r["measured_ratio"] for r in rs]
                acc = [r["val_acc"] for r in rs]
                pts.append((np.mean(ratio), np.mean(acc), np.std(ratio), np.std(acc)))
        if pts:
            pts.sort()
            xs, ys, xe, ye = zip(*pts)
            ax.errorbar(xs, ys, xerr=xe, yerr=ye, marker="o", capsize=3, label=m)
    if dense_finetuned is not None:
        ax.axhline(dense_finetuned, color="0.4", linestyle=":", label="dense, same training")
    ax.set_xlabel("measured latency / dense (ONNX Runtime CPU, 1 thread)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(plot_title(title), fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- the bench


class OneLineParser(argparse.ArgumentParser):
    """An argument parser that reports bad arguments in one line (``PROG: error: ...``)
    with exit code 2, without the usage block."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="pareto.py", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model spec (halp_trt.models:NAME,...)")
    p.add_argument("--data", default="digits", help="data spec: digits, npz:PATH, ...")
    p.add_argument("--input-shape", required=True, help="N,C,H,W of the latency input")
    p.add_argument("--targets", default="0.7x,0.5x,0.3x")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--pretrain-epochs", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3, help="epochs after the dense model, all")
    p.add_argument("--steps", type=int, default=5, help="HALP pruning steps")
    p.add_argument(
        "--prune-window",
        type=float,
        default=DEFAULT_SPREAD,
        help="fraction of the fine-tuning iterations HALP's steps are spread over (HALP: "
        "0.5); the rest fine-tunes the final widths",
    )
    p.add_argument(
        "--min-interval",
        type=int,
        default=MIN_INTERVAL,
        help="fewest iterations between HALP's steps (default the pruner's, HALP's 40; "
        "a shorter window prunes in fewer steps, down to one; 1: none, as before)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--step", type=int, default=None, help="table grid step (alignment)")
    p.add_argument("--table", default=None, help="measured table file (built if missing)")
    p.add_argument(
        "--table-backend",
        choices=("measured", "onnxruntime", "macs"),
        default="measured",
        help="the table halp-trt solves on: measured on --backend (onnxruntime: the same, "
        "its name before --backend) or, for dry runs and tests, the MACs table (timing "
        "stays on --backend)",
    )
    p.add_argument(
        "--backend",
        choices=("onnxruntime", "torch"),
        default="onnxruntime",
        help="the deployment every model is timed in and the table measured on: ONNX "
        "Runtime (CPU, one thread) or torch (one CPU thread, or --device cuda: each model "
        "replayed as one CUDA graph)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu, or cuda / cuda:N with --backend torch: the GPU the models are timed "
        "and trained on",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16"),
        default="fp32",
        help="the deployment's precision (fp16/bf16: --backend torch on a GPU)",
    )
    p.add_argument("--rounds", type=int, default=100, help="interleaved timing rounds")
    p.add_argument(
        "--timing",
        choices=("round-robin", "blocks"),
        default="round-robin",
        help="how each seed's models are timed against the dense one, all in turn: one "
        "inference each a round (round-robin, as every result before the setting), or one "
        "block of back-to-back inferences each a round, as the pruner's feedback times and "
        "as a model is served (blocks)",
    )
    p.add_argument(
        "--match",
        choices=("measured", "predicted"),
        default="measured",
        help="bring the knob methods to the reference's latency by timing (within 2%% "
        "of it from either side) or by the table's prediction only (no timing until the "
        "end: one bench-lock wait per seed and target)",
    )
    p.add_argument(
        "--fastnas-score",
        choices=("train", "val"),
        default="train",
        help="the images FastNAS scores its subnets on: training images (default) or half "
        "of the validation images every method is graded on (the runs before this option)",
    )
    p.add_argument(
        "--no-feedback",
        action="store_true",
        help="halp-trt without measured-latency feedback (the plans as the table predicts "
        "them; before the pruner measured its plans)",
    )
    p.add_argument(
        "--min-keep",
        type=float,
        default=None,
        help="halp-trt's per-group floor (fraction of each group's width; default the "
        "pruner's: 0.1 where auto runs taylor-fisher on narrow residual streams, else "
        "0.3; 0: none, as in HALP)",
    )
    p.add_argument(
        "--reference",
        default=None,
        help="the halp-trt method the knob methods are matched to and every method is "
        "compared with at equal latency (default: halp-auto-calib, the shipped default, else "
        "halp-taylor-weights, else halp-taylor-abs, else halp-taylor, else the first halp-* "
        "method run)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads for training")
    p.add_argument(
        "--dense-finetune",
        action="store_true",
        help="also train a copy of each seed's dense model for --epochs, as every method's "
        "model is, unpruned: what the same training gives without pruning",
    )
    p.add_argument("--out", default=str(ROOT / "bench/results/pareto.json"))
    p.add_argument(
        "--keep",
        action="store_true",
        help="add these seeds to the result already in --out (same model, data, shape, "
        "targets, methods and settings), keeping its runs of the other seeds",
    )
    p.add_argument("--lock", default=prune_quality.LOCK, help="lock file held around every timing")
    return p.parse_args(argv)


def parse_seeds(text: str) -> list[int]:
    """``--seeds`` (``0,1,2``) as integers in the order given, for every bench that takes
    seeds; BenchError for an item that is not an integer (an empty one too) or a seed
    named twice."""
    from lut_builder.cli_args import MAX_SEED

    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise BenchError(f"--seeds {text!r}: comma-separated integers like 0,1,2") from None
    if any(not 0 <= s <= MAX_SEED for s in seeds):
        raise BenchError(f"--seeds {text!r}: every seed must be an integer from 0 to {MAX_SEED}")
    if len(set(seeds)) != len(seeds):
        raise BenchError(f"--seeds {text!r} names a seed twice")
    return seeds


def target_fractions(text: str) -> dict[str, float]:
    """``--targets`` (``0.7x,0.5x``) as each target's fraction of the dense latency.

    Raises:
        BenchError: empty, or a target that is not a fraction below 1x.
    """
    from halp_trt.prune.schedule import target_fraction

    fractions = {}
    for t in (t.strip() for t in text.split(",") if t.strip()):
        f = target_fraction(t)
        if f is None or not 0 < f < 1:
            raise BenchError(f"target {t!r} must be a fraction below 1x, like 0.5x")
        fractions[t] = f
    if not fractions:
        raise BenchError("--targets is empty")
    return fractions


def model_and_data(args: argparse.Namespace) -> tuple[tuple[int, ...], Any, Any, int]:
    """``--input-shape``, ``--model`` and ``--data`` checked together: the shape, the
    model's example input, the data and the model's number of logits.

    Raises:
        BenchError, UserError: a bad shape, spec, or data the model cannot take.
    """
    from halp_trt.specs import example_input, load_model
    from halp_trt.train import load_data
    from halp_trt.train.prune_job import classes_of
    from lut_builder.specs import parse_shape

    shape = parse_shape(args.input_shape)
    if len(shape) != 4:
        raise BenchError(f"--input-shape must be N,C,H,W, not {args.input_shape!r}")
    model = load_model(args.model)
    x = example_input(model, shape)
    data = load_data(args.data, channels=shape[1], size=(shape[2], shape[3]))
    classes = classes_of(model, x)
    if data.num_classes > classes:
        raise BenchError(
            f"--data {args.data} has {data.num_classes} classes but {args.model} outputs "
            f"{classes} logits"
        )
    return shape, x, data, classes


def check_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that can be checked before any table, training or output file.

    Raises:
        BenchError, UserError (and its subclasses): bad input; InheritedLockError (a
        UserError) when the bench lock is held by a flock this run runs under.
    """
    from lut_builder.fileio import check_output
    from lut_builder.parallelism import check_thread_count

    prune_quality.check_lock_not_inherited(args.lock)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise BenchError(
            f"unknown method(s) {', '.join(unknown) or '(none)'}; known: {', '.join(METHODS)}"
        )
    fractions = target_fractions(args.targets)
    targets = list(fractions)
    if args.reference is None:
        halps = [m for m in methods if m.startswith("halp-")]
        preferred = [
            m
            for m in ("halp-auto-calib", "halp-taylor-weights", "halp-taylor-abs", "halp-taylor")
            if m in methods
        ]
        args.reference = (preferred or halps or [None])[0]
    elif args.reference not in methods or not args.reference.startswith("halp-"):
        raise BenchError(
            f"--reference {args.reference} must be one of the halp-* methods run "
            f"({', '.join(m for m in methods if m.startswith('halp-')) or 'none'})"
        )
    if args.min_interval < 1:
        raise BenchError(f"--min-interval must be at least 1, not {args.min_interval}")
    if not 0 < args.prune_window <= 1:
        raise BenchError(f"--prune-window must be a fraction in (0, 1], not {args.prune_window}")
    if args.min_keep is not None and not 0 <= args.min_keep < 1:
        raise BenchError(f"--min-keep must be a fraction in [0, 1), not {args.min_keep}")
    check_deployment(args)
    seeds = parse_seeds(args.seeds)
    for name in ("epochs", "pretrain_epochs", "steps", "batch_size", "rounds", "threads", "step"):
        least = 0 if name == "pretrain_epochs" else 1
        value = getattr(args, name)
        if value is not None and value < least:
            raise BenchError(f"--{name.replace('_', '-')} must be at least {least}, not {value}")
    check_thread_count(args.threads, "--threads")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise BenchError(f"--lr must be a finite number > 0, not {args.lr}")
    out = check_output(args.out, flag="--out", parents=True)
    if out.suffix != ".json":
        raise BenchError(f"--out {args.out} must end in .json (the plot goes beside it)")
    check_output(out.with_suffix(".png"), flag="--out (its .png)", parents=True)
    kept = previous_runs(args, out, methods, targets, seeds) if args.keep else None
    shape, x, data, classes = model_and_data(args)
    return {
        "methods": methods,
        "targets": targets,
        "fractions": fractions,
        "seeds": seeds,
        "shape": shape,
        "data": data,
        "classes": classes,
        "out": out,
        "kept": kept,
    }


def check_deployment(args: argparse.Namespace) -> None:
    """``--backend``, ``--device``, ``--precision`` and ``--table`` checked together (the
    old name of ``--table-backend measured`` is made the new one).

    Raises:
        BenchError: a device or precision the backend does not run here, or a given table
            measured in another deployment.
    """
    if args.table_backend == "onnxruntime":
        args.table_backend = "measured"
    gpu = args.device.startswith("cuda")
    if not gpu and args.device != "cpu":
        raise BenchError(f"--device must be cpu, cuda or cuda:N, not {args.device!r}")
    if gpu and args.backend != "torch":
        raise BenchError(f"--device {args.device} needs --backend torch")
    if args.precision != "fp32" and not gpu:
        raise BenchError(f"--precision {args.precision} is for a GPU (--device cuda)")
    if gpu and not torch.cuda.is_available():
        raise BenchError(f"--device {args.device}: this machine has no CUDA device")
    if args.table is None or not Path(args.table).exists() or args.table_backend == "macs":
        return
    from lut_builder import LatencyTable

    with LatencyTable.open(args.table, force=True) as table:  # a build cut short resumes
        fp = table.fingerprint or {}
    theirs = (fp.get("backend"), fp.get("precision", "fp32"), str(fp.get("device", "")))
    if (
        theirs[0] != args.backend
        or theirs[1] != args.precision
        or theirs[2].startswith("cpu") == gpu
    ):
        raise BenchError(
            f"--table {args.table} was measured on {theirs[0]} {theirs[1]} on "
            f"{theirs[2] or '?'}, not in this run's deployment ({args.backend} "
            f"{args.precision} on {args.device})"
        )


def deployment(args: argparse.Namespace) -> dict[str, Any]:
    """:data:`prune_quality.DEPLOY` for this run: ONNX Runtime or torch on one CPU thread,
    or torch on the GPU at ``--precision``."""
    if args.device.startswith("cuda"):
        options = {"device": args.device, "precision": args.precision}
        return {"backend": "torch", "threads": None, "options": options}
    return {"backend": args.backend, "threads": 1, "options": {}}


def describe_deployment(args: argparse.Namespace) -> str:
    """The deployment in words, for the result's ``timing``."""
    if args.device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(args.device))
        return (
            f"torch on {name} ({args.device}), {args.precision}, each model replayed as one "
            "CUDA graph, channels_last, wall clock in chunks"
        )
    which = "ONNX Runtime" if args.backend == "onnxruntime" else "torch"
    return f"{which} CPU, one intra-op thread"


#: Settings that may differ between a result and the seeds added to it (``--keep``).
KEEP_FREE = ("seeds", "keep", "lock", "threads", "dense_finetune")


def deployment_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A result's settings with the deployment's as a result of today records them:
    results from before ``--backend`` were ONNX Runtime on the CPU at FP32, and named
    their measured table ``onnxruntime``."""
    out = {"backend": "onnxruntime", "device": "cpu", "precision": "fp32", **settings}
    if out.get("table_backend") == "onnxruntime":
        out["table_backend"] = "measured"
    return out


def result_timing(settings: dict[str, Any] | None) -> str:
    """How a result's models were timed (its settings' ``timing``); results from before
    ``--timing`` were timed round-robin."""
    return (settings or {}).get("timing", "round-robin")


def previous_runs(args, out: Path, methods, targets, seeds) -> dict[str, Any]:
    """The result in ``out`` that ``--keep`` adds to: its runs and dense models of the
    seeds not run again, and its commands.

    Raises:
        BenchError: no readable result there, or one of another setting.
    """
    import json

    try:
        prev = json.loads(out.read_text())
        settings = prev["settings"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"--keep: no result to add to in {out} ({exc})") from None
    ours = {k: v for k, v in vars(args).items() if k not in ("out", "table", *KEEP_FREE)}
    theirs = {k: v for k, v in settings.items() if k not in KEEP_FREE}
    theirs.setdefault(
        "reference", "halp-taylor" if "halp-taylor" in prev.get("methods", []) else None
    )
    theirs.setdefault("prune_window", DEFAULT_SPREAD)  # results from before the setting
    theirs.setdefault("min_interval", 1)
    theirs.setdefault("fastnas_score", "val")  # FastNAS scored on validation images then
    theirs["timing"] = result_timing(theirs)
    theirs = deployment_settings(theirs)
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    differ += [k for k, v in (("methods", methods), ("targets", targets)) if prev.get(k) != v]
    if differ:
        raise BenchError(
            f"--keep: {out} was run with other settings ({', '.join(differ)}); "
            "run these seeds to another --out"
        )
    return {
        "runs": [r for r in prev.get("runs", []) if r.get("seed") not in seeds],
        "dense": {k: v for k, v in prev.get("dense", {}).items() if int(k) not in seeds},
        "seeds": [s for s in prev.get("seeds", []) if s not in seeds],
        "commands": prev.get("commands") or [prev.get("command")],
    }


def macs_table(path: Path, model: nn.Module, x: torch.Tensor, step: int, align: int):
    """A table on the measured one's grid whose costs are MACs (analytic backend,
    compute-bound: 1 GMAC/s, unlimited bandwidth, no launch cost; counts rounded up to
    ``align``); no calibration, so a plan's cost is its layers' MAC sum."""
    from lut_builder import LatencyTable
    from lut_builder.backends import get_backend
    from lut_builder.build import build_table

    if not path.exists():
        backend = get_backend(
            "analytic", alignment=align, peak_gmacs=1.0, bandwidth_gbs=1e12, launch_us=0.0
        )
        build_table(path, model, x, backend, step=step, calibration="none")
        backend.close()
    return LatencyTable.open(path)


def plan_reference(dense, x, table, fraction) -> nn.Module:
    """The measured table's plan for ``fraction`` (L2 scores, one solve), untrained: the
    latency the knob methods are matched to when no reference model is there."""
    from halp_trt.graph import ChannelGraph
    from halp_trt.importance import get_importance
    from halp_trt.solver import solve_budget
    from lut_builder import predict_latency

    model = copy.deepcopy(dense).eval()
    graph = ChannelGraph(model, x)
    scores = get_importance("l2")(graph).scores()
    full = predict_latency(table, [(i.signature, i.c_in, i.c_out) for i in graph.layers.values()])
    plan = solve_budget(graph, table, scores, fraction * full)
    return graph.remove(plan.keep)


#: Methods solved on the MACs table.
MACS_METHODS = (
    "halp-taylor-macs",
    "halp-taylor-abs-macs",
    "halp-taylor-weights-macs",
    "halp-taylor-weights-macs-calib",
    "halp-auto-macs-calib",
)
#: Methods that need no measured table: run before it is built (its build waits for the
#: bench lock).
TABLE_FREE = (*MACS_METHODS, "modelopt-fastnas")


def train_config(args: argparse.Namespace, seed: int, epochs: int | None = None):
    """The bench's training configuration for ``seed``: ``epochs`` (default ``--epochs``,
    the training every method's model gets after its pruning) on ``--device`` (the GPU
    the models are timed on, else the CPU)."""
    from halp_trt.train import TrainConfig

    epochs = args.epochs if epochs is None else epochs
    return TrainConfig(
        epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, device=args.device
    )


def dense_finetuned(dense: nn.Module, data, args: argparse.Namespace, seed: int) -> dict:
    """A copy of the dense model trained ``--epochs`` more, as each method's model is after
    its pruning (the same configuration and seed), unpruned: ``finetuned_val_acc`` and
    ``finetuned_s``. Where the pruned models reach it, the budget, not the channels a
    method kept, sets their accuracy; ``dense`` itself is left as it is."""
    from halp_trt.train import Trainer, evaluate

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = copy.deepcopy(dense).to(args.device).train()
    Trainer(model, data, train_config(args, seed)).fit()
    return {
        "finetuned_val_acc": evaluate(model.cpu().eval(), data.val)[1],
        "finetuned_s": time.perf_counter() - t0,
    }


def run_target(ctx, seed, target, dense, models_out, log, only=None, done=None) -> list[dict]:
    """Every method at one seed and target (``only``: these alone, not timed), after
    those already ``done`` (``(runs, models)`` of an ``only`` call); the models timed
    with the dense one."""
    from halp_trt.train import Trainer, evaluate

    args, x, table, align = ctx["args"], ctx["x"], ctx.get("table"), ctx["align"]
    data, fraction = ctx["data"], ctx["fractions"][target]
    config = train_config(args, seed)
    runs, models = done or ([], {"dense": dense})
    selected = [
        m
        for m in ctx["methods"]
        if (only is None or m in only) and not any(r["method"] == m for r in runs)
    ]
    for row in runs:  # run before the measured table was there
        if row["status"] == "ok" and "predicted_ratio" not in row:
            row["predicted_ratio"] = ctx["predict"](models[row["method"]]) / ctx["predict"](dense)

    def record(method: str, fn: Callable[[], tuple[nn.Module, dict]]) -> None:
        t0 = time.perf_counter()
        row: dict[str, Any] = {"seed": seed, "target": target, "target_fraction": fraction}
        row["method"] = method
        try:
            torch.manual_seed(seed)
            model, extra = fn()
            row.update(extra)
            model = model.to(args.device).eval()  # where it was trained, if it was
            row["val_acc"] = evaluate(model, data.val, device=args.device)[1]
            model = model.cpu()
            row["params"] = sum(p.numel() for p in model.parameters())
            row["widths"] = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
            if "predict" in ctx:
                row["predicted_ratio"] = ctx["predict"](model) / ctx["predict"](dense)
            row["status"] = "ok"
            models[method] = model
        except Exception as exc:  # one method failing does not stop the bench
            row["status"] = "failed"
            row["error"] = f"{type(exc).__name__}: {exc}"
            # Paths relative to the repository: results are committed.
            row["traceback"] = traceback.format_exc(limit=6).replace(f"{ROOT}{os.sep}", "")
        row["method_s"] = time.perf_counter() - t0
        runs.append(row)
        log(
            f"seed {seed} {target} {method}: {row['status']}"
            + (f", val acc {row['val_acc']:.4f}" if row["status"] == "ok" else f" ({row['error']})")
            + f", {row['method_s']:.0f} s"
        )

    def halp(importance, schedule, tbl, monotone=False, floor=False):
        def fn():
            min_keep = target_floor(args.min_keep, fraction) if floor else args.min_keep
            slim, plan, extra = train_halp(
                dense, data, config, x, tbl, target, importance, schedule, args.steps,
                feedback=not args.no_feedback, min_keep=min_keep, monotone_table=monotone,
                window=args.prune_window, min_interval=args.min_interval,
            )  # fmt: skip
            return slim, {k: v for k, v in extra.items() if k != "kept"}

        return fn

    def finetuned(model: nn.Module, extra: dict, t_prune: float) -> tuple[nn.Module, dict]:
        t0 = time.perf_counter()
        fit = Trainer(model.to(args.device), data, config).fit()
        return model, {
            **extra,
            "prune_s": t_prune,
            "finetune_s": time.perf_counter() - t0,
            **before_bn(fit),
        }

    halp_methods = {
        "halp-taylor": ("taylor", "exp", table),
        "halp-taylor-monotone": ("taylor", "exp", table, True),
        "halp-taylor-abs": ("taylor-abs", "exp", table),
        "halp-taylor-abs-floor": ("taylor-abs", "exp", table, False, True),
        "halp-taylor-norm": (mean_normalised("taylor"), "exp", table),
        "halp-taylor-abs-norm": (mean_normalised("taylor-abs"), "exp", table),
        "halp-taylor-abs-layers": (layer_weighted("taylor-abs"), "exp", table),
        "halp-taylor-abs-mean": ("taylor-abs-mean", "exp", table),
        "halp-taylor-l2": ("taylor-l2", "exp", table),
        "halp-taylor-abs-concave": (concave_value("taylor-abs"), "exp", table),
        "halp-taylor-weights": ("taylor-weights", "exp", table),
        "halp-taylor-weights-norm": (mean_normalised("taylor-weights"), "exp", table),
        "halp-taylor-weights-summed": (summed_gradient(), "exp", table),
        "halp-taylor-weights-summed-norm": (mean_normalised(summed_gradient()), "exp", table),
        "halp-taylor-abs-oneshot": ("taylor-abs", "oneshot", table),
        "halp-sp-lamp": ("sp-lamp", "oneshot", table),
        "halp-sp-lamp-exp": ("sp-lamp", "exp", table),
        "halp-taylor-macs": ("taylor", "exp", ctx.get("macs_table")),
        "halp-taylor-abs-macs": ("taylor-abs", "exp", ctx.get("macs_table")),
        "halp-taylor-weights-macs": ("taylor-weights", "exp", ctx.get("macs_table")),
    }
    for method in [m for m in selected if m in halp_methods]:
        record(method, METHOD_FUNCS.get(method) or halp(*halp_methods[method]))

    n = CALIBRATION_BATCHES
    calibrated = {  # method: (importance, calibration batches, knapsack steps)
        "halp-taylor-abs-calib": ("taylor-abs", n, 1),
        "halp-sensitivity": ("sensitivity", n, 1),
        "halp-sensitivity-tie": (weighted_sensitivity(SENSITIVITY_LOSS_WEIGHT), n, 1),
        "halp-taylor-weights-calib": ("taylor-weights", n, 1),
        "halp-taylor-weights-norm-calib": (mean_normalised("taylor-weights"), n, 1),
        "halp-taylor-weights-mean-calib": ("taylor-weights-mean", n, 1),
        "halp-taylor-weights-root-calib": (terms_root("taylor-weights"), n, 1),
        "halp-taylor-weights-calib4": ("taylor-weights", WINDOW_BATCHES, 1),
        "halp-taylor-weights-calib-steps": ("taylor-weights", n, args.steps),
        "halp-taylor-abs-calib16": ("taylor-abs", 2 * n, 1),
        "halp-taylor-weights-calib16": ("taylor-weights", 2 * n, 1),
        "halp-taylor-weights-macs-calib": ("taylor-weights", n, 1),
        "halp-taylor-weights-calib-floor": ("taylor-weights", n, 1),
        "halp-taylor-weights-concave-calib": (concave_value("taylor-weights"), n, 1),
        "halp-taylor-weights-calib-first": ("taylor-weights", n, 1),
        "halp-sp-lamp-calib": ("sp-lamp", n, 1),
        "halp-taylor-fisher-calib": ("taylor-fisher", n, 1),
        "halp-auto-calib": ("auto", n, 1),
        "halp-auto-macs-calib": ("auto", n, 1),
    }
    variants = {  # method: how it departs from halp-taylor-weights-calib's path
        "halp-taylor-weights-macs-calib": "macs",  # solved on the MACs table
        "halp-auto-macs-calib": "macs",
        "halp-taylor-weights-calib-floor": "floor",  # no group below the target's fraction
        "halp-taylor-weights-calib-first": "first",  # no first-stage group below it
    }
    measured = {  # method: how its sensitivity() values the measurement
        "halp-sensitivity-calib": {},
        "halp-sensitivity-max-calib": {"power": SENSITIVITY_POWER},
        "halp-sensitivity-acc-calib": {"metric": "accuracy"},
    }
    for method in [m for m in selected if m in measured]:
        calibrated[method] = (sensitivity(data, **measured[method]), n, 1)
    for method in [m for m in selected if m in calibrated]:

        def calibrated_fn(how=calibrated[method], name=method):
            variant, t0 = variants.get(name), time.perf_counter()
            slim, extra = halp_calibrated(
                dense, data, x, ctx.get("macs_table") if variant == "macs" else table,
                target, how[0], batch_size=args.batch_size, feedback=not args.no_feedback,
                min_keep=(
                    target_floor(args.min_keep, fraction) if variant == "floor"
                    else args.min_keep
                ),
                batches=how[1], steps=how[2],
                min_channels=first_stage_floor(dense, x, fraction) if variant == "first" else None,
            )  # fmt: skip
            return finetuned(slim, extra, time.perf_counter() - t0)

        record(method, METHOD_FUNCS.get(method) or calibrated_fn)

    # FastNAS's second point needs its first model and a reference, so it runs in the
    # pass that has the table (the first seed's FastNAS may have run before it).
    fastnas_plus = only is None and "modelopt-fastnas" in ctx["methods"]
    reference, no_reference = models.get(args.reference), None
    if reference is None and (fastnas_plus or any(m in KNOB_METHODS for m in selected)):
        try:
            reference = plan_reference(dense, x, table, fraction)
        except Exception as exc:  # e.g. a target below the table's reach
            no_reference = exc
    # How a baseline is timed against the reference while it is brought to its latency.
    ratio_of = blocks_ratio if args.timing == "blocks" else prune_quality.measure_ratio
    grads: dict[int, dict] = {}  # Torch-Pruning's Taylor gradients, per batch count
    # The knob methods' widths do not depend on the batch: their graphs are traced at one
    # input (a batch-128 64x64 MobileNetV2 took 55 s a uniform copy on one CPU thread).
    x1 = x[:1]
    for method in [m for m in selected if m in KNOB_METHODS]:
        if method == "uniform":
            make, knobs = (lambda f: uniform_prune(dense, x1, f, align)), np.arange(1, 50) / 50
        else:
            crit, batches = TP_METHODS[method]
            if crit == "taylor" and batches not in grads:
                grads[batches] = taylor_grads(dense, data, args.batch_size, batches, args.device)
            make = functools.partial(
                tp_global, dense, x1, align=align, classes=ctx["classes"], criterion=crit,
                grads=grads.get(batches),
            )  # fmt: skip
            knobs = np.arange(0, 46) / 50
        matched: dict[str, Any] = {}

        def matched_fn(method=method, make=make, knobs=knobs, matched=matched):
            if no_reference is not None:
                raise RuntimeError(f"no latency to match: {no_reference}")
            t0 = time.perf_counter()
            match = (
                functools.partial(match_latency, both_sides=True, ratio_of=ratio_of)
                if args.match == "measured"
                else match_predicted
            )
            knob, model, ratio, history, priced = match(make, ctx["predict"], reference, x, knobs)
            matched.update(knob=knob, priced=priced, ms=ctx["predict"](model))
            extra = {"knob": float(knob), "matched_ratio": ratio, "matching": history}
            return finetuned(model, extra, time.perf_counter() - t0)

        record(method, METHOD_FUNCS.get(method) or matched_fn)
        if "priced" in matched:
            above = [c for c in matched["priced"] if c[0] > matched["ms"] * 1.001]
            if above:
                _, _, a_knob = min(above, key=lambda c: (c[0], -c[1]))

                def wider(make=make, a_knob=a_knob):
                    t0 = time.perf_counter()
                    model = make(a_knob)
                    return finetuned(model, {"knob": float(a_knob)}, time.perf_counter() - t0)

                record(f"{method}+", wider)

    # FastNAS's search of this seed and target is kept for its second point.
    search_dir = ctx["workdir"] / f"fastnas_{seed}_{target}"

    def search(f: float) -> nn.Module:
        search_dir.mkdir(exist_ok=True)
        return fastnas(
            dense, data, x, f, align, args.batch_size, search_dir,
            score_on=args.fastnas_score,
        )  # fmt: skip

    if "modelopt-fastnas" in selected:

        def fastnas_fn():
            t0 = time.perf_counter()
            model = search(fraction)
            return finetuned(model, {"flops_fraction": fraction}, time.perf_counter() - t0)

        record("modelopt-fastnas", METHOD_FUNCS.get("modelopt-fastnas") or fastnas_fn)

    if fastnas_plus and "modelopt-fastnas" in models:

        def fastnas_plus_fn():
            if no_reference is not None:
                raise RuntimeError(f"no latency to bracket: {no_reference}")
            t0 = time.perf_counter()
            f, model, ratio, history = fastnas_bracket(
                search, models["modelopt-fastnas"], fraction, reference, x, ratio_of,
                same=lambda a, b: conv_widths(a) == conv_widths(b),
            )  # fmt: skip
            extra = {"flops_fraction": f, "matched_ratio": ratio, "matching": history}
            return finetuned(model, extra, time.perf_counter() - t0)

        record("modelopt-fastnas+", METHOD_FUNCS.get("modelopt-fastnas+") or fastnas_plus_fn)

    if only is not None:
        return runs, models
    shutil.rmtree(search_dir, ignore_errors=True)
    if len(models) > 1:
        timing = (measure_blocks if args.timing == "blocks" else measure_interleaved)(
            models, x, args.rounds
        )
        for row in runs:
            if row["method"] in timing:
                row["measured_ratio"] = timing[row["method"]]["ratio_to_dense"]
                row["measured_ms"] = timing[row["method"]]["median_ms"]
                # A model (or the dense one) not run as the table's layers were timed:
                note = timing[row["method"]].get("runner_note") or timing["dense"].get(
                    "runner_note"
                )
                if note:
                    row["runner_note"] = note
        models_out[(seed, target)] = {"dense_ms": timing["dense"]["median_ms"]}
        remeasure(runs, models, x)
    return runs


def measure_blocks(models: dict[str, nn.Module], x: torch.Tensor, rounds: int) -> dict:
    """All models in turn in one run, ``rounds`` rounds, each model one block of
    back-to-back inferences a round (:func:`lut_builder.timing.time_blocks`, as the
    pruner's feedback times: blocks of at least 20 ms and 5 inferences after 3 untimed;
    ONNX Runtime, one thread, thread clock; the order turns round by round; on a GPU,
    chunks of inferences for 20 ms a round on the wall clock, as the feedback times
    there). Every model
    runs as it is served, and all sample the same minutes of the machine, as the
    round-robin does: timed against the dense model one after another, the same model read
    up to 10% apart a minute later on this project's shared machines. The figures of
    :func:`prune_quality.measure_interleaved`, which runs it: per model the median, p10 and
    p90 of its block medians (ms) and the median per-round ratio to the dense model."""
    from halp_trt.prune.feedback import served_times

    def in_blocks(runners: list, rounds: int) -> list[list[float]]:
        return served_times(runners, rounds=rounds)

    return measure_interleaved(models, x, rounds, time_runners=in_blocks)


def blocks_ratio(model: nn.Module, reference: nn.Module, x: torch.Tensor) -> float:
    """``model``'s latency over ``reference``'s, timed as :func:`measure_blocks` times
    (30 blocks each): ``--match measured`` with ``--timing blocks``."""
    return measure_blocks({"dense": reference, "model": model}, x, 30)["model"]["ratio_to_dense"]


def remeasure(runs: list[dict], models: dict[str, nn.Module], x: torch.Tensor) -> None:
    """Each halp-trt model that measured its plans (``steps_measured_ratio``) timed once
    more the pruner's way (:class:`halp_trt.prune.MeasuredLatency`: the model and the dense
    one alone, in interleaved blocks, to the feedback's precision) after the bench's timing:
    ``remeasured_ratio`` and its ``remeasured_halfwidth``. Where the round-robin ratio and
    the pruner's last step disagree, this tells a change of timing method (it agrees with
    the pruner) from a change of the model's speed or of the machine's (it agrees with the
    round-robin)."""
    rows = [
        r for r in runs
        if r["status"] == "ok" and r["method"] in models
        and any(v is not None for v in r.get("steps_measured_ratio") or [])
    ]  # fmt: skip
    if not rows:
        return
    with prune_quality.bench_lock(), prune_quality.deploy_feedback(models["dense"], x) as measure:
        for row in rows:
            row["remeasured_ratio"] = measure(models[row["method"]])
            row["remeasured_halfwidth"] = measure.halfwidth


#: Test hook: a method name -> a callable returning ``(model, extra facts)`` that
#: replaces the method's own (the tests force a failure through it).
METHOD_FUNCS: dict[str, Callable[[], tuple[nn.Module, dict]]] = {}


def main(argv: list[str] | None = None) -> int:
    from halp_trt.errors import UserError
    from lut_builder.errors import UserError as LutUserError

    args = parse_args(argv)
    try:
        checked = check_inputs(args)
    except (BenchError, UserError, LutUserError, ValueError) as exc:
        print(f"pareto.py: error: {exc}", file=sys.stderr)
        return 2

    prune_quality.LOCK = args.lock
    deploy_before = prune_quality.DEPLOY
    prune_quality.DEPLOY = deployment(args)
    try:
        return run(args, checked, argv)
    except (UserError, LutUserError) as exc:
        # past the checks (a table whose build failed, ...): one line; what the run
        # finished is in --out, as it was saved after each method
        print(f"pareto.py: error: {exc} (what ran before it is in {args.out})", file=sys.stderr)
        return 1
    finally:
        prune_quality.DEPLOY = deploy_before


def run(args: argparse.Namespace, checked: dict[str, Any], argv: list[str] | None) -> int:
    """The bench, its inputs checked (:func:`check_inputs`) and its deployment set."""
    from halp_trt.prune import network_latency
    from halp_trt.specs import example_input, load_model
    from halp_trt.train import Trainer, evaluate
    from lut_builder.backends import get_backend
    from lut_builder.fileio import atomic_write_json
    from lut_builder.latency_model import check_summary

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.0f} s] {msg}", flush=True)

    shape, data, out = checked["shape"], checked["data"], checked["out"]
    torch.manual_seed(0)
    arch = load_model(args.model).eval()
    x = example_input(arch, shape).cpu()
    backend = get_backend(prune_quality.DEPLOY["backend"], **prune_quality.deploy_options())
    block = backend.alignment  # the deployment's channel block
    backend.close()
    step = args.step or block
    tag = "".join(c if c.isalnum() else "_" for c in args.model.split(":")[-1])
    shape_tag = "x".join(map(str, shape))
    kept = checked["kept"] or {"runs": [], "dense": {}, "seeds": [], "commands": []}
    result: dict[str, Any] = {"dense": dict(kept["dense"])}

    def train_dense(seed: int) -> nn.Module:
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        dense = load_model(args.model).to(args.device).train()
        cfg = train_config(args, seed, args.pretrain_epochs)
        if args.pretrain_epochs:
            Trainer(dense, data, cfg).fit()
        acc = evaluate(dense.eval(), data.val, device=args.device)[1]
        dense = dense.cpu()
        result["dense"][str(seed)] = {"val_acc": acc, "seconds": time.perf_counter() - t0}
        log(f"seed {seed}: dense val acc {acc:.4f}")
        if args.dense_finetune:
            result["dense"][str(seed)] |= dense_finetuned(dense, data, args, seed)
            log(f"seed {seed}: dense, trained {args.epochs} epochs more: val acc "
                f"{result['dense'][str(seed)]['finetuned_val_acc']:.4f}")  # fmt: skip
        return dense

    kind = "" if args.table_backend == "measured" else "_macs"
    where = f"_torch_{args.device.replace(':', '')}_{args.precision}"
    where = "" if args.backend == "onnxruntime" else where
    table_path = Path(args.table or f"/tmp/pareto_{tag}_{shape_tag}_s{step}{where}{kind}.db")
    # Every method gets halp-trt's grain: the solver's bundle is the table's alignment, or
    # its grid step where coarser (a step-16 grid on an AVX2 CPU, whose alignment is 8).
    align = step if kind else max(step, block)
    # Work files of the run (FastNAS's searches), removed at its end.
    work = tempfile.TemporaryDirectory(prefix="pareto-")
    ctx: dict[str, Any] = {**checked, "args": args, "x": x, "align": align}
    ctx["workdir"] = Path(work.name)
    if set(MACS_METHODS) & set(checked["methods"]):
        ctx["macs_table"] = macs_table(
            table_path.with_name(table_path.stem + "_macs.db"), arch, x, step, align
        )
    command = "python bench/pareto.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    result |= {
        "benchmark": "pareto",
        "command": command,
        **({"commands": [*kept["commands"], command]} if checked["kept"] else {}),
        "model": args.model,
        "data": data.describe(),
        "input_shape": list(shape),
        "targets": checked["targets"],
        "seeds": sorted(kept["seeds"] + checked["seeds"]),
        "methods": checked["methods"],
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "table")},
        "timing": f"{describe_deployment(args)}, interleaved with the dense model "
        + (
            f"({args.rounds} rounds, thread clock); the machine was shared"
            if args.timing == "round-robin"
            else f"in blocks of back-to-back inferences, all models in turn ({args.rounds} "
            "rounds, one block each a round, thread clock); the machine was shared"
        ),
        "host": {"python": platform.python_version(), "torch": torch.__version__},
    }
    all_methods = [
        name
        for m in checked["methods"]
        for name in ((m, f"{m}+") if m in BRACKETED_METHODS else (m,))
    ]

    def save(runs: list[dict], status: str) -> None:
        runs = kept["runs"] + runs
        result["status"] = status
        result["summary"] = summarise(
            runs, all_methods, checked["targets"], args.reference, result["dense"]
        )
        result["seconds"] = time.perf_counter() - t_start
        atomic_write_json(out, {**result, "runs": runs}, indent=1, default=float)
        plot(
            runs,
            checked["methods"],
            out.with_suffix(".png"),
            f"{spec_label(args.model)} on {spec_label(args.data)} {shape_tag}: "
            "accuracy vs measured latency",
            dense_finetuned=result["summary"].get("dense_finetuned_val_acc_mean"),
        )
        log(f"wrote {out} ({status})")

    # The first seed's dense model, and the methods that need no measured table, run
    # before the table is built (its build waits for the bench lock).
    seed0 = checked["seeds"][0]
    denses = {seed0: train_dense(seed0)}
    early = {
        t: run_target(ctx, seed0, t, denses[seed0], {}, log, only=TABLE_FREE)
        for t in checked["targets"]
    }
    save([r for runs, _ in early.values() for r in runs], "waiting for the measured table")
    log(f"measured table {table_path} ...")
    if args.table_backend == "macs":
        table = macs_table(table_path, arch, x, step, step)
    else:
        table = build_or_open_table(table_path, arch, x, step)
    ctx["table"] = table

    def predict(model: nn.Module) -> float:
        layers = layer_shapes(model, x)
        return network_latency(table, layers, {n: (i.c_in, i.c_out) for n, i in layers.items()})

    ctx["predict"] = predict
    result["table"] = {
        "backend": args.backend if args.table_backend == "measured" else "macs",
        "threads": prune_quality.DEPLOY["threads"],
        "fingerprint": table.fingerprint,
        "alignment": table.alignment,
        "step": table.step,
        "overhead_ms": table.overhead_ms,
        "scale": table.scale,
        # The build's check of its latency model on random-width copies (None: none).
        "check": check_summary((table.overhead or {}).get("check")),
    }
    runs: list[dict] = []
    timings: dict = {}
    for seed in checked["seeds"]:
        dense = denses.pop(seed, None) or train_dense(seed)
        for target in checked["targets"]:
            done = early.pop(target) if seed == seed0 else None
            runs += run_target(ctx, seed, target, dense, timings, log, done=done)
            result["dense"][str(seed)][f"measured_ms_{target}"] = timings.get(
                (seed, target), {}
            ).get("dense_ms")
            last = seed == checked["seeds"][-1] and target == checked["targets"][-1]
            save(runs, "complete" if last else f"done up to seed {seed}, target {target}")
    table.close()
    work.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
