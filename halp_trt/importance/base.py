"""The importance protocol and the registry that names criteria.

A criterion scores every channel of every prunable group of a :class:`ChannelGraph`;
the solver keeps the channels whose scores add up to the most under a latency budget.
Criteria are picked by name (``get_importance("taylor")``); a new one registers itself
with ``@register_importance("name")``.

Gradient-based criteria (``taylor``) are fed once per minibatch, after the backward
pass, through :meth:`Importance.accumulate`; :meth:`Importance.scores` returns the
average over the minibatches seen since the last :meth:`Importance.reset`. Criteria
that read only the weights (``l1``, ``l2``, ``sp-lamp``) ignore ``accumulate`` and
score the current weights.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn

from ..errors import UserError

_REGISTRY: dict[str, type[Importance]] = {}

#: The criterion the pruner, ``halp-trt prune`` and ``halp-trt run`` use unless told:
#: ``auto``, one of two criteria by the latency target and the width of the residual
#: streams (:func:`choose_importance`). HALP's ``taylor`` takes the absolute value of the
#: sum of a channel's first-order terms over the BatchNorms its group couples; in a
#: residual stream those are the projections of several blocks, whose terms cancel, and
#: the knapsack cut MobileNetV2's streams to the floor. ``taylor-abs`` sums the terms'
#: magnitudes and kept them wider (2.2 points at 0.5x and 0.3x,
#: bench/results/pareto_mobilenetv2_abs.json), but still sees a stream only through its
#: writers. ``taylor-weights`` scores a channel on the weights of every layer that writes
#: or reads it, the expansions of every block of the stage included, and keeps the
#: streams; over every dense model of bench/results it was run on beside ``taylor-abs``
#: (bench/pareto_pairs.py: seven settings, 51 pairs) it scored 0.47 points more [+0.09,
#: +0.84]. ``taylor-fisher`` (the empirical Fisher information) chooses better which
#: stream channels go once the budget cuts the streams, and worse where there is room to
#: keep them; there ``taylor-weights-mean``, the weights' terms averaged over a channel's
#: layers, cuts streams and expansions alike: see :data:`AUTO_FISHER_BELOW` and the
#: README's "Accuracy against measured latency".
DEFAULT_IMPORTANCE = "auto"

#: The name of the criterion chosen by the latency target (:func:`choose_importance`):
#: ``taylor-fisher`` below :data:`AUTO_FISHER_BELOW` of the unpruned latency (unless the
#: residual streams are wide: :data:`AUTO_MEAN_STREAMS`), :data:`AUTO_ABOVE` from it up
#: (unless depthwise convolutions sit on the streams: :func:`depthwise_streams`).
AUTO_IMPORTANCE = "auto"
#: Where ``auto`` switches. Over every pair of the two criteria in bench/results
#: (bench/pareto_pairs.py halp-taylor-fisher-calib halp-taylor-weights-calib: the
#: MobileNetV2 at batch 8 and 1, the ResNet-18; bench/PARETO.md "The empirical Fisher
#: information"), ``taylor-fisher`` scored -0.50 [-0.7, -0.2] points under
#: ``taylor-weights`` at 0.6x and 0.7x (18 pairs), where both keep the residual streams
#: whole, and +0.28 [-0.1, +0.7] over it at 0.5x, 0.4x and 0.3x (30 pairs), where the
#: budget cuts them; on the MobileNetV2 at batch 8 it is resolved ahead of FastNAS at
#: 0.3x (the first criterion to be) and of Torch-Pruning's Taylor at 0.4x. No run lies
#: between 0.5x and 0.6x: the switch is put halfway. Below it the choice depends on the
#: width of the model's residual streams: see :data:`AUTO_MEAN_STREAMS`.
AUTO_FISHER_BELOW = 0.55
#: What ``auto`` runs from :data:`AUTO_FISHER_BELOW` up. ``taylor-weights`` sums a
#: channel's terms over every layer that writes or reads it, so a residual stream's
#: channel outscores an expansion's by about the number of blocks that read it, and
#: where little has to go the plan keeps the streams whole (0.97-0.99 of them on the
#: MobileNetV2 at 0.6x-0.7x) and takes the latency from the expansions; uniform width led
#: it there (-0.62 [-1.1, -0.2] at 0.7x, 12 pairs). Averaged over the layers, the plans
#: cut both kinds alike (0.67-0.79 of the streams, as uniform width's 0.66-0.81): over
#: the 18 dense models of its runs at 0.6x and 0.7x (the MobileNetV2 at batch 8 and 1,
#: the ResNet-18; bench/PARETO.md "The default's upper branch averages") +0.27 [-0.01,
#: +0.55] points over ``taylor-weights``, -0.04 [-0.41, +0.33] against uniform width and
#: +0.42 [+0.09, +0.76] over Torch-Pruning's Taylor (15 of them).
#: At 0.5x and below it sends the MobileNetV2's streams to the floor (-1.0 under
#: ``taylor-weights``), where ``taylor-fisher`` runs (:data:`AUTO_MEAN_STREAMS`).
AUTO_ABOVE = "taylor-weights-mean"
#: Below :data:`AUTO_FISHER_BELOW`, ``auto`` keeps :data:`AUTO_ABOVE` on a network whose
#: residual streams are at least this fraction as wide as the layers they feed
#: (:func:`stream_width_ratio`). ``taylor-fisher`` adds up a stream channel's terms over
#: the BatchNorms of every block that writes it and keeps the streams; where they are
#: bottlenecks (a MobileNetV2's, 0.17 of the expansions they feed) cutting them costs,
#: and it scored +0.41 over ``taylor-weights`` at 0.5x where the averaged terms scored
#: about a point under it (-0.8 to -1.0 over the record's runs, Zen 3). Where the streams
#: are as wide as the blocks (the ResNet-18's, 0.77) the averaged terms cut them and
#: scored +1.17 [+0.4, +2.0] over ``taylor-fisher`` at 0.5x and +0.49 [-0.4, +1.4] at
#: 0.3x (six seeds, AVX-512 Xeon); where they are wider (a bottleneck ResNet-26's, 2.97;
#: the rule set before its runs) +1.51 [+0.2, +2.8] and +1.38 [-0.2, +2.9], and +2.77 and
#: +3.84 over uniform width (bench/PARETO.md "Which criterion below 0.55x: by the width
#: of the residual streams"). On a ConvNeXt (0.25; checked after the rule was set, on
#: its other side) ``taylor-fisher`` scored +1.34 [+0.2, +2.5] over the averaged terms
#: at 0.5x and +0.56 at 0.3x (bench/PARETO.md "The rule's other side"). Over every pair
#: of the two on record below 0.55x (bench/pareto_pairs.py) the averaged terms are -1.01
#: [-1.48, -0.55] under ``taylor-fisher`` on the MobileNetV2 and the ConvNeXt (21 pairs,
#: 2 ahead) and +1.10 [+0.66, +1.54] over it on the two ResNets (24 pairs, 21 ahead).
#: The threshold lies between the kinds measured (0.17 and 0.25; 0.77 and 2.97); a
#: network without residual sums keeps ``taylor-fisher``, as before.
AUTO_MEAN_STREAMS = 0.5


class ImportanceError(UserError):
    """Importances that cannot be used: NaN or infinite scores, an unknown criterion."""


class Importance:
    """Per-channel importance of the prunable groups of a channel graph.

    Args:
        graph: the model's channel graph; its ``model`` is the module whose parameters
            (and gradients) are read.

    Attributes:
        name: the registry name.
        needs_gradients: True when :meth:`accumulate` must be called after backward.
        needs_batches: True for a criterion that measures subnets before training
            (``sensitivity``): the pruner's ``calibrate`` hands it the calibration
            minibatches and each group's knapsack options through ``measure(batches,
            options, loss_fn)``, and it cannot score while training.
    """

    name: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = False
    needs_batches: ClassVar[bool] = False

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        self.groups = list(graph.prunable)
        self.model: nn.Module = graph.model

    def accumulate(self, *, skip_nonfinite: bool = False) -> bool:
        """Add the current minibatch's contribution (call after ``loss.backward()``).

        Args:
            skip_nonfinite: drop a minibatch whose contribution is NaN or infinite
                instead of poisoning the average (mixed precision: the gradient scaler
                skips such steps too). Otherwise a non-finite contribution makes the next
                :meth:`scores` raise.

        Returns:
            True if the minibatch was counted.
        """
        return True

    def scores(self) -> dict[int, np.ndarray]:
        """Per-channel scores of every prunable group, float64, in group coordinates.

        Raises:
            ImportanceError: a score is NaN or infinite, or a gradient-based criterion
                has seen no minibatch.
        """
        raise NotImplementedError

    def reset(self) -> None:
        """Forget accumulated minibatches (called after each pruning step)."""

    @property
    def count(self) -> int:
        """Minibatches accumulated since the last reset."""
        return 0

    def state_dict(self) -> dict[str, Any]:
        """What :meth:`load_state_dict` needs to resume mid-way between pruning steps."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""


