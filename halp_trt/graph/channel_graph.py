"""Coupled channel groups of a PyTorch model, found by tracing.

Torch-Pruning's ``DependencyGraph`` does the tracing and the index bookkeeping for
concat, split, flatten and residual adds (:mod:`.trace` runs it with one forward pass);
this module translates its groups into our own types (:class:`ChannelGroup`,
:class:`ChannelRef`) so the rest of halp-trt never touches its internals, and adds what
a deployment tool needs on top: which groups are safe to prune and, when not, why.

Grouped convolutions are pruned in whole groups: the unit of removal is one convolution
group's channels. A grouped convolution couples the group of its input channels with
the group of its output channels (ResNeXt's and RegNet's reduce, grouped and expand
convs form one channel group), and such a group has a ``unit`` > 1: its channels
``[j*unit, (j+1)*unit)`` are unit ``j`` (one or more whole convolution groups on every
grouped convolution it touches) and keep counts are multiples of the unit. Removal
shrinks the convolution's ``groups`` with the removed groups.

Channels-last blocks (ConvNeXt: permute to NHWC, LayerNorm over channels, pointwise
Linear layers, layer scale, permute back) are pruned: a permute between NCHW and NHWC
keeps channels whole, the nodes a Linear layer on a 4-D tensor is made of are the
layer's own, and a bare ``nn.Parameter`` that scales each channel (layer scale) is
sliced with the channels. A LayerNorm over the channels is part of its group with these
semantics: a masked model's LayerNorm computes its mean and variance over the kept
channels only (:mod:`.norms`), which is what the channel-removed LayerNorm computes, so
masked == removed holds exactly and :meth:`ChannelGraph.check` compares the two.

A group is frozen (listed with a reason, never silently skipped) when:

- it indexes the output channels of a layer whose output is a model output
  (classifier logits, detection head outputs);
- it goes through a split, chunk or slice of the channels (their sizes are numbers in
  the model's code, which removal cannot change);
- it reaches an op whose effect on channels is not known to be per-channel (a channel
  permutation such as ShuffleNet's channel shuffle, a reduction over channels, a
  normalisation across channels other than a LayerNorm over them, a pad of the channel
  dimension, ...): removing channels there would change what the rest of the model
  computes;
- its grouped convolutions cannot be cut into whole groups consistently (different
  input and output channels per group, groups spread over several channel groups);
- it touches a parameter that belongs to no known layer type and scales no channel;
- Torch-Pruning cannot follow it (the error is the reason);
- the user froze one of its layers.

Input channels that no prunable layer produces (the stem's image channels, anything
behind an op that breaks the trace) appear as frozen groups without producers.

Why this module is longer than 500 lines: construction, the exact-coverage check,
masking, removal and the removed-vs-masked check all work on one traced Torch-Pruning
dependency graph and its index maps, which this class keeps private so that nothing
else depends on Torch-Pruning's internals.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from lut_builder.signatures import LayerInfo

from ..errors import PruningError

#: grad_fn names (trailing "Backward<N>" removed) of ops that act on each channel on
#: its own, so a channel can be removed before or after them without changing the
#: others. Anything else on a group's channel path freezes the group.
PER_CHANNEL_OPS = frozenset(
    {
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Neg",
        "Relu",
        "Relu6",
        "Hardtanh",
        "Sigmoid",
        "Tanh",
        "Silu",
        "Hardswish",
        "Hardsigmoid",
        "Gelu",
        "LeakyRelu",
        "Elu",
        "Selu",
        "Celu",
        "Mish",
        "Softplus",
        "Clamp",
        "ClampMin",
        "ClampMax",
        "Clone",
        "Abs",
        "Exp",
        "Pow",
        "Sqrt",
        "Rsqrt",
        "ToCopy",
        "Native_dropout",
        "Dropout",
        "MaxPool2DWithIndices",
        "MaxPool1DWithIndices",
        "MaxPool3DWithIndices",
        "AvgPool2D",
        "AvgPool1D",
        "AvgPool3D",
        "AdaptiveAvgPool2D",
        "AdaptiveMaxPool2D",
        "AdaptiveAvgPool1D",
        "UpsampleNearest2D",
        "UpsampleBilinear2D",
        "UpsampleNearest1D",
        "UpsampleBicubic2D",
        "AddRelu",
        "Contiguous",
        "Alias",
        "Identity",
        "Expand",
    }
)
#: Reductions that are per-channel only when they do not reduce the channel dimension.
_REDUCTIONS = frozenset({"Mean", "Sum", "Amax", "Amin", "Max", "Min", "Std", "Var"})
_NORMS_SAFE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


#: Permutations between NCHW and NHWC: the channel axis moves, channels stay whole.
_CHANNELS_LAST_PERMUTES = frozenset({(0, 2, 3, 1), (0, 3, 1, 2)})


@dataclass(frozen=True)
class ChannelRef:
    """How a group's channels appear in one layer.

    ``index[i]`` is the layer's channel that group channel ``i`` maps to. When one group
    channel maps to several layer positions (a flatten in front of a linear layer, or a
    grouped convolution's side wider than the group's unit), the positions of channel
    ``i`` are ``index[i*m:(i+1)*m]`` with ``m = len(index) // size``. ``kind`` is
    ``conv2d``, ``linear``, ``batchnorm``, ``layernorm``, ``prelu`` or ``parameter``
    (then ``layer`` is the parameter's name).
    """

    layer: str
    kind: str
    dim: str
    index: tuple[int, ...]

    def multiplicity(self, size: int) -> int:
        return len(self.index) // size

    def positions(self, channels: Iterable[int], size: int) -> list[int]:
        """Layer positions of the given group channels."""
        m = self.multiplicity(size)
        return [self.index[c * m + j] for c in channels for j in range(m)]

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "kind": self.kind, "dim": self.dim}


@dataclass
class ChannelGroup:
    """Channels that must be pruned together, and the layers they index.

    ``unit`` is the number of channels removed together (1, or the channels of one
    whole convolution group for a group coupled through grouped convolutions): a keep
    plan keeps whole units ``[j*unit, (j+1)*unit)``, so keep counts are multiples of it.
    """

    id: int
    size: int
    producers: list[ChannelRef] = field(default_factory=list)
    consumers: list[ChannelRef] = field(default_factory=list)
    norms: list[ChannelRef] = field(default_factory=list)
    others: list[str] = field(default_factory=list)
    prunable: bool = True
    reason: str | None = None
    unit: int = 1

    def freeze(self, reason: str) -> None:
        if self.prunable:
            self.prunable, self.reason = False, reason

    @property
    def refs(self) -> list[ChannelRef]:
        return [*self.producers, *self.consumers, *self.norms]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "size": self.size,
            "unit": self.unit,
            "prunable": self.prunable,
            "reason": self.reason,
            "producers": [r.layer for r in self.producers],
            "consumers": [r.layer for r in self.consumers],
            "norms": [r.layer for r in self.norms],
        }


@dataclass
class _Translated:
    """One Torch-Pruning group in our terms, before grouped convolutions merge groups."""

    group: ChannelGroup
    #: grouped (not depthwise) convolutions it touches: (layer, "in" | "out", ref).
    grouped: list[tuple[str, str, ChannelRef]] = field(default_factory=list)


@dataclass(frozen=True)
class CheckResult:
    """Outcome of comparing a channel-removed model with the masked original."""

    max_abs_err: float
    max_rel_err: float
    passed: bool
    rtol: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs_err": self.max_abs_err,
            "max_rel_err": self.max_rel_err,
            "passed": self.passed,
            "rtol": self.rtol,
        }


def _op_name(grad_fn: Any) -> str:
    name = type(grad_fn).__name__ if grad_fn is not None else "?"
    return re.sub(r"Backward\d*$", "", name)


def _grouped(module: nn.Module) -> bool:
    """A grouped, not depthwise, convolution."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and not module.groups == module.in_channels == module.out_channels
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


class ChannelGraph:
    """The channel groups of ``model`` for inputs like ``example_inputs``.

    Args:
        model: the network; it is traced once (in eval mode, with gradients on).
        example_inputs: a tensor or a tuple of positional inputs.
        frozen_layers: names of layers whose channels must not be pruned.

    Raises:
        PruningError: ``model`` is not a module, or cannot be run or traced (one line
            naming the error).
    """

    def __init__(
        self, model: nn.Module, example_inputs: Any, *, frozen_layers: Sequence[str] = ()
    ) -> None:
        if not isinstance(model, nn.Module):
            raise PruningError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        self.model = model
        self.example_inputs = example_inputs
        self._names = {m: n for n, m in model.named_modules()}
        unknown = set(frozen_layers) - set(self._names.values())
        if unknown:
            raise PruningError(f"frozen layers not in the model: {', '.join(sorted(unknown))}")
        self._frozen_layers = set(frozen_layers)
        self.groups: list[ChannelGroup] = []
        #: group id -> one producer ref per merged Torch-Pruning group (removal roots).
        self._roots: dict[int, list[ChannelRef]] = {}
        #: LayerNorm name -> the axis it normalises over (its channel axis).
        self._norm_axis: dict[str, int] = {}
        from .trace import gc_paused, one_thread

        # One intra-op thread throughout: the trace and the LayerNorm axis tests run
        # small tensors, which a second thread waiting for a busy core slows down by
        # 100x (torch.allclose on maxvit_t's attention norms: 108 ms a call with two
        # threads on the shared 2-core machine, 0.5 ms with one). The garbage collector
        # waits: see gc_paused.
        with one_thread(), gc_paused():
            self._build()

    # -- construction -------------------------------------------------------------------

    def _build(self) -> None:
        from .trace import trace

        # Always a tuple: Torch-Pruning calls model(*inputs), which would split a bare
        # tensor along its batch axis (a batch of one then traces an unbatched input).
        inputs = self.example_inputs
        inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        was_training = self.model.training
        self.model.eval()
        try:
            dg, facts = trace(self.model, inputs)
        except Exception as exc:
            raise PruningError(
                f"cannot trace the model to find its channel groups: {_one_line(exc)}"
            ) from exc
        finally:
            self.model.train(was_training)
        self._dg = dg
        self._facts = facts
        self.layers: dict[str, LayerInfo] = facts.layers
        from .norms import channel_axis

        for module, (x, out) in facts.norm_io.items():
            axis = channel_axis(module, x, out)
            if axis is not None and module in self._names:
                self._norm_axis[self._names[module]] = axis
        facts.norm_io.clear()
        output_layers = self._output_layers(dg)
        translated: list[_Translated] = []
        visited: set[nn.Module] = set()
        for module in list(dg.module2node):
            if not isinstance(module, (nn.Conv2d, nn.Linear)) or module in visited:
                continue
            item = self._trace_group(dg, module, visited)
            for ref in item.group.producers:
                if ref.layer in output_layers:
                    item.group.freeze(f"model output ({ref.layer})")
            for ref in item.group.refs:
                if ref.layer in self._frozen_layers:
                    item.group.freeze(f"frozen by the user ({ref.layer})")
            translated.append(item)
        dg.mapping_current = False  # removal changes shapes: maps are recomputed again
        facts.out_shape.clear()
        facts.layer_internal.clear()
        for group, roots in self._merge_grouped(translated):
            group.id = len(self.groups)
            self._roots[group.id] = roots
            self.groups.append(group)
        consumed = {r.layer for g in self.groups for r in g.consumers}
        # Input channels no group covers: the stem's image channels and anything the
        # trace could not connect. Listed, never skipped.
        for name, info in self.layers.items():
            if name in consumed or info.signature.group_mode == "depthwise":
                continue
            module = self._module(name)
            kind = "conv2d" if isinstance(module, nn.Conv2d) else "linear"
            ref = ChannelRef(name, kind, "in", tuple(range(info.c_in)))
            group = ChannelGroup(len(self.groups), info.c_in, consumers=[ref])
            group.freeze(
                "model input" if self._reads_input(name) else self._unproduced_reason(name)
            )
            self.groups.append(group)
        self._verify_partition()

    def _trace_group(self, dg: Any, module: nn.Module, visited: set[nn.Module]) -> _Translated:
        """The group of ``module``'s output channels; a group Torch-Pruning cannot
        follow is its output channels alone, frozen with the error as the reason."""
        name = self._names.get(module, "?")
        pruner = dg.get_pruner_of_module(module)
        try:
            n_out = pruner.get_out_channels(module)
            tp_group = dg.get_pruning_group(module, pruner.prune_out_channels, list(range(n_out)))
            for item in tp_group:
                if dg.is_out_channel_pruning_fn(item.dep.handler):
                    visited.add(item.dep.target.module)
            return self._translate(dg, tp_group)
        except Exception as exc:  # a model Torch-Pruning cannot follow: frozen, with why
            visited.add(module)
            kind = "conv2d" if isinstance(module, nn.Conv2d) else "linear"
            n = module.out_channels if kind == "conv2d" else module.out_features
            group = ChannelGroup(0, n, producers=[ChannelRef(name, kind, "out", tuple(range(n)))])
            group.freeze(f"channels of {name} cannot be followed: {_one_line(exc)}")
            return _Translated(group)

    def _verify_partition(self) -> None:
        """Freeze every group touching a layer whose channels the groups do not cover
        exactly once.

        Each output channel of a conv/linear/norm belongs to one group and so does each
        input channel; a gap or an overlap means the trace's index bookkeeping (concat
        offsets, split sizes) went wrong somewhere around that layer. Input channels
        that no traced layer produces (other than the model's own input) count as a gap.
        """
        extent: dict[tuple[str, str], int] = {}
        for name, info in self.layers.items():
            extent[(name, "in")] = info.c_in
            extent[(name, "out")] = info.c_out
        count: dict[tuple[str, str], np.ndarray] = {}
        bad: set[tuple[str, str]] = set()
        for group in self.groups:
            if not group.producers and group.reason != "model input":
                bad.update((r.layer, r.dim) for r in group.consumers)
            for ref in group.refs:
                key = (ref.layer, ref.dim)
                if key not in extent:
                    extent[key] = self._extent(ref)
                hits = count.setdefault(key, np.zeros(extent[key], dtype=np.int64))
                idx = np.asarray(ref.index, dtype=np.int64)
                if idx.size and (idx.min() < 0 or idx.max() >= hits.size):
                    bad.add(key)
                    continue
                np.add.at(hits, idx, 1)
        for key, n in extent.items():
            if n and not np.array_equal(count.get(key, np.zeros(n)), np.ones(n)):
                bad.add(key)
        for group in self.groups:
            touched = sorted({r.layer for r in group.refs if (r.layer, r.dim) in bad})
            if touched:
                group.freeze(
                    "channel coupling could not be verified around " + ", ".join(touched[:3])
                )

    def _extent(self, ref: ChannelRef) -> int:
        """Channels of a norm or parameter ref's layer."""
        if ref.kind == "parameter":
            p = self.model.get_parameter(ref.layer)
            return int(p.shape[_param_dim(p)])
        mod = self._module(ref.layer)
        if isinstance(mod, nn.LayerNorm):
            return int(mod.normalized_shape[-1])
        return int(getattr(mod, "num_features", 0) or getattr(mod, "num_parameters", 0))

    def _module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def _reads_input(self, name: str) -> bool:
        node = self._dg.module2node.get(self._module(name))
        return node is not None and not node.inputs

    def _unproduced_reason(self, name: str) -> str:
        """Why no group produces the input channels of layer ``name``."""
        node = self._dg.module2node.get(self._module(name))
        stack, seen = list(node.inputs if node else []), set()
        while stack:
            n = stack.pop()
            if id(n) in seen or isinstance(n.module, (nn.Conv2d, nn.Linear)):
                continue
            seen.add(id(n))
            if n.module in self._facts.unmapped:
                return f"input channels come through: {self._facts.unmapped[n.module]}"
            stack.extend(n.inputs)
        return "input channels not produced by a traced layer"

    def _output_layers(self, dg: Any) -> set[str]:
        """Conv/linear layers whose output reaches a model output through per-channel ops."""
        found: set[str] = set()
        for module, node in dg.module2node.items():
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            stack, seen = [node], set()
            while stack:
                n = stack.pop()
                if id(n) in seen:
                    continue
                seen.add(id(n))
                if not n.outputs:
                    found.add(self._names[module])
                    break
                for out in n.outputs:
                    # Outputs reached through another conv/linear are that layer's business.
                    if not isinstance(out.module, (nn.Conv2d, nn.Linear)):
                        stack.append(out)
        return found

    def _translate(self, dg: Any, tp_group: Any) -> _Translated:
        import torch_pruning as tp

        size = None
        group = ChannelGroup(0, 0)
        out = _Translated(group)
        facts = self._facts
        for item in tp_group:
            dep, idxs = item.dep, item.idxs
            root = item.root_idxs
            module = dep.target.module
            is_out = dg.is_out_channel_pruning_fn(dep.handler)
            root_arr = np.asarray(root, dtype=np.int64)
            order = np.argsort(root_arr, kind="stable")
            index = tuple(np.asarray(idxs, dtype=np.int64)[order].tolist())
            if size is None:
                size = len(np.unique(root_arr))
            name = self._names.get(module)
            if isinstance(module, nn.Conv2d):
                depthwise = module.groups == module.in_channels == module.out_channels > 1
                # A depthwise conv's input channels are its output channels: it is both
                # a producer and a consumer of the group.
                out_ref = ChannelRef(name, "conv2d", "out", index)
                in_ref = ChannelRef(name, "conv2d", "in", index)
                if (is_out or depthwise) and out_ref not in group.producers:
                    group.producers.append(out_ref)
                if (not is_out or depthwise) and in_ref not in group.consumers:
                    group.consumers.append(in_ref)
                if _grouped(module):
                    if module.in_channels != module.out_channels:
                        group.freeze(
                            f"grouped convolution {name} (groups={module.groups}) has "
                            "different input and output channels per group"
                        )
                    out.grouped.append(
                        (name, "out" if is_out else "in", out_ref if is_out else in_ref)
                    )
            elif isinstance(module, nn.Linear):
                ref = ChannelRef(name, "linear", "out" if is_out else "in", index)
                (group.producers if is_out else group.consumers).append(ref)
            elif isinstance(module, _NORMS_SAFE):
                if not any(r.layer == name for r in group.norms):
                    group.norms.append(ChannelRef(name, "batchnorm", "out", index))
            elif isinstance(module, nn.PReLU):
                if module.num_parameters > 1:
                    group.norms.append(ChannelRef(name, "prelu", "out", index))
            elif isinstance(module, nn.LayerNorm) and name in self._norm_axis:
                if not any(r.layer == name for r in group.norms):
                    group.norms.append(ChannelRef(name, "layernorm", "out", index))
            elif isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
                group.freeze(f"normalisation across channels ({name})")
            elif module in facts.unmapped:
                group.others.append(type(module).__name__.strip("_"))
                group.freeze(facts.unmapped[module])
            elif isinstance(module, (tp.ops._SplitOp, tp.ops._UnbindOp, tp.ops._SliceOp)):
                group.others.append(type(module).__name__.strip("_"))
                dim = getattr(dep.target.grad_fn, "_saved_dim", None)
                if dim != 0:
                    # chunk(2) halves whatever it gets; split sizes and slice bounds are
                    # numbers in the model's code: removal cannot keep them right.
                    op = type(module).__name__.strip("_").replace("Op", "").lower()
                    group.freeze(f"a {op} of the channels at sizes fixed by the model's code")
            elif isinstance(module, (tp.ops._ConcatOp, tp.ops._ReshapeOp, tp.ops._OutputOp)):
                group.others.append(type(module).__name__.strip("_"))
            elif isinstance(module, tp.ops._ElementWiseOp):
                fn = dep.target.grad_fn
                op = _op_name(fn)
                group.others.append(op)
                if fn in facts.layer_internal:
                    continue  # part of a Linear or LayerNorm layer (see .trace)
                # An op fed by parameters alone (the weight transpose of a linear layer)
                # is on the weight path, not the channel path.
                if dep.target.inputs and not self._per_channel(op, fn):
                    group.freeze(f"op {op} is not known to act on each channel alone")
            elif isinstance(module, tp.ops._ExpandOp):
                group.others.append("Expand")
            elif isinstance(module, nn.Parameter):
                pname = dg._param_to_name.get(module, "?")
                problem = self._channel_scale_problem(dg, module)
                if problem:
                    group.freeze(f"parameter {pname} {problem}")
                elif not any(r.layer == pname for r in group.norms):
                    group.norms.append(ChannelRef(pname, "parameter", "out", index))
            else:
                kind = type(module).__name__
                group.freeze(f"layer {name or kind} of type {kind} is not supported")
        group.size = size or 0
        return out

    @staticmethod
    def _channel_scale_problem(dg: Any, param: nn.Parameter) -> str:
        """Why ``param`` is not a per-channel scale or shift ("" when it is one: one
        non-singleton dimension, aligned with the channels of an NCHW tensor (C, 1, 1)
        or of a channels-last one (C,), used only by element-wise products or sums)."""
        dims = [i for i, s in enumerate(param.shape) if s > 1]
        if len(dims) != 1 or dims[0] - param.dim() not in (-1, -3):
            return f"of shape {tuple(param.shape)} is not a per-channel scale"
        node = dg.module2node.get(param)
        users = {_op_name(n.grad_fn) for n in (node.outputs if node else [])}
        if not users or not users <= {"Mul", "Add", "Sub"}:
            return "of no known layer"
        return ""

    @staticmethod
    def _per_channel(op: str, grad_fn: Any) -> bool:
        if op in PER_CHANNEL_OPS:
            return True
        if op == "Permute":
            return tuple(getattr(grad_fn, "_saved_dims", ())) in _CHANNELS_LAST_PERMUTES
        if op == "AsStrided":
            # Global average pooling's view of its (N, C) means as (N, C, 1, 1).
            size = tuple(getattr(grad_fn, "_saved_size", ()))
            stride = tuple(getattr(grad_fn, "_saved_stride", ()))
            return len(size) == 4 and size[2:] == (1, 1) and stride[:2] == (size[1], 1)
        if op in _REDUCTIONS:
            dims = getattr(grad_fn, "_saved_dim", None)
            if dims is None:
                return False
            dims = (dims,) if isinstance(dims, int) else tuple(dims)
            ndim = len(getattr(grad_fn, "_saved_self_sym_sizes", ()) or ()) or 4
            return all(d % ndim not in (0, 1) for d in dims)
        return False

    def _merge_grouped(
        self, translated: list[_Translated]
    ) -> list[tuple[ChannelGroup, list[ChannelRef]]]:
        """Merge the groups a grouped convolution couples (its input and its output
        channels) into one group whose unit is one convolution group.

        Returns ``(group, removal roots)`` in the order of the first member; groups
        without grouped convolutions pass through with unit 1.
        """
        parent = list(range(len(translated)))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        sides: dict[str, list[int]] = {}
        for i, t in enumerate(translated):
            for layer, _, _ in t.grouped:
                sides.setdefault(layer, []).append(i)
        for members in sides.values():
            for j in members[1:]:
                parent[find(j)] = find(members[0])
        components: dict[int, list[int]] = {}
        for i in range(len(translated)):
            components.setdefault(find(i), []).append(i)
        out = []
        for members in sorted(components.values(), key=lambda m: m[0]):
            parts = [translated[i] for i in members]
            if not any(t.grouped for t in parts):
                g = parts[0].group
                out.append((g, [g.producers[0]] if g.producers else []))
                continue
            try:
                out.append(self._merge_component(parts))
            except _NotWhole as exc:  # left apart, every part frozen with the reason
                for t in parts:
                    t.group.freeze(str(exc))
                    out.append((t.group, []))
        return out

    def _merge_component(self, parts: list[_Translated]) -> tuple[ChannelGroup, list[ChannelRef]]:
        convs = {layer for t in parts for layer, _, _ in t.grouped}
        n_units = 0
        for layer in convs:
            n_units = math.gcd(n_units, self._module(layer).groups)
        labels: list[np.ndarray] = []
        for t in parts:
            size = t.group.size
            lab = None
            for layer, side, ref in t.grouped:
                conv = self._module(layer)
                width = conv.in_channels if side == "in" else conv.out_channels
                if ref.multiplicity(size) != 1 or size % n_units:
                    raise _NotWhole(f"grouped convolution {layer} spans channel groups unevenly")
                this = np.asarray(ref.index, dtype=np.int64) // (width // n_units)
                if lab is None:
                    lab = this
                elif not np.array_equal(lab, this):
                    raise _NotWhole(
                        f"grouped convolutions around {layer} cut the channels into "
                        "different groups"
                    )
            if (
                lab is None
                or np.bincount(lab, minlength=n_units).tolist() != [size // n_units] * n_units
            ):
                raise _NotWhole(
                    f"the groups of grouped convolution {sorted(convs)[0]} span several channel groups"
                )
            labels.append(lab)
        unit = 0
        for t in parts:
            unit = math.gcd(unit, t.group.size // n_units)
        size = n_units * unit
        merged = ChannelGroup(0, size, others=[o for t in parts for o in t.group.others], unit=unit)
        for t in parts:
            if not t.group.prunable:
                merged.freeze(t.group.reason or "?")
        roots = []
        for t, lab in zip(parts, labels):
            # Member channels unit by unit: merged channel j*unit + r takes the member
            # channels [r*f, (r+1)*f) of unit j, f = (member size / units) / unit, which
            # is the ref's multiplicity growing by f.
            chans = [int(c) for j in range(n_units) for c in np.flatnonzero(lab == j)]

            def remap(ref: ChannelRef, t=t, chans=chans) -> ChannelRef:
                return ChannelRef(
                    ref.layer, ref.kind, ref.dim, tuple(ref.positions(chans, t.group.size))
                )

            for src, dst in (
                (t.group.producers, merged.producers),
                (t.group.consumers, merged.consumers),
                (t.group.norms, merged.norms),
            ):
                for ref in src:
                    new = remap(ref)
                    if new not in dst:
                        dst.append(new)
            if t.group.producers:
                roots.append(remap(t.group.producers[0]))
            else:
                merged.freeze("a grouped convolution reads channels no traced layer produces")
        return merged, roots

    # -- queries ------------------------------------------------------------------------

    @property
    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    @property
    def frozen(self) -> list[ChannelGroup]:
        return [g for g in self.groups if not g.prunable]

    def layers_of_mode(self, mode: str) -> set[str]:
        """Names of the layers whose signature's ``group_mode`` is ``mode`` (``"dense"``,
        ``"depthwise"`` or ``"grouped"``)."""
        return {n for n, info in self.layers.items() if info.signature.group_mode == mode}

    @property
    def residual_streams(self) -> set[int]:
        """Ids of the prunable groups written by two or more dense (ungrouped) layers: the
        channels a residual sum adds (a stage's block outputs and its shortcut). A
        block's inner width has one dense writer, a depthwise conv beside it writing the
        same channels not counted."""
        dense = self.layers_of_mode("dense")
        return {
            g.id
            for g in self.prunable
            if len({r.layer for r in g.producers if r.layer in dense}) > 1
        }

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def macs(self) -> int:
        return sum(info.macs for info in self.layers.values())

    def group(self, gid: int) -> ChannelGroup:
        return self.groups[gid]

    def widths(self, keep_counts: Mapping[int, int]) -> dict[str, tuple[int, int]]:
        """Channel counts (c_in, c_out) of every conv/linear layer under a keep plan.

        Args:
            keep_counts: group id to the number of channels it keeps; groups not
                listed keep all their channels.

        Raises:
            PruningError: a count is out of range or not a multiple of the group's unit.
        """
        c_in = {n: info.c_in for n, info in self.layers.items()}
        c_out = {n: info.c_out for n, info in self.layers.items()}
        for gid, k in keep_counts.items():
            group = self._checked_group(gid)
            if not 0 <= k <= group.size:
                raise PruningError(f"group {gid} has {group.size} channels, cannot keep {k}")
            if k % group.unit:
                raise PruningError(
                    f"group {gid} is pruned in units of {group.unit} channels (whole "
                    f"convolution groups), cannot keep {k}"
                )
            removed = group.size - k
            if removed == 0:
                continue
            for ref in group.producers:
                if ref.layer in c_out:
                    c_out[ref.layer] -= removed * ref.multiplicity(group.size)
            for ref in group.consumers:
                if ref.layer in c_in:
                    c_in[ref.layer] -= removed * ref.multiplicity(group.size)
        return {n: (c_in[n], c_out[n]) for n in self.layers}

    def _checked_group(self, gid: int) -> ChannelGroup:
        if not 0 <= gid < len(self.groups):
            raise PruningError(f"no channel group {gid}")
        return self.groups[gid]

    def _normalise_keep(self, keep: Mapping[int, Sequence[int]]) -> dict[int, list[int]]:
        out = {}
        for gid, kept in keep.items():
            group = self._checked_group(gid)
            kept_sorted = sorted({int(c) for c in kept})
            if len(kept_sorted) == group.size:
                continue
            if not group.prunable:
                raise PruningError(f"group {gid} is frozen: {group.reason}")
            if not kept_sorted:
                raise PruningError(f"group {gid} would keep no channel")
            if kept_sorted[0] < 0 or kept_sorted[-1] >= group.size:
                raise PruningError(f"group {gid}: channel index out of range 0..{group.size - 1}")
            u = group.unit
            if u > 1 and len(kept_sorted) != u * len({c // u for c in kept_sorted}):
                raise PruningError(
                    f"group {gid} is pruned in whole units of {u} channels (one convolution "
                    f"group each): keep all of channels [j*{u}, (j+1)*{u}) or none"
                )
            out[gid] = kept_sorted
        return out

    # -- masking and removal ------------------------------------------------------------

    def mask_slices(
        self, keep: Mapping[int, Sequence[int]]
    ) -> tuple[
        list[tuple[torch.Tensor, int, list[int]]], list[tuple[nn.Module, torch.Tensor, int]]
    ]:
        """What masking ``keep`` zeroes, and the LayerNorms it restricts.

        Returns:
            ``(slices, norms)``: ``(parameter, dim, positions)`` to zero (producers' output
            slices, norms' and per-channel parameters' slices, consumers' input slices),
            and ``(LayerNorm, kept-channel mask, channel axis)`` for every LayerNorm over
            channels the plan narrows.

        Raises:
            PruningError: as :meth:`mask`.
        """
        slices: list[tuple[torch.Tensor, int, list[int]]] = []
        norm_keep: dict[str, torch.Tensor] = {}

        def add(param: torch.Tensor | None, dim: int, pos: list[int]) -> None:
            if param is not None and pos:
                slices.append((param, dim, pos))

        for gid, kept in self._normalise_keep(keep).items():
            group = self.groups[gid]
            drop = sorted(set(range(group.size)) - set(kept))
            for ref in group.producers:
                mod = self._module(ref.layer)
                pos = ref.positions(drop, group.size)
                add(mod.weight, 0, pos)
                add(mod.bias, 0, pos)
            for ref in group.norms:
                pos = ref.positions(drop, group.size)
                if ref.kind == "parameter":
                    p = self.model.get_parameter(ref.layer)
                    add(p, _param_dim(p), pos)
                    continue
                mod = self._module(ref.layer)
                add(getattr(mod, "weight", None), 0, pos)
                add(getattr(mod, "bias", None), 0, pos)
                if ref.kind == "layernorm":
                    k = norm_keep.setdefault(
                        ref.layer, torch.ones(mod.normalized_shape[-1], dtype=torch.bool)
                    )
                    k[pos] = False
            for ref in group.consumers:
                mod = self._module(ref.layer)
                if isinstance(mod, nn.Conv2d) and mod.groups > 1:
                    # Depthwise: its input channels are its output channels. Grouped: the
                    # output rows of the same convolution groups are zeroed as a producer.
                    continue
                add(mod.weight, 1, ref.positions(drop, group.size))
        norms = [(self._module(n), k, self._norm_axis[n]) for n, k in norm_keep.items()]
        return slices, norms

    @torch.no_grad()
    def mask(self, keep: Mapping[int, Sequence[int]]) -> None:
        """Zero, in place, every parameter slice that removing the other channels would drop.

        Shapes are unchanged. Producers lose their output slices (weight and bias), norms
        and per-channel parameters (layer scale) their slices, consumers their input
        slices, and a LayerNorm over channels computes its statistics over the kept
        channels only (see the module notes), so the masked model computes exactly what
        the channel-removed model computes.

        Args:
            keep: group id to the kept channel indices (group coordinates; whole units).

        Raises:
            PruningError: a frozen or unknown group, an empty or out-of-range keep, or a
                keep that splits a unit.
        """
        from .norms import current_norm_mask, set_norm_mask

        slices, norms = self.mask_slices(keep)
        for param, dim, pos in slices:
            param.index_fill_(dim, torch.tensor(pos, dtype=torch.long, device=param.device), 0)
        for module, k, axis in norms:
            old = current_norm_mask(module)
            set_norm_mask(module, k if old is None else k & old, axis)

    def remove(self, keep: Mapping[int, Sequence[int]]) -> nn.Module:
        """Remove the channels not kept from ``self.model``, in place, and return it.

        Grouped convolutions lose whole groups (their ``groups`` shrinks); LayerNorm
        channel masks are cleared (the slim LayerNorms have the kept channels only). The
        graph describes the original widths and is stale afterwards: build a new one for
        the slim model.

        Args:
            keep: group id to the kept channel indices (group coordinates; whole units).
        """
        import torch_pruning as tp

        from .norms import clear_norm_masks

        plan = self._normalise_keep(keep)
        # One Torch-Pruning group per merged part of a channel group, rooted at its first
        # producer, so its index mapping (concat offsets, flatten expansion) does the
        # bookkeeping. A producer's output channels belong to one group only, so its
        # positions stay valid while other groups are removed; consumer offsets (concat)
        # are recomputed by Torch-Pruning for each group from the current shapes.
        # Grouped convolutions are left out of Torch-Pruning's groups (it would prune
        # inside every convolution group) and cut here in whole groups.
        for gid, kept in plan.items():
            group = self.groups[gid]
            drop = sorted(set(range(group.size)) - set(kept))
            grouped = [r for r in group.producers if _grouped(self._module(r.layer))]
            for root in self._roots[gid]:
                module = self._module(root.layer)
                fn = (
                    tp.prune_linear_out_channels
                    if isinstance(module, nn.Linear)
                    else tp.prune_conv_out_channels
                )
                tp_group = self._dg.get_pruning_group(module, fn, root.positions(drop, group.size))
                items = tp_group.items
                items[:] = [it for it in items if not _grouped(it.dep.target.module)]
                tp_group.prune(record_history=False)
            for ref in grouped:
                _remove_conv_groups(
                    self._module(ref.layer), ref.positions(drop, group.size), ref.layer
                )
        clear_norm_masks(self.model)
        return self.model

    def check(
        self,
        keep: Mapping[int, Sequence[int]],
        *,
        trials: int = 2,
        rtol: float = 1e-4,
        seed: int = 0,
    ) -> CheckResult:
        """Remove ``keep``'s channels from a copy and compare it with a masked copy.

        Random inputs shaped like the example inputs; relative error is measured
        against the largest output magnitude. ``self.model`` is left untouched.
        """
        import copy

        masked = copy.deepcopy(self.model).eval()
        # Removal needs a dependency graph bound to the copy: trace the copy.
        removed_model = copy.deepcopy(self.model).eval()
        removed_graph = ChannelGraph(removed_model, self.example_inputs)
        shape = [(g.size, g.unit) for g in self.groups]
        if [(g.size, g.unit) for g in removed_graph.groups] != shape:
            raise PruningError("the model traced differently twice; cannot check removal")
        for copy_group, group in zip(removed_graph.groups, self.groups):
            copy_group.prunable, copy_group.reason = group.prunable, group.reason
        masked_graph = ChannelGraph.__new__(ChannelGraph)
        masked_graph.__dict__.update(self.__dict__)
        masked_graph.model = masked
        masked_graph._names = {m: n for n, m in masked.named_modules()}
        masked_graph.mask(keep)
        failed = CheckResult(float("inf"), float("inf"), False, rtol)
        try:
            removed_graph.remove(keep)
        except Exception:  # a removal the model cannot take is a failed check
            return failed
        from .trace import one_thread

        gen = torch.Generator().manual_seed(seed)
        max_abs, max_rel = 0.0, 0.0
        with torch.no_grad(), one_thread():
            for _ in range(trials):
                inputs = _random_like(self.example_inputs, gen)
                a = _flat_outputs(masked(*inputs))
                try:
                    b = _flat_outputs(removed_model(*inputs))
                except Exception:  # shapes no longer fit: the removal broke the model
                    return failed
                if len(a) != len(b):
                    raise PruningError("pruned model returns a different number of outputs")
                for x, y in zip(a, b):
                    if x.shape != y.shape:
                        return failed
                    diff = (x.double() - y.double()).abs().max().item() if x.numel() else 0.0
                    scale = x.double().abs().max().item() if x.numel() else 0.0
                    max_abs = max(max_abs, diff)
                    max_rel = max(max_rel, diff / scale if scale > 0 else diff)
        return CheckResult(max_abs, max_rel, bool(max_rel <= rtol), rtol)


class _NotWhole(Exception):
    """Grouped convolutions whose groups do not cut their channel groups into units."""


def _param_dim(param: torch.Tensor) -> int:
    """The channel dimension of a per-channel parameter: its last non-singleton one."""
    dims = [i for i, s in enumerate(param.shape) if s > 1]
    return dims[-1] if dims else param.dim() - 1


def _remove_conv_groups(conv: nn.Conv2d, drop: Sequence[int], name: str) -> None:
    """Remove the convolution groups whose output channels are ``drop`` from ``conv``."""
    per_out = conv.out_channels // conv.groups
    per_in = conv.in_channels // conv.groups
    dropped = set(int(c) for c in drop)
    rows = [c for c in range(conv.out_channels) if c not in dropped]
    kept_groups = sorted({c // per_out for c in rows})
    if len(rows) != len(kept_groups) * per_out:
        raise PruningError(f"{name}: removal would split a convolution group")
    idx = torch.tensor(rows, dtype=torch.long, device=conv.weight.device)

    def cut(p: torch.Tensor) -> nn.Parameter:
        new = nn.Parameter(p.detach().index_select(0, idx).clone(), requires_grad=p.requires_grad)
        if p.grad is not None:
            new.grad = p.grad.index_select(0, idx).clone()
        return new

    conv.weight = cut(conv.weight)
    if conv.bias is not None:
        conv.bias = cut(conv.bias)
    conv.out_channels = len(rows)
    conv.groups = len(kept_groups)
    conv.in_channels = conv.groups * per_in


def _random_like(example: Any, gen: torch.Generator) -> tuple:
    inputs = example if isinstance(example, tuple) else (example,)
    return tuple(
        torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
        if torch.is_tensor(x) and x.is_floating_point()
        else x
        for x in inputs
    )


def _flat_outputs(out: Any) -> list[torch.Tensor]:
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, Mapping):
        return [t for k in sorted(out) for t in _flat_outputs(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flat_outputs(o)]
    return []
