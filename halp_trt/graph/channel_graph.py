"""Coupled channel groups of a PyTorch model, found by tracing.

Torch-Pruning's ``DependencyGraph`` does the tracing and the index bookkeeping for
concat, split, flatten and residual adds; this module translates its groups into our
own types (:class:`ChannelGroup`, :class:`ChannelRef`) so the rest of halp-trt never
touches its internals, and adds what a deployment tool needs on top: which groups are
safe to prune and, when not, why.

A group is frozen (listed with a reason, never silently skipped) when:

- it indexes the output channels of a layer whose output is a model output
  (classifier logits, detection head outputs);
- it reaches an op whose effect on channels is not known to be per-channel (a channel
  permutation, a reduction over channels, a normalisation across channels, a pad of
  the channel dimension, ...): removing channels there would change what the rest of
  the model computes;
- it contains a grouped (not depthwise) convolution, whose channels are tied in
  blocks of the group size;
- it touches a parameter that belongs to no known layer type;
- the user froze one of its layers.

Input channels that no prunable layer produces (the stem's image channels, anything
behind an op that breaks the trace) appear as frozen groups without producers.

Why this module is longer than 500 lines: construction, the exact-coverage check,
masking, removal and the removed-vs-masked check all work on one traced Torch-Pruning
dependency graph and its index maps, which this class keeps private so that nothing
else depends on Torch-Pruning's internals.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from lut_builder.signatures import LayerInfo, model_layers

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


@dataclass(frozen=True)
class ChannelRef:
    """How a group's channels appear in one layer.

    ``index[i]`` is the layer's channel that group channel ``i`` maps to. When one group
    channel maps to several layer positions (a flatten in front of a linear layer), the
    positions of channel ``i`` are ``index[i*m:(i+1)*m]`` with ``m = len(index) // size``.
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
    """Channels that must be pruned together, and the layers they index."""

    id: int
    size: int
    producers: list[ChannelRef] = field(default_factory=list)
    consumers: list[ChannelRef] = field(default_factory=list)
    norms: list[ChannelRef] = field(default_factory=list)
    others: list[str] = field(default_factory=list)
    prunable: bool = True
    reason: str | None = None

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
            "prunable": self.prunable,
            "reason": self.reason,
            "producers": [r.layer for r in self.producers],
            "consumers": [r.layer for r in self.consumers],
            "norms": [r.layer for r in self.norms],
        }


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