def register_importance(name: str) -> Callable[[type[Importance]], type[Importance]]:
    """Class decorator: register an :class:`Importance` subclass under ``name``.

    Raises:
        ValueError: the name is already taken by another class.
    """

    def wrap(cls: type[Importance]) -> type[Importance]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"importance {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def list_importances(pattern: str = "*") -> list[str]:
    """Registered criterion names matching a glob pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def _known() -> str:
    """Every name an importance spec may be, for error messages: ``auto`` and the
    registered criteria."""
    return ", ".join([AUTO_IMPORTANCE, *list_importances()])


def get_importance(name: str) -> type[Importance]:
    """The criterion class registered as ``name``; instantiate it with a channel graph.

    Raises:
        ImportanceError: no criterion of that name (the message lists the known ones).
    """
    if name not in _REGISTRY:
        raise ImportanceError(f"unknown importance {name!r}; known: {_known()}")
    return _REGISTRY[name]


def check_finite(scores: dict[int, np.ndarray], graph: Any, what: str) -> None:
    """Raise :class:`ImportanceError` naming the first group with a NaN/inf score."""
    for gid, s in scores.items():
        if not np.isfinite(s).all():
            group = graph.group(gid)
            layer = (group.producers or group.norms or group.consumers)[0].layer
            kind = "NaN" if np.isnan(s).any() else "infinite"
            raise ImportanceError(
                f"{what} importance of group {gid} (layer {layer}) is {kind}: the loss or "
                "the weights diverged (lower the learning rate or check the data)"
            )


def channel_positions(ref: Any, size: int) -> torch.Tensor:
    """Layer positions of every group channel as a (size, multiplicity) index tensor."""
    return torch.as_tensor(ref.index, dtype=torch.long).view(size, -1)


def per_output_channel(t: torch.Tensor) -> torch.Tensor:
    """Reduce a parameter-shaped tensor to one value per output channel (dim 0)."""
    return t.reshape(t.shape[0], -1).sum(1) if t.dim() > 1 else t


#: What :func:`resolve_importance` takes: a registered name, ``"module:attr"``, an
#: :class:`Importance` subclass, or a factory called with the channel graph.
ImportanceSpec = Any


def stream_width_ratio(graph: Any) -> float | None:
    """How wide a network's residual streams are against the layers they feed.

    A stream is a prunable group written by two or more dense layers (the convolutions
    whose outputs a residual sum adds: a stage's block outputs and its shortcut). For
    each stream and each dense layer reading it whose output is a prunable group and
    not itself a stream (a block's first convolution, an inverted residual's expansion;
    not a shortcut into the next stream, not the classifier), the ratio of the stream's
    width to that layer's output width; the geometric mean of those ratios: about 1/6 on
    a MobileNetV2 (streams the bottlenecks of the expansions they feed), 1 on a
    ResNet-18, 4 on a bottleneck ResNet. None where the network has no such pair.
    """
    dense = graph.layers_of_mode("dense")
    writes = {ref.layer: g for g in graph.groups for ref in g.producers}
    streams = graph.residual_streams
    logs = [
        float(np.log(stream.size / out.size))
        for stream in graph.prunable
        if stream.id in streams
        for ref in stream.consumers
        if ref.layer in dense
        and (out := writes.get(ref.layer)) is not None
        and out.prunable
        and out.id not in streams
    ]
    return float(np.exp(np.mean(logs))) if logs else None


def depthwise_streams(graph: Any) -> bool:
    """Whether a depthwise convolution reads one of the network's residual streams (a
    ConvNeXt's 7x7 on each block's input; a MobileNetV2's depthwise convolutions read
    the expansions, not the streams). On the one such network run, a ConvNeXt, the
    averaged terms of :data:`AUTO_ABOVE` scored its first two stages' channels lowest:
    at 0.7x every plan put the first stage's stream and expansions and the second's
    stream at the per-group floor (16 of 32, 64 of 128, 32 of 64) and kept the rest
    nearly whole, on the measured table and on a MACs table alike. ``taylor-fisher`` at
    the floor 0.1 kept every stream and cut the expansions in every stage, as FastNAS
    and Torch-Pruning's Taylor do, and scored +0.64 [-0.3, +1.6] points over it (six
    seeds, 5 ahead; level with those two and uniform width, where the averaged terms
    trailed each), as it had at 0.5x (+1.34) and 0.3x (+0.56): bench/PARETO.md "The
    ConvNeXt where little is cut". ``auto`` runs ``taylor-fisher`` at every target on
    such a network (:func:`auto_choice`)."""
    streams = graph.residual_streams
    depthwise = graph.layers_of_mode("depthwise")
    return any(
        ref.layer in depthwise
        for group in graph.prunable
        if group.id in streams
        for ref in group.consumers
    )


def auto_upper_branch(fraction: float) -> bool:
    """Whether a target of ``fraction`` of the unpruned latency is in ``auto``'s upper
    branch (:data:`AUTO_ABOVE`, whatever the streams' width, unless depthwise
    convolutions sit on them: :func:`depthwise_streams`): from :data:`AUTO_FISHER_BELOW`
    up."""
    # rounded: 0.55x is 0.55 however the target's milliseconds were divided back
    return round(fraction, 6) >= AUTO_FISHER_BELOW


def auto_choice(fraction: float, graph: Any | None = None) -> tuple[str, str]:
    """What ``auto`` runs for a target of ``fraction`` of the unpruned latency, and why,
    as the end of a log label: :data:`AUTO_ABOVE` from :data:`AUTO_FISHER_BELOW` up (no
    reason), ``taylor-fisher`` there where ``graph`` is given and depthwise convolutions
    read its residual streams (:func:`depthwise_streams`: ``", depthwise convolutions on
    the streams"``); below it ``taylor-fisher``, unless ``graph`` is given and its residual
    streams are at least :data:`AUTO_MEAN_STREAMS` as wide as the layers they feed
    (:func:`stream_width_ratio`), where it stays :data:`AUTO_ABOVE` (``", streams 0.86x
    the width of the layers they feed"``, or ``" without residual streams"``)."""
    if auto_upper_branch(fraction):
        if graph is not None and depthwise_streams(graph):
            return "taylor-fisher", ", depthwise convolutions on the streams"
        return AUTO_ABOVE, ""
    if graph is None:
        return "taylor-fisher", ""
    ratio = stream_width_ratio(graph)
    if ratio is None:
        return "taylor-fisher", " without residual streams"
    why = f", streams {ratio:.2f}x the width of the layers they feed"
    return (AUTO_ABOVE if ratio >= AUTO_MEAN_STREAMS else "taylor-fisher"), why


def choose_importance(
    spec: ImportanceSpec, fraction: float, graph: Any | None = None
) -> ImportanceSpec:
    """The criterion ``spec`` names for a target of ``fraction`` of the unpruned latency:
    for ``auto`` the one :func:`auto_choice` names; any other spec is itself."""
    if not (isinstance(spec, str) and spec == AUTO_IMPORTANCE):
        return spec
    return auto_choice(fraction, graph)[0]


def _auto_unchosen(graph: Any) -> Importance:
    raise ImportanceError(
        f"importance {AUTO_IMPORTANCE} is chosen from the latency target: resolve it with "
        "choose_importance(spec, target fraction) first (the Pruner does)"
    )


def resolve_importance(spec: ImportanceSpec) -> tuple[Callable[[Any], Importance], str]:
    """A criterion factory and its name, from a name or a criterion object.

    Args:
        spec: a registered name (``"taylor"``) or ``"auto"`` (whose factory refuses to
            build: :func:`choose_importance` names the criterion once the target is
            known); ``"module:attr"`` naming a class or
            factory importable from the user's code; an :class:`Importance` subclass
            (registered or not); or any callable ``factory(graph) -> Importance``.

    Returns:
        ``(factory, name)``: ``factory(graph)`` builds the criterion for a channel
        graph; ``name`` is the registry name, or ``"module:qualname"`` for objects
        (what a plan records, and what :func:`resolve_importance` reads back).

    Raises:
        ImportanceError: an unknown name, a ``module:attr`` that does not import, an
            :class:`Importance` instance (pass its class or a factory: the pruner
            builds the criterion on its own channel graph), or an object that is not
            callable.
    """
    if isinstance(spec, str):
        if spec == AUTO_IMPORTANCE:
            return _auto_unchosen, spec
        if spec in _REGISTRY or ":" not in spec:
            cls = get_importance(spec)
            return cls, cls.name
        module_name, _, attr = spec.partition(":")
        import importlib

        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise ImportanceError(f"importance {spec!r} does not import: {exc}") from None
        factory, _ = resolve_importance(obj)
        return factory, spec
    if isinstance(spec, Importance):
        raise ImportanceError(
            f"importance {type(spec).__name__}(...) is an instance: pass the class or a "
            "factory(graph), the pruner builds the criterion on its own channel graph"
        )
    if isinstance(spec, type) and issubclass(spec, Importance):
        if spec.name and _REGISTRY.get(spec.name) is spec:
            return spec, spec.name
        return spec, f"{spec.__module__}:{spec.__qualname__}"
    if callable(spec):
        name = getattr(spec, "__qualname__", type(spec).__qualname__)
        return spec, f"{getattr(spec, '__module__', '?')}:{name}"
    raise ImportanceError(
        f"importance must be a name ({_known()}), an Importance "
        f"subclass or a factory(graph), not {type(spec).__name__}"
    )
