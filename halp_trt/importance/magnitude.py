"""Criteria that read only the weights: filter norms and SP-LAMP.

A group channel's *filter* is the slice of every producer's weight that writes it
(a residual stream's channel is written by several convolutions; a flatten in front of
a linear layer gives one channel several positions). ``l1`` sums absolute values over
all of them, ``l2`` is the Euclidean norm of their concatenation. ``sp-lamp`` carries
LAMP (Lee et al., ICLR 2021) to filters as SP-LAMP does: within a group, squared L2
filter norms sorted ascending, score = own / (own + every stronger one), so the
strongest channel scores exactly 1 and no group is ever emptied by the knapsack.

Masked (pruned) channels have zero weights and score 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .base import Importance, channel_positions, check_finite, register_importance


class _FilterNorm(Importance):
    """Shared plumbing: per group, the per-channel p-th power sums of the filters."""

    power = 2

    def __init__(self, graph: Any) -> None:
        super().__init__(graph)
        model = graph.model
        self._terms = []
        for group in self.groups:
            refs = [(r, 0) for r in group.producers] or [
                (r, 1)
                for r in group.consumers
                if not (isinstance(m := model.get_submodule(r.layer), nn.Conv2d) and m.groups > 1)
            ]
            self._terms.append(
                (
                    group,
                    [
                        (model.get_submodule(r.layer), d, channel_positions(r, group.size))
                        for r, d in refs
                    ],
                )
            )

    @torch.no_grad()
    def _power_sums(self) -> dict[int, np.ndarray]:
        out = {}
        for group, terms in self._terms:
            v = np.zeros(group.size)
            for module, dim, pos in terms:
                w = module.weight.detach()
                if dim == 1:
                    w = w.transpose(0, 1)
                w = w.reshape(w.shape[0], -1).double()
                per_pos = w.abs().sum(1) if self.power == 1 else w.pow(2).sum(1)
                v += per_pos.cpu()[pos].sum(1).numpy()
            out[group.id] = v
        return out

    def scores(self) -> dict[int, np.ndarray]:
        out = self._transform(self._power_sums())
        check_finite(out, self.graph, self.name)
        return out

    def _transform(self, sums: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        return sums


@register_importance("l1")
class L1Importance(_FilterNorm):
    """Sum of absolute filter weights over the group's producers."""

    power = 1


@register_importance("l2")
class L2Importance(_FilterNorm):
    """Euclidean norm of the filters over the group's producers."""

    power = 2

    def _transform(self, sums: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        return {g: np.sqrt(v) for g, v in sums.items()}


def lamp_scores(squared_norms: np.ndarray) -> np.ndarray:
    """LAMP scores of one group: own / suffix sum over the ascending order.

    The strongest channel scores 1; ties are broken by channel index (stable sort), so
    exactly one channel scores 1 even when several are equally strong. All-zero
    filters score 0, except the one that is last in the order, which scores 1.
    """
    v = np.asarray(squared_norms, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    suffix = np.cumsum(sorted_v[::-1])[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(suffix > 0, sorted_v / np.where(suffix > 0, suffix, 1.0), 0.0)
    if s.size:
        s[-1] = 1.0
    out = np.empty_like(s)
    out[order] = s
    return out


@register_importance("sp-lamp")
class SPLampImportance(_FilterNorm):
    """SP-LAMP: LAMP normalisation of squared L2 filter norms within each group."""

    power = 2

    def _transform(self, sums: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        check_finite(sums, self.graph, self.name)
        return {g: lamp_scores(v) for g, v in sums.items()}