class ChannelGraph:
    """The channel groups of ``model`` for inputs like ``example_inputs``.

    Args:
        model: the network; it is traced once (in eval mode, with gradients on).
        example_inputs: a tensor or a tuple of positional inputs.
        frozen_layers: names of layers whose channels must not be pruned.

    Raises:
        PruningError: the model cannot be traced.
    """

    def __init__(
        self, model: nn.Module, example_inputs: Any, *, frozen_layers: Sequence[str] = ()
    ) -> None:
        self.model = model
        self.example_inputs = example_inputs
        self._names = {m: n for n, m in model.named_modules()}
        self.layers: dict[str, LayerInfo] = model_layers(model, example_inputs)
        unknown = set(frozen_layers) - set(self._names.values())
        if unknown:
            raise PruningError(f"frozen layers not in the model: {', '.join(sorted(unknown))}")
        self._frozen_layers = set(frozen_layers)
        self.groups: list[ChannelGroup] = []
        self._items: dict[int, list[tuple[str, Any, str, ChannelRef | None]]] = {}
        self._build()

    # -- construction -------------------------------------------------------------------

    def _build(self) -> None:
        import torch_pruning as tp

        # Always a tuple: Torch-Pruning calls model(*inputs), which would split a bare
        # tensor along its batch axis (a batch of one then traces an unbatched input).
        inputs = self.example_inputs
        inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        was_training = self.model.training
        self.model.eval()
        try:
            with warnings.catch_warnings(), torch.enable_grad():
                warnings.simplefilter("ignore")
                dg = tp.DependencyGraph().build_dependency(
                    self.model, example_inputs=inputs, verbose=False
                )
        except Exception as exc:
            raise PruningError(
                f"cannot trace the model to find its channel groups: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            self.model.train(was_training)
        self._dg = dg
        self._bad_splits = _repair_splits(dg)
        output_layers = self._output_layers(dg)
        consumed: set[str] = set()
        for tp_group in dg.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear)):
            group = self._translate(dg, tp_group, len(self.groups))
            for ref in group.producers:
                if ref.layer in output_layers:
                    group.freeze(f"model output ({ref.layer})")
            for ref in group.refs:
                if ref.layer in self._frozen_layers:
                    group.freeze(f"frozen by the user ({ref.layer})")
            consumed.update(r.layer for r in group.consumers)
            self.groups.append(group)
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
                "model input"
                if self._reads_input(name)
                else "input channels not produced by a traced layer"
            )
            self.groups.append(group)
        self._verify_partition()

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
                    mod = self._module(ref.layer)
                    extent[key] = int(
                        getattr(mod, "num_features", 0) or getattr(mod, "num_parameters", 0)
                    )
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

    def _module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def _reads_input(self, name: str) -> bool:
        node = self._dg.module2node.get(self._module(name))
        return node is not None and not node.inputs

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

    def _translate(self, dg: Any, tp_group: Any, gid: int) -> ChannelGroup:
        import torch_pruning as tp

        size = None
        group = ChannelGroup(gid, 0)
        items = []
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
                if module.groups > 1 and not depthwise:
                    group.freeze(f"grouped convolution {name} (groups={module.groups})")
                # A depthwise conv's input channels are its output channels: it is both
                # a producer and a consumer of the group.
                out_ref = ChannelRef(name, "conv2d", "out", index)
                in_ref = ChannelRef(name, "conv2d", "in", index)
                if (is_out or depthwise) and out_ref not in group.producers:
                    group.producers.append(out_ref)
                if (not is_out or depthwise) and in_ref not in group.consumers:
                    group.consumers.append(in_ref)
            elif isinstance(module, nn.Linear):
                ref = ChannelRef(name, "linear", "out" if is_out else "in", index)
                (group.producers if is_out else group.consumers).append(ref)
            elif isinstance(module, _NORMS_SAFE):
                if not any(r.layer == name for r in group.norms):
                    group.norms.append(ChannelRef(name, "batchnorm", "out", index))
            elif isinstance(module, nn.PReLU):
                if module.num_parameters > 1:
                    group.norms.append(ChannelRef(name, "prelu", "out", index))
            elif isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
                group.freeze(f"normalisation across channels ({name})")
            elif isinstance(
                module,
                (
                    tp.ops._ConcatOp,
                    tp.ops._SplitOp,
                    tp.ops._ReshapeOp,
                    tp.ops._UnbindOp,
                    tp.ops._SliceOp,
                    tp.ops._OutputOp,
                ),
            ):
                group.others.append(type(module).__name__.strip("_"))
            elif isinstance(module, tp.ops._ElementWiseOp):
                op = _op_name(dep.target.grad_fn)
                group.others.append(op)
                # An op fed by parameters alone (the weight transpose of a linear layer)
                # is on the weight path, not the channel path.
                if dep.target.inputs and not self._per_channel(op, dep.target.grad_fn):
                    group.freeze(f"op {op} is not known to act on each channel alone")
            elif isinstance(module, tp.ops._ExpandOp):
                group.others.append("Expand")
            elif isinstance(module, nn.Parameter):
                group.freeze(
                    f"parameter {self._dg._param_to_name.get(module, '?')} of no known layer"
                )
            else:
                kind = type(module).__name__
                group.freeze(f"layer {name or kind} of type {kind} is not supported")
            items.append((name, module, "out" if is_out else "in", index))
        group.size = size or 0
        self._items[gid] = items
        return group

    @staticmethod
    def _per_channel(op: str, grad_fn: Any) -> bool:
        if op in PER_CHANNEL_OPS:
            return True
        if op in _REDUCTIONS:
            dims = getattr(grad_fn, "_saved_dim", None)
            if dims is None:
                return False
            dims = (dims,) if isinstance(dims, int) else tuple(dims)
            ndim = len(getattr(grad_fn, "_saved_self_sym_sizes", ()) or ()) or 4
            return all(d % ndim not in (0, 1) for d in dims)
        return False

    # -- queries ------------------------------------------------------------------------

    @property
    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    @property
    def frozen(self) -> list[ChannelGroup]:
        return [g for g in self.groups if not g.prunable]

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
            PruningError: a count is out of range or names a frozen group.
        """
        c_in = {n: info.c_in for n, info in self.layers.items()}
        c_out = {n: info.c_out for n, info in self.layers.items()}
        for gid, k in keep_counts.items():
            group = self._checked_group(gid)
            if not 0 <= k <= group.size:
                raise PruningError(f"group {gid} has {group.size} channels, cannot keep {k}")
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
        group = self.groups[gid]
        return group

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
            out[gid] = kept_sorted
        return out

    # -- masking and removal ------------------------------------------------------------

    @torch.no_grad()
    def mask(self, keep: Mapping[int, Sequence[int]]) -> None:
        """Zero, in place, every parameter slice that removing the other channels would drop.

        Shapes are unchanged. Producers lose their output slices (weight and bias), norms
        their affine parameters, consumers their input slices, so the masked model
        computes exactly what the channel-removed model computes.

        Args:
            keep: group id to the kept channel indices (group coordinates).
        """
        for gid, kept in self._normalise_keep(keep).items():
            group = self.groups[gid]
            drop = sorted(set(range(group.size)) - set(kept))
            for ref in group.producers:
                mod = self._module(ref.layer)
                pos = ref.positions(drop, group.size)
                mod.weight[pos] = 0
                if mod.bias is not None:
                    mod.bias[pos] = 0
            for ref in group.norms:
                mod = self._module(ref.layer)
                pos = ref.positions(drop, group.size)
                if getattr(mod, "weight", None) is not None:
                    mod.weight[pos] = 0
                if getattr(mod, "bias", None) is not None:
                    mod.bias[pos] = 0
            for ref in group.consumers:
                mod = self._module(ref.layer)
                if isinstance(mod, nn.Conv2d) and mod.groups > 1:
                    continue  # depthwise: its input channels are its output channels
                mod.weight[:, ref.positions(drop, group.size)] = 0

    def remove(self, keep: Mapping[int, Sequence[int]]) -> nn.Module:
        """Remove the channels not kept from ``self.model``, in place, and return it.

        The graph describes the original widths and is stale afterwards: build a new
        one for the slim model.

        Args:
            keep: group id to the kept channel indices (group coordinates).
        """
        import torch_pruning as tp

        plan = self._normalise_keep(keep)
        # One Torch-Pruning group per channel group, rooted at its first producer, so
        # its index mapping (concat offsets, flatten expansion) does the bookkeeping.
        # A producer's output channels belong to one group only, so its positions stay
        # valid while other groups are removed; consumer offsets (concat) are recomputed
        # by Torch-Pruning for each group from the current shapes.
        for gid, kept in plan.items():
            group = self.groups[gid]
            root = group.producers[0]
            drop = sorted(set(range(group.size)) - set(kept))
            module = self._module(root.layer)
            fn = (
                tp.prune_linear_out_channels
                if isinstance(module, nn.Linear)
                else tp.prune_conv_out_channels
            )
            self._dg.get_pruning_group(module, fn, root.positions(drop, group.size)).prune()
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
        if [g.size for g in removed_graph.groups] != [g.size for g in self.groups]:
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
        gen = torch.Generator().manual_seed(seed)
        max_abs, max_rel = 0.0, 0.0
        with torch.no_grad():
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


def _repair_splits(dg: Any) -> set[int]:
    """Set the channel split sizes of every split/chunk node from its autograd record.

    Torch-Pruning infers ``chunk`` sizes by walking the graph when the autograd node
    lacks ``_saved_self_sizes`` (as in recent PyTorch, which saves
    ``_saved_self_sym_sizes``), and can get them wrong; the record has the true sizes.
    Returns the ids of split modules along channels whose sizes stay unknown.
    """
    import torch_pruning as tp

    bad: set[int] = set()
    for module, node in dg.module2node.items():
        if not isinstance(module, tp.ops._SplitOp):
            continue
        fn = node.grad_fn
        shape = getattr(fn, "_saved_self_sym_sizes", None) or getattr(fn, "_saved_self_sizes", None)
        dim = getattr(fn, "_saved_dim", None)
        if shape is None or dim is None or not -len(shape) <= dim < len(shape):
            bad.add(id(module))
            continue
        if dim % len(shape) != 1:
            continue  # not a channel split: Torch-Pruning leaves it alone
        total = int(shape[1])
        if hasattr(fn, "_saved_split_sizes"):
            sizes = [int(c) for c in fn._saved_split_sizes]
        elif hasattr(fn, "_saved_split_size"):
            step = int(fn._saved_split_size)
            sizes = [min(step, total - i) for i in range(0, total, step)]
        else:
            bad.add(id(module))
            continue
        if sum(sizes) != total or len(sizes) != len(node.outputs):
            bad.add(id(module))
            continue
        module.split_sizes = sizes
        module.offsets = [0, *np.cumsum(sizes).tolist()]
    return bad


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
