"""An optimizer carried through the removal of channels: its parameters and their state.

Removing channels replaces a layer's parameters with smaller ones (Torch-Pruning's and
the graph's own removal both build new ``nn.Parameter`` objects by ``index_select``, and
slice each parameter's ``.grad`` with it). An optimizer built on the model before the
removal then points at parameters the model no longer has. :func:`track` and
:func:`carry` keep it usable, in place, so a learning-rate scheduler and whatever else
holds the optimizer go on with it:

- before the removal, :func:`track` puts into every optimized parameter's ``.grad`` the
  flat position of each element, bit for bit (an integer tensor of the parameter's item
  size, viewed as the parameter's dtype: ``index_select`` copies bits, it computes
  nothing);
- after it, :func:`carry` reads from each new parameter's ``.grad`` which old elements it
  kept, points the optimizer's parameter groups at the new parameters and gathers every
  state tensor of the old parameter's shape (SGD's momentum, Adam's two moments) at
  those positions; scalar state (Adam's step count) is kept as it is.

The kept weights then train on exactly as they would have in the masked model. A
parameter whose positions cannot be encoded (an item size of 1, or more elements than
its integer type counts) or whose ``.grad`` did not come through the removal starts with
fresh state, as does one with a state tensor of another shape (Adafactor's factored
moments); :func:`carry` returns their names.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

_INTS = {8: torch.int64, 4: torch.int32, 2: torch.int16}


def _positions(p: torch.Tensor) -> torch.Tensor | None:
    """``p``'s flat element positions, as an integer tensor viewed in ``p``'s dtype."""
    ints = _INTS.get(p.element_size())
    if ints is None or p.numel() > torch.iinfo(ints).max or p.is_complex():
        return None
    codes = torch.arange(p.numel(), dtype=ints, device=p.device)
    return codes.view(p.dtype).view(p.shape)


def track(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[int, str]:
    """Mark the positions of every parameter of ``model`` that ``optimizer`` updates.

    Overwrites their ``.grad`` (call it between an optimizer step and the next backward
    pass). Returns what :func:`carry` needs after the removal: the marked parameters'
    names in ``model`` by ``id``.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    marked: dict[int, str] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in names:  # optimized but not in the model: the removal cannot touch it
                marked[id(p)] = names[id(p)]
                p.grad = _positions(p)
    return marked


def carry(optimizer: torch.optim.Optimizer, model: nn.Module, marks: dict[int, str]) -> list[str]:
    """Point ``optimizer`` at ``model``'s parameters after the removal, its state sliced.

    Args:
        optimizer: the optimizer :func:`track` marked (it holds the old parameters, so
            their ids stay theirs).
        model: the same model, its channels removed in place.
        marks: what :func:`track` returned.

    Returns:
        The names of the parameters whose state could not be carried (they start fresh).
    """
    new = dict(model.named_parameters())
    fresh: list[str] = []
    for group in optimizer.param_groups:
        params = []
        for p in group["params"]:
            name = marks.get(id(p))
            q = new.get(name) if name is not None else None
            if q is None:
                params.append(p)
                continue
            state = optimizer.state.pop(p, None)
            codes = q.grad
            q.grad = None
            p.grad = None
            if state is not None:
                moved = _gather(state, p, q, codes)
                if moved is None:
                    fresh.append(name)
                else:
                    optimizer.state[q] = moved
            params.append(q)
        group["params"] = params
    return fresh


def _gather(
    state: dict[str, Any], p: torch.Tensor, q: torch.Tensor, codes: torch.Tensor | None
) -> dict[str, Any] | None:
    """``state`` of old parameter ``p`` for new parameter ``q``; None: not carried."""
    if q is p:
        return state
    ints = _INTS.get(q.element_size())
    if codes is None or ints is None or codes.shape != q.shape or codes.dtype != q.dtype:
        return None
    idx = codes.detach().reshape(-1).view(ints).long()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= p.numel()):
        return None  # the removal did not slice the marks with the parameter
    out = {}
    for key, value in state.items():
        if torch.is_tensor(value) and value.dim() and value.shape != p.shape:
            return None  # a factored state (Adafactor's row and column moments)
        if torch.is_tensor(value) and value.shape == p.shape:
            value = value.reshape(-1).index_select(0, idx.to(value.device)).view(q.shape)
        out[key] = value
    return out
