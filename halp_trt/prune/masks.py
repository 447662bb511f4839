"""Fast re-application of a keep plan as masks, once per training iteration.

:meth:`ChannelGraph.mask` is the reference (and is what the removal check compares
against); this module compiles the same zeroing into one ``index_fill_`` per
(parameter, dimension), so re-masking after every optimizer step costs a handful of
kernel launches instead of Python loops over channels. Re-masking is what keeps
momentum and weight decay from reviving pruned weights: the optimizer may move them,
the next :meth:`MaskSet.apply` puts them back to zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


class MaskSet:
    """Zeroing of every parameter slice that removing the dropped channels would drop,
    and the kept-channel masks of the LayerNorms over channels the plan narrows
    (see :mod:`halp_trt.graph.norms`).

    Args:
        graph: the channel graph (its model's parameters are masked).
        keep: group id to kept channel indices; groups not listed keep everything.

    Raises:
        PruningError: a keep the graph refuses (see :meth:`ChannelGraph.mask`).
    """

    def __init__(self, graph: Any, keep: Mapping[int, Sequence[int]]) -> None:
        slices, self._norms = graph.mask_slices(keep)
        drops: dict[tuple[int, int], tuple[torch.Tensor, int, list[int]]] = {}
        for param, dim, positions in slices:
            key = (id(param), dim)
            if key not in drops:
                drops[key] = (param, dim, [])
            drops[key][2].extend(positions)
        self._items = [
            (param, dim, torch.tensor(sorted(set(pos)), dtype=torch.long))
            for param, dim, pos in drops.values()
        ]
        self._on_device: dict[tuple[int, torch.device], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._items) + len(self._norms)

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the masked slices in place (parameters keep their shapes and devices)
        and set the LayerNorm channel masks."""
        from halp_trt.graph.norms import set_norm_mask

        for i, (param, dim, idx) in enumerate(self._items):
            key = (i, param.device)
            dev_idx = self._on_device.get(key)
            if dev_idx is None:
                dev_idx = self._on_device[key] = idx.to(param.device)
            param.index_fill_(dim, dev_idx, 0)
        for module, keep, axis in self._norms:
            set_norm_mask(module, keep, axis)
