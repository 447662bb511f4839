"""HALP's first-order Taylor importance.

For a channel ``c`` of a group, one minibatch contributes

    | sum over the group's BatchNorms n of (gamma_n[c] * dL/dgamma_n[c] + beta_n[c] * dL/dbeta_n[c]) |

(Shen et al., HALP, section 3.3): the first-order estimate of the loss change when the
channel's BN output is zeroed, summed over every layer the group couples (a residual
stream's channel lives in several BNs and is removed from all of them at once). A
group without an affine BatchNorm falls back to the weight-Taylor score
``| sum W * dW |`` over its producers' output slices (weights and bias). The scores
are averaged over the minibatches seen since the last reset. ``taylor-weights`` scores
every group on the weights of the layers that write and read its channels instead
(``sum |w * dW|`` element by element, as Torch-Pruning's group Taylor).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .base import Importance, ImportanceError, channel_positions, check_finite, register_importance


def _product(param: torch.Tensor | None) -> torch.Tensor | None:
    if param is None or param.grad is None:
        return None
    return param.detach() * param.grad.detach()


@register_importance("taylor")
class TaylorImportance(Importance):
    """|sum over coupled BNs of gamma*dL/dgamma + beta*dL/dbeta|, weight-Taylor without BN."""

    needs_gradients = True
    #: Sum the coupled terms' absolute values instead of taking the sum's (taylor-abs).
    abs_terms = False
    #: Divide each channel's score by the number of terms it sums (taylor-abs-mean).
    mean_terms = False
    #: Combine the coupled terms by their L2 norm instead (taylor-l2).
    l2_terms = False
    #: Score channels on the weights of the layers that write and read them, element by
    #: element in magnitude, instead of on the BatchNorms (taylor-weights).
    weight_terms = False
    #: Square each minibatch's score before averaging (taylor-fisher).
    squared = False

    def __init__(self, graph: Any) -> None:
        super().__init__(graph)
        model = graph.model
        # Per group: ("bn" | "weight" | "weight-abs", [(module, dim, positions)]); dim 1
        # reads a consumer's input slices (for "weight": only in a group with neither BN
        # nor producers).
        self._terms: list[tuple[int, str, list[tuple[nn.Module, int, torch.Tensor]]]] = []

        def layers(refs: list, size: int) -> list[tuple[nn.Module, int, torch.Tensor]]:
            return [(model.get_submodule(r.layer), d, channel_positions(r, size)) for r, d in refs]

        for group in self.groups:
            size = group.size
            writers = [(r, 0) for r in group.producers]
            # A depthwise convolution is its group's producer too: its rows are read once,
            # as outputs; grouped convolutions' inputs are not read.
            readers = [
                (r, 1) for r in group.consumers if not _depthwise(model.get_submodule(r.layer))
            ]
            if self.weight_terms and (writers or readers):
                self._terms.append((size, "weight-abs", layers(writers + readers, size)))
                continue
            bns = layers([(r, 0) for r in group.norms if r.kind == "batchnorm"], size)
            bns = [t for t in bns if getattr(t[0], "weight", None) is not None]
            if bns:
                self._terms.append((size, "bn", bns))
                continue
            self._terms.append((size, "weight", layers(writers or readers, size)))
        self._sizes = [g.size for g in self.groups]
        # One flat gather per minibatch: every source (a BN, or a layer's per-channel
        # weight products) is concatenated into one vector; group channel j of the flat
        # result sums the source positions that map to it (index_add over coupled layers).
        self._sources: list[tuple[nn.Module, str, int, int]] = []  # module, kind, dim, length
        offsets: dict[tuple[int, str, int], int] = {}
        src, dst = [], []
        base = 0
        total = 0
        for size, kind, terms in self._terms:
            for module, dim, pos in terms:
                key = (id(module), kind, dim)
                if key not in offsets:
                    offsets[key] = total
                    length = _length(module, kind, dim)
                    self._sources.append((module, kind, dim, length))
                    total += length
                src.append((pos + offsets[key]).reshape(-1))
                dst.append(torch.arange(size).repeat_interleave(pos.shape[1]) + base)
            base += size
        self._n_channels = base
        self._src = torch.cat(src) if src else torch.zeros(0, dtype=torch.long)
        self._dst = torch.cat(dst) if dst else torch.zeros(0, dtype=torch.long)
        # Terms each channel sums (the coupled layers' positions that map to it).
        self._terms_per_channel = np.maximum(
            np.bincount(self._dst.numpy(), minlength=self._n_channels), 1
        ).astype(np.float64)
        self._index_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._sum: torch.Tensor | None = None
        self._n: torch.Tensor | None = None

    @torch.no_grad()
    def _minibatch(self) -> torch.Tensor:
        flat = []
        device = None
        for module, kind, dim, length in self._sources:
            c = self._contribution(module, kind, dim)
            if device is None:
                device = next(module.parameters()).device
            flat.append(
                torch.zeros(length, device=device, dtype=torch.float64)
                if c is None
                else c.to(torch.float64)
            )
        if device is None:
            return torch.zeros(self._n_channels, dtype=torch.float64)
        if device not in self._index_cache:
            self._index_cache[device] = (self._src.to(device), self._dst.to(device))
        src, dst = self._index_cache[device]
        out = torch.zeros(self._n_channels, device=device, dtype=torch.float64)
        terms = torch.cat(flat)[src]
        if self.l2_terms:
            return out.index_add_(0, dst, terms.square()).sqrt_()
        if self.abs_terms:
            return out.index_add_(0, dst, terms.abs_())
        out.index_add_(0, dst, terms)
        return out.abs_()

    def _products(self, module: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The module's ``weight * grad`` and ``bias * grad`` (None without a grad)."""
        return _product(getattr(module, "weight", None)), _product(getattr(module, "bias", None))

    def _contribution(self, module: nn.Module, kind: str, dim: int) -> torch.Tensor | None:
        """Per-position products of the module for dimension ``dim``, or None without grads."""
        w, b = self._products(module)
        if kind == "bn":
            if w is None and b is None:
                return None
            return w if b is None else (b if w is None else w + b)
        if w is None:
            return None
        if kind == "weight-abs":
            w, b = w.abs(), None if b is None else b.abs()
        if dim == 0:
            out = w.reshape(w.shape[0], -1).sum(1)
            return out if b is None else out + b
        return w.transpose(0, 1).reshape(w.shape[1], -1).sum(1)

    def accumulate(self, *, skip_nonfinite: bool = False) -> None:
        contrib = self._minibatch()
        if self.squared:
            contrib = contrib.square()
        if self._sum is None or self._sum.device != contrib.device:
            self._sum = torch.zeros_like(contrib)
            self._n = torch.zeros((), dtype=torch.float64, device=contrib.device)
        if skip_nonfinite:
            # No host sync: a non-finite minibatch adds zero and is not counted.
            ok = torch.isfinite(contrib).all()
            self._sum += torch.where(ok, contrib, torch.zeros_like(contrib))
            self._n += ok.to(torch.float64)
        else:
            self._sum += contrib
            self._n += 1.0

    @property
    def count(self) -> int:
        return 0 if self._n is None else int(self._n.item())

    def scores(self) -> dict[int, np.ndarray]:
        if self._sum is None or self.count == 0:
            raise ImportanceError(
                "taylor importance has seen no minibatch: call accumulate() after every "
                "backward pass between pruning steps"
            )
        mean = (self._sum / self._n).cpu().numpy()
        if self.mean_terms:
            mean = mean / self._terms_per_channel
        out = {}
        start = 0
        for group, size in zip(self.groups, self._sizes):
            out[group.id] = mean[start : start + size].copy()
            start += size
        check_finite(out, self.graph, "taylor")
        return out

    def reset(self) -> None:
        self._sum = None
        self._n = None

    def state_dict(self) -> dict[str, Any]:
        if self._sum is None:
            return {"sum": None, "n": 0.0}
        return {"sum": self._sum.detach().cpu().clone(), "n": float(self._n.item())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("sum") is None:
            self.reset()
            return
        total = sum(self._sizes)
        s = torch.as_tensor(state["sum"], dtype=torch.float64)
        if s.numel() != total:
            raise ImportanceError(
                f"saved taylor state has {s.numel()} channels, this model has {total}"
            )
        self._sum = s.clone()
        self._n = torch.tensor(float(state["n"]), dtype=torch.float64)


def _length(module: nn.Module, kind: str, dim: int) -> int:
    w = module.weight
    return w.shape[0] if kind == "bn" or dim == 0 else w.shape[1]


def _depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1


@register_importance("taylor-fisher")
class TaylorFisherImportance(TaylorImportance):
    """HALP's ``taylor`` squared minibatch by minibatch, then averaged: each channel's
    empirical Fisher information (Molchanov et al., CVPR 2019; Liu et al.'s group Fisher
    pruning, ICML 2021).

    Per minibatch a channel's terms are summed with their signs over every BatchNorm its
    group couples, the first-order change of the loss when the channel is removed from
    all of them (the gradient of a mask on it), and that sum is squared; the squares are
    averaged over the minibatches since the last reset. Near a minimum, where the mean
    gradient that the first-order scores average is small and mostly noise, half of this
    mean estimates the loss a removal adds, and it adds up over the channels removed: the
    knapsack's sum of the kept values is the loss it keeps off. The signed sum is the
    same mask gradient that the signed weight products of the layers reading the channel
    give, within 0.5% (BatchNorm's epsilon breaks its scale invariance a little; tested).

    Measured on the MobileNetV2 of bench/pareto.py (harder digits, batch 8, six epochs,
    pruned before training, six seeds run twice, bench/PARETO.md, "The empirical Fisher
    information"): ahead of FastNAS at 0.3x (resolved) and level at 0.5x, behind the
    default at 0.6x and 0.7x, where both trail uniform width; level with the default at
    batch 1 and on the ResNet-18. The default ``auto`` runs it below 0.55x of the
    unpruned latency (:data:`~halp_trt.importance.base.AUTO_FISHER_BELOW`) on networks
    whose residual streams are narrower than the layers they feed
    (:data:`~halp_trt.importance.base.AUTO_MEAN_STREAMS`).
    """

    squared = True


@register_importance("taylor-abs")
class TaylorAbsImportance(TaylorImportance):
    """sum over coupled BNs of |gamma*dL/dgamma + beta*dL/dbeta| (each term's absolute
    value, as Torch-Pruning's group Taylor sums per-layer magnitudes).

    HALP's ``taylor`` takes the absolute value of the sum: the first-order change of
    the loss when a channel is zeroed in every coupled layer at once. In a residual
    stream the coupled layers are the projections of several blocks, whose terms can
    have opposite signs and cancel, so a stream the whole network reads scores as if
    it hardly mattered. On the MobileNetV2 of bench/pareto.py at 0.5x, ``taylor`` put
    every stream at the 0.3 floor while keeping the expanded layers at 90%;
    ``taylor-abs`` kept them wider and scored 0.9315 against 0.9065 (3 seeds; 0.9269
    against 0.9093 at 0.3x, level at 0.7x; bench/results/pareto_mobilenetv2_abs.json),
    and 2 points more again in a second run of 3 seeds. It was the default until
    ``taylor-weights`` (below) measured ahead of it where pruning costs accuracy.
    """

    abs_terms = True


@register_importance("taylor-abs-mean")
class TaylorAbsMeanImportance(TaylorAbsImportance):
    """``taylor-abs`` averaged over a channel's coupled terms instead of summed
    (Torch-Pruning's ``group_reduction="mean"``).

    A group that couples many layers (a residual stream: the stem and every block's
    projection) sums a term per layer, so its channels outscore those of a group of one
    layer (a block's inner convolution) by about that count. With a latency that is
    bilinear in the two widths (a block's convolutions read one and write the other),
    the knapsack then keeps every stream whole and cuts the inner widths to the floor,
    as in the ResNet-18 plans of bench/pareto.py at 0.3x. Averaging puts a channel of
    either kind on the scale of one layer.
    """

    mean_terms = True


@register_importance("taylor-l2")
class TaylorL2Importance(TaylorImportance):
    """The coupled terms' L2 norm, ``sqrt(sum over coupled BNs of t_n[c]**2)``.

    Of the ways to combine a channel's per-layer terms ``t_n``, HALP's ``taylor`` takes
    ``|sum t_n|``, the cancellation one minibatch happened to show; ``taylor-abs`` takes
    ``sum |t_n|``, none; ``taylor-abs-mean`` divides that by the count of terms. The L2
    norm is the expected size of the signed sum were the terms' signs independent: a
    channel coupling ``k`` layers of like terms scores ``sqrt(k)`` times one layer's,
    where ``taylor-abs`` scores ``k`` times and ``taylor-abs-mean`` once. A group of one
    layer scores the same under all four. Measured no better than ``taylor-abs``: on the
    ResNet-18 of bench/pareto.py its plans are ``taylor-abs``'s corner (residual streams
    whole) and scored 0.7 points under it at 0.5x and 0.3x, on the MobileNetV2 0.4-1.7
    points under it (3 seeds each, bench/results/pareto_*_avx2_l2_swapped.json).
    """

    l2_terms = True


@register_importance("taylor-weights")
class TaylorWeightsImportance(TaylorImportance):
    """Weight Taylor: ``sum over the channel's weights w of |w * dL/dw|``, over every
    layer its group couples.

    The weights of a channel are the output rows (and bias) of the convolutions and
    linear layers that write it and the input columns of those that read it (a
    depthwise convolution's rows once, as a writer), each element's first-order term
    taken in magnitude, averaged over the minibatches since the last reset. The BN
    criteria score a channel by what zeroing its BatchNorm output would cost; this one
    by the weights that removing it deletes, as Torch-Pruning's group Taylor does
    (1.6.1 reads the same elements and no BatchNorm; it takes one gradient summed over
    a few batches before the magnitude and divides each group's scores by their mean).
    A group with no such layer is scored on its BatchNorms as ``taylor-abs``.

    The default ``auto`` ran it at 0.55x of the unpruned latency and above until
    ``taylor-weights-mean`` took its place there
    (:data:`halp_trt.importance.base.AUTO_ABOVE`). A residual stream's channel is read
    by every block of its stage: ``taylor-abs`` sees only the BatchNorms of the
    projections that write it. Scored on its readers' weights too, the stream is kept:
    on the MobileNetV2 of bench/pareto.py at batch 1, 0.62 of its streams at 0.3x and
    0.93 at 0.5x, against ``taylor-abs``'s 0.46 and 0.66 (bench/PARETO.md, "The default
    scores a channel on its weights").
    """

    abs_terms = True
    weight_terms = True


@register_importance("taylor-weights-mean")
class TaylorWeightsMeanImportance(TaylorWeightsImportance):
    """``taylor-weights`` averaged over a channel's coupled layers instead of summed
    (Torch-Pruning's ``group_reduction="mean"``, without its per-group normaliser).

    A residual stream's channel is written and read by every block of its stage, so
    under the sum it outscores a block's inner channel by about the number of layers
    that touch it, and where little has to go the knapsack keeps every stream whole and
    takes the latency from the expansions. Averaged, a channel of either kind is worth
    one layer's terms, and the plan cuts streams and expansions alike, as uniform width
    does. The default ``auto`` runs it at 0.55x of the unpruned latency and above
    (:data:`halp_trt.importance.base.AUTO_ABOVE`, where the measurements are): on the
    MobileNetV2 of bench/pareto.py at 0.7x and 0.6x it scored above ``taylor-weights``
    and level with uniform width; where half the latency goes it under-values the
    streams and sends them to the floor (bench/PARETO.md, "Each channel's terms
    averaged, where little is cut").
    """

    mean_terms = True
