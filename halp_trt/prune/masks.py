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
import torch.nn as nn


class MaskSet:
    """Zeroing of every parameter slice that removing the dropped channels would drop.

    Args:
        graph: the channel graph (its model's parameters are masked).
        keep: group id to kept channel indices; groups not listed keep everything.
    """

    def __init__(self, graph: Any, keep: Mapping[int, Sequence[int]]) -> None:
        drops: dict[tuple[int, int], tuple[torch.Tensor, int, list[int]]] = {}

        def add(param: torch.Tensor | None, dim: int, positions: list[int]) -> None:
            if param is None or not positions:
                return
            key = (id(param), dim)
            if key not in drops:
                drops[key] = (param, dim, [])
            drops[key][2].extend(positions)

        model = graph.model
        for gid, kept in keep.items():
            group = graph.group(gid)
            drop = sorted(set(range(group.size)) - {int(c) for c in kept})
            if not drop:
                continue
            for ref in group.producers:
                mod = model.get_submodule(ref.layer)
                pos = ref.positions(drop, group.size)
                add(mod.weight, 0, pos)
                add(mod.bias, 0, pos)
            for ref in group.norms:
                mod = model.get_submodule(ref.layer)
                pos = ref.positions(drop, group.size)
                add(getattr(mod, "weight", None), 0, pos)
                add(getattr(mod, "bias", None), 0, pos)
            for ref in group.consumers:
                mod = model.get_submodule(ref.layer)
                if isinstance(mod, nn.Conv2d) and mod.groups > 1:
                    continue  # depthwise: its input channels are its output channels
                add(mod.weight, 1, ref.positions(drop, group.size))
        self._items = [
            (param, dim, torch.tensor(sorted(set(pos)), dtype=torch.long))
            for param, dim, pos in drops.values()
        ]
        self._on_device: dict[tuple[int, torch.device], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._items)

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the masked slices in place (parameters keep their shapes and devices)."""
        for i, (param, dim, idx) in enumerate(self._items):
            key = (i, param.device)
            dev_idx = self._on_device.get(key)
            if dev_idx is None:
                dev_idx = self._on_device[key] = idx.to(param.device)
            param.index_fill_(dim, dev_idx, 0)
