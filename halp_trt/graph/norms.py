"""LayerNorm over channels under a channel mask.

Removing a channel from a LayerNorm that normalises over the channels changes the mean
and variance every other channel is normalised with, so zeroing the removed channels'
parameters does not make a masked model compute what the channel-removed model
computes. A masked LayerNorm therefore computes its statistics over the kept channels
only (and outputs zero on the others): the channel mask is attached to the module and a
forward hook recomputes the output from the module's input. The mask lives outside the
``state_dict``; physical removal clears it (the slim LayerNorm has only kept channels).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

#: Attribute holding ``(keep mask, channel axis)`` on a masked LayerNorm.
_MASK_ATTR = "_halp_trt_channel_mask"
_suspended = contextvars.ContextVar("halp_trt_norm_masks_suspended", default=False)


def _masked_norm_hook(module: nn.Module, args: tuple, out: Any) -> Any:
    state = getattr(module, _MASK_ATTR, None)
    if state is None or _suspended.get() or not args or not torch.is_tensor(args[0]):
        return None
    keep, axis = state
    x = args[0]
    shape = [1] * x.dim()
    shape[axis] = -1
    k = keep.to(device=x.device, dtype=x.dtype).view(shape)
    n = k.sum()
    mean = (x * k).sum(axis, keepdim=True) / n
    centred = (x - mean) * k
    var = (centred * centred).sum(axis, keepdim=True) / n
    y = centred * torch.rsqrt(var + module.eps)
    if module.weight is not None:
        y = y * module.weight.view(shape)
    if module.bias is not None:
        y = y + module.bias.view(shape) * k
    return y


def set_norm_mask(module: nn.Module, keep: torch.Tensor | None, axis: int) -> None:
    """Make ``module`` (a LayerNorm over channels on ``axis``) normalise over the channels
    where ``keep`` is true only; ``None`` (or all true) restores the plain LayerNorm."""
    if keep is None or bool(keep.all()):
        if hasattr(module, _MASK_ATTR):
            delattr(module, _MASK_ATTR)
        return
    if _masked_norm_hook not in module._forward_hooks.values():
        module.register_forward_hook(_masked_norm_hook)
    setattr(module, _MASK_ATTR, (keep.detach().to(torch.bool).cpu(), axis))


def clear_norm_masks(model: nn.Module) -> None:
    """Remove every channel mask (and its hook) from the LayerNorms of ``model``."""
    for module in model.modules():
        if hasattr(module, _MASK_ATTR):
            delattr(module, _MASK_ATTR)
        hooks = module._forward_hooks
        for key in [k for k, fn in hooks.items() if fn is _masked_norm_hook]:
            del hooks[key]


@contextmanager
def norm_masks_suspended() -> Iterator[None]:
    """Plain LayerNorms inside the block (tracing must see the model's own ops)."""
    token = _suspended.set(True)
    try:
        yield
    finally:
        _suspended.reset(token)


def channel_axis(module: nn.LayerNorm, x: torch.Tensor, out: torch.Tensor) -> int | None:
    """The axis of ``x`` that ``module`` normalises over, if it is one axis that its
    output shows: the last (``nn.LayerNorm``) or the second (a channels-first LayerNorm
    such as torchvision's ``LayerNorm2d``); ``None`` otherwise."""
    if len(module.normalized_shape) != 1 or x.dim() < 2 or out.shape != x.shape:
        return None
    c = module.normalized_shape[0]
    for axis in (x.dim() - 1, 1):
        if x.shape[axis] != c:
            continue
        with torch.no_grad():  # nothing to differentiate: no autograd record
            moved = x.movedim(axis, -1)
            ref = F.layer_norm(moved, (c,), module.weight, module.bias, module.eps)
            if torch.allclose(ref.movedim(-1, axis), out, rtol=1e-4, atol=1e-5):
                return axis
    return None


def current_norm_mask(module: nn.Module) -> torch.Tensor | None:
    """The kept-channel mask on ``module``, or None when it normalises over all."""
    state = getattr(module, _MASK_ATTR, None)
    return None if state is None else state[0]
