"""Layer signatures: everything a layer's latency depends on besides its channel counts.

Many layers of a network share a signature (ResNets repeat blocks), so a latency table
is keyed by signature and measured once per signature. Signatures are read off a real
forward pass with hooks, so input sizes are the ones the deployed model sees.

Grouped convolutions are pruned in whole groups (halp_trt's channel graph removes one
convolution group's channels at a time), so what stays fixed when such a layer narrows is
its channels per group, ``group_width``, and its group count is ``c_in // group_width``
at every width: the table measures it at the widths whole-group removal reaches, with
the group count those widths have (see :meth:`LayerSignature.groups_at`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

OPS = ("conv2d", "linear")
GROUP_MODES = ("dense", "depthwise", "grouped")
#: What the deployment engine fuses into a convolution: BN folded into its bias, then
#: the activation. Tables measure this epilogue; see lut_builder.backends.
DEFAULT_EPILOGUE = "bias+relu"


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(x) for x in v)
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


@dataclass(frozen=True)
class LayerSignature:
    """The latency-relevant shape of one conv2d or linear layer, channel counts excluded.

    ``groups`` is 1 for dense layers and 0 for depthwise layers (whose group count equals
    the channel count). A grouped layer has either a fixed group count (``groups >= 2``,
    ``group_width == 0``: channels are pruned inside every group) or, as the channel
    graph prunes it, a fixed number of input and output channels per group
    (``group_width >= 1``, ``groups == 0``: whole groups are pruned, ``c_in == c_out``
    and the group count is ``c_in // group_width``). ``in_hw`` is the input's spatial
    size ((1, 1) for linear).
    """

    op: str
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    group_mode: str = "dense"
    groups: int = 1
    in_hw: tuple[int, int] = (1, 1)
    batch: int = 1
    epilogue: str = DEFAULT_EPILOGUE
    group_width: int = 0

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"op must be one of {OPS}, not {self.op!r}")
        if self.group_mode not in GROUP_MODES:
            raise ValueError(f"group_mode must be one of {GROUP_MODES}, not {self.group_mode!r}")
        for name in ("kernel", "stride", "padding", "dilation", "in_hw"):
            object.__setattr__(self, name, _pair(getattr(self, name)))
        if self.batch < 1:
            raise ValueError("batch must be >= 1")
        expected_groups = {"dense": 1, "depthwise": 0}.get(self.group_mode)
        if expected_groups is not None and self.groups != expected_groups:
            raise ValueError(f"{self.group_mode} layers have groups={expected_groups}")
        if self.group_width < 0 or (self.group_width and self.group_mode != "grouped"):
            raise ValueError("group_width is a positive count of a grouped layer only")
        if self.group_mode == "grouped" and self.group_width:
            if self.groups != 0:
                raise ValueError("grouped layers pruned in whole groups have groups=0")
        elif self.group_mode == "grouped" and self.groups < 2:
            raise ValueError("grouped layers need groups >= 2")

    @property
    def diagonal(self) -> bool:
        """True when the layer always has ``c_in == c_out`` (depthwise, or grouped and
        pruned in whole groups): its table is one-dimensional."""
        return self.group_mode == "depthwise" or self.group_width > 0

    @property
    def channel_unit(self) -> int:
        """Channel counts of the layer are multiples of this (1 for dense and depthwise)."""
        if self.group_mode != "grouped":
            return 1
        return self.group_width or self.groups

    def groups_at(self, c_in: int) -> int:
        """The convolution's ``groups`` argument at ``c_in`` input channels."""
        if self.group_mode == "dense":
            return 1
        if self.group_mode == "depthwise":
            return c_in
        return c_in // self.group_width if self.group_width else self.groups

    @property
    def out_hw(self) -> tuple[int, int]:
        """Output spatial size of the layer."""
        if self.op == "linear":
            return self.in_hw
        return tuple(  # type: ignore[return-value]
            (i + 2 * p - d * (k - 1) - 1) // s + 1
            for i, p, d, k, s in zip(
                self.in_hw, self.padding, self.dilation, self.kernel, self.stride
            )
        )

    def key(self) -> str:
        """A stable, human-readable string that identifies the signature (table key)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_key(cls, key: str) -> LayerSignature:
        """Inverse of :meth:`key`."""
        return cls.from_dict(json.loads(key))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["group_width"]:
            del d["group_width"]  # keys of tables built before whole-group pruning stay valid
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerSignature:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def short(self) -> str:
        """A compact label for tables and plots, e.g. ``conv3x3/s2 dw 56x56 b1``."""
        if self.op == "linear":
            return f"linear b{self.batch}"
        grouped = f" gw{self.group_width}" if self.group_width else f" g{self.groups}"
        mode = {"dense": "", "depthwise": " dw", "grouped": grouped}[self.group_mode]
        s = f"/s{self.stride[0]}" if self.stride != (1, 1) else ""
        d = f"/d{self.dilation[0]}" if self.dilation != (1, 1) else ""
        return (
            f"conv{self.kernel[0]}x{self.kernel[1]}{s}{d}{mode} "
            f"{self.in_hw[0]}x{self.in_hw[1]} b{self.batch}"
        )

    def macs(self, c_in: int, c_out: int) -> int:
        """Multiply-accumulates of the layer at the given channel counts."""
        oh, ow = self.out_hw
        if self.op == "linear":
            return self.batch * c_in * c_out
        per_out = c_in // self.groups_at(c_in) if self.group_mode != "dense" else c_in
        return self.batch * oh * ow * c_out * per_out * self.kernel[0] * self.kernel[1]


@dataclass(frozen=True)
class LayerInfo:
    """One prunable-kind layer of a concrete model: its name, signature and channel counts."""

    name: str
    signature: LayerSignature
    c_in: int
    c_out: int
    out_hw: tuple[int, int] = field(default=(1, 1))

    @property
    def macs(self) -> int:
        return self.signature.macs(self.c_in, self.c_out)


def _conv_signature(module: Any, x: Any, batch: int) -> LayerSignature:
    kernel = _pair(module.kernel_size)
    dilation = _pair(module.dilation)
    pad = module.padding
    if isinstance(pad, str):
        pad = (
            (0, 0) if pad == "valid" else tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
        )
    c_in, c_out, g = module.in_channels, module.out_channels, module.groups
    width = 0
    if g == 1:
        mode, groups = "dense", 1
    elif g == c_in == c_out:
        mode, groups = "depthwise", 0
    elif c_in == c_out:
        mode, groups, width = "grouped", 0, c_in // g  # pruned in whole groups
    else:
        mode, groups = "grouped", g
    return LayerSignature(
        op="conv2d",
        kernel=kernel,
        stride=_pair(module.stride),
        padding=_pair(pad),
        dilation=dilation,
        group_mode=mode,
        groups=groups,
        in_hw=(int(x.shape[-2]), int(x.shape[-1])),
        batch=batch,
        group_width=width,
    )


@contextmanager
def recording_layers(model: Any) -> Iterator[dict[str, LayerInfo]]:
    """Record the signature of every Conv2d and Linear layer that runs inside the block.

    Yields the dict :func:`model_layers` returns, filled by the forward passes made in
    the block (the first call of a layer counts), so that a caller that runs the model
    anyway (a tracer) needs no second pass.
    """
    import torch
    import torch.nn as nn

    found: dict[str, LayerInfo] = {}
    handles = []

    def hook(name: str):
        def fn(module: nn.Module, args: tuple, out: Any) -> None:
            if name in found or not args or not torch.is_tensor(args[0]):
                return
            x = args[0]
            if isinstance(module, nn.Conv2d):
                batch = int(x.shape[0]) if x.dim() == 4 else 1
                sig = _conv_signature(module, x, batch)
                found[name] = LayerInfo(
                    name,
                    sig,
                    module.in_channels,
                    module.out_channels,
                    (int(out.shape[-2]), int(out.shape[-1])),
                )
            else:
                batch = int(x.numel() // x.shape[-1])
                sig = LayerSignature(op="linear", batch=batch)
                found[name] = LayerInfo(name, sig, module.in_features, module.out_features)

        return fn

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


def model_layers(model: Any, example_inputs: Any) -> dict[str, LayerInfo]:
    """Signatures of every Conv2d and Linear layer of ``model``, from one forward pass.

    Layers that the forward pass does not reach are left out; a layer called more than
    once keeps the signature of its first call. Linear layers applied to more than 2-D
    inputs fold the leading dimensions into the batch.

    Args:
        model: an ``nn.Module``.
        example_inputs: a tensor, or a tuple of positional inputs.

    Returns:
        Layer name (as in ``named_modules``) to :class:`LayerInfo`, in call order.
    """
    import torch

    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), recording_layers(model) as found:
            model(*inputs)
    finally:
        model.train(was_training)
    return found


def unique_signatures(layers: dict[str, LayerInfo]) -> dict[LayerSignature, list[LayerInfo]]:
    """Group layers by signature: each signature needs to be measured once."""
    out: dict[LayerSignature, list[LayerInfo]] = {}
    for info in layers.values():
        out.setdefault(info.signature, []).append(info)
    return out
