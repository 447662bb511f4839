"""One traced forward pass: Torch-Pruning's dependency graph plus the facts the channel
graph checks it against.

The pass records, besides Torch-Pruning's autograd trace, the conv/linear signatures
(:func:`lut_builder.signatures.recording_layers`), the input and output of every
LayerNorm (to find the axis it normalises over), the autograd nodes a Linear layer on a
channels-last tensor is made of (its view, matrix product, weight transpose, view back)
or a channels-first LayerNorm is made of (permute, layer norm, permute back): part of
the layer, not ops on the channel path and the output shape of every op (to
tell a flatten from a reshape that splits or merges the channel dimension).

Torch-Pruning maps indices through any view or reshape as if it were a flatten; on a
reshape that splits the channel dimension (ShuffleNet's channel shuffle) that mapping is
meaningless and can divide by zero. :class:`_Tracer` hands such reshapes to
Torch-Pruning as plain element-wise nodes (identity index map) and lists them; the
channel graph freezes every group that reaches one.
"""

from __future__ import annotations

import gc
import itertools
import math
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from lut_builder.signatures import LayerInfo, recording_layers

from .norms import norm_masks_suspended


@dataclass
class TraceFacts:
    """What the traced pass saw besides Torch-Pruning's graph."""

    layers: dict[str, LayerInfo] = field(default_factory=dict)
    #: LayerNorm module -> (input, output) of its first call.
    norm_io: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    #: autograd nodes inside an nn.Linear or nn.LayerNorm call (not its output node).
    layer_internal: set[Any] = field(default_factory=set)
    #: autograd node -> output shape, for every op that ran under the recorder.
    out_shape: dict[Any, tuple[int, ...]] = field(default_factory=dict)
    #: ids of channel split modules whose sizes stay unknown (see :func:`repair_splits`).
    bad_splits: set[int] = field(default_factory=set)
    #: nodes Torch-Pruning must not map (a reshape that splits the channel dimension,
    #: a concatenation it cannot size), module -> why; their groups are frozen.
    unmapped: dict[Any, str] = field(default_factory=dict)


class _ShapeRecorder(TorchFunctionMode):
    def __init__(self, facts: TraceFacts) -> None:
        super().__init__()
        self.facts = facts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if torch.is_tensor(out) and out.grad_fn is not None:
            self.facts.out_shape.setdefault(out.grad_fn, tuple(out.shape))
        return out


def _internal_hooks(model: nn.Module, facts: TraceFacts) -> list[Any]:
    """Collect the autograd nodes inside every Linear and LayerNorm call."""
    entry: dict[nn.Module, Any] = {}

    def pre(module: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        entry[module] = x.grad_fn if torch.is_tensor(x) else None

    def post(module: nn.Module, args: tuple, out: Any) -> None:
        if not torch.is_tensor(out) or out.grad_fn is None:
            return
        stop = entry.get(module)
        stack = [f for f, _ in out.grad_fn.next_functions if f is not None]
        while stack:
            fn = stack.pop()
            if fn is stop or fn in facts.layer_internal or not hasattr(fn, "next_functions"):
                continue
            if type(fn).__name__ == "AccumulateGrad":
                continue
            facts.layer_internal.add(fn)
            stack.extend(f for f, _ in fn.next_functions if f is not None)

    handles = []
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.LayerNorm)):
            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post))
    return handles


def _norm_hooks(model: nn.Module, facts: TraceFacts) -> list[Any]:
    def post(module: nn.Module, args: tuple, out: Any) -> None:
        fresh = module not in facts.norm_io and args
        if fresh and torch.is_tensor(args[0]) and torch.is_tensor(out):
            facts.norm_io[module] = (args[0].detach().clone(), out.detach().clone())

    return [m.register_forward_hook(post) for m in model.modules() if isinstance(m, nn.LayerNorm)]


def reshape_problem(in_shape: tuple[int, ...] | None, out_shape: tuple[int, ...] | None) -> str:
    """Why a reshape from ``in_shape`` to ``out_shape`` does not keep channels whole
    ("" when it does: same shape, a flatten of everything after dim 1, or its inverse)."""
    if in_shape is None or out_shape is None:
        return "a reshape of unknown shape"
    a, b = tuple(in_shape), tuple(out_shape)
    if a == b:
        return ""
    if len(a) >= 2 and len(b) >= 2 and a[0] == b[0]:
        # flatten: (N, C, *rest) -> (N, C * prod(rest)); unflatten is the reverse.
        if len(b) == 2 and b[1] == math.prod(a[1:]):
            return ""
        if len(a) == 2 and a[1] == math.prod(b[1:]):
            return ""
        # (N, C, H, W) <-> (N, C, H*W): only the spatial dimensions change.
        if a[:2] == b[:2] and math.prod(a[2:]) == math.prod(b[2:]):
            return ""
    return f"a reshape {a} -> {b} splits or merges the channel dimension"


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one intra-op thread (restored after).

    The trace and the removal check run the model on one small example input: on a busy
    machine, a second intra-op thread that waits for a core costs far more than it
    gains (convnext_base at 64x64: 2.8 s per forward pass with 2 threads, 0.2 s with 1,
    on the 2-core development machine shared with other jobs).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off inside the block (its state restored after).

    Group expansion allocates a tuple per channel index per dependency it walks (1.3M on
    maxvit_t) and keeps many alive in the group, which sets off a full collection over
    every object of the process again and again: half of maxvit_t's graph build (3.0 s
    of it with the collector on, 1.6 s off). What the build allocates is freed by
    reference counting; the collector runs again once the block is left.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_SWAP_LOCK = threading.RLock()


@dataclass
class _Swap:
    #: Torch-Pruning called its index-map pass for the graph and the call was skipped.
    skipped: bool = False


@contextmanager
def _maps_kept(graph: Any) -> Iterator[_Swap]:
    """Torch-Pruning's pass over all index maps skipped for ``graph`` inside the block
    (other graphs are unaffected); the library's function is restored after.

    ``DependencyGraph.build_dependency`` of Torch-Pruning 1.6.1 ends with
    ``index_mapping.update_index_mapping(self)``, which re-infers the split sizes
    (undoing :func:`repair_splits`) and stops at the first map it cannot compute; the
    trace computes the maps itself, one by one. The swap is of a module attribute the
    library looks up at call time: where that attribute is missing nothing is swapped,
    and where the library does not call it, ``skipped`` stays false; either way the
    caller runs its own pass again after the library's.
    """
    import torch_pruning as tp

    swap = _Swap()
    mapping = getattr(tp.dependency.graph, "index_mapping", None)
    real = getattr(mapping, "update_index_mapping", None)
    if real is None:
        yield swap
        return

    def update(g: Any) -> None:
        if g is graph:
            swap.skipped = True
        else:
            real(g)

    with _SWAP_LOCK:
        mapping.update_index_mapping = update
        try:
            yield swap
        finally:
            mapping.update_index_mapping = real


def trace(model: nn.Module, inputs: tuple) -> tuple[Any, TraceFacts]:
    """Build Torch-Pruning's dependency graph of ``model`` with one forward pass.

    For a large model or input (:func:`meta_worthwhile`) the pass runs on the meta device
    first (:func:`_trace_on_meta`): the graph needs the autograd record and the shapes,
    not the numbers, and a ViT-H/14 at 224x224 spent 3 s of its 4.3 s build computing
    them. A model the meta device cannot run (control flow on values, an op without a
    meta kernel, a tensor kept outside its parameters and buffers, state written during
    the forward) is traced again on its own device.

    Returns:
        ``(dependency graph, facts)``. Raises whatever the trace raises.
    """
    if meta_worthwhile(model, inputs):
        try:
            return _trace_on_meta(model, inputs)
        except Exception:
            pass  # the pass on the model's own device below reports what went wrong
    return _trace(model, inputs)


#: The meta trace is used from this many parameters on, or from this product of
#: parameters and input positions (batch x height x width) on. Its kernels run in Python,
#: so it only pays where the real forward pass is heavy: on the 2-core development
#: machine, over torchvision's 80 classifiers, it took ViT-H/14 from 5.4 s to 1.5 s,
#: ViT-L/16 from 1.9 to 1.0 and RegNetY-128GF (64x64) from 1.45 to 0.8, but
#: EfficientNet-B6 (64x64) from 0.5 to 1.3 and MaxViT-T from 2.4 to 3.3.
META_MIN_PARAMS = 100_000_000
META_MIN_WORK = 1e13


def meta_worthwhile(model: nn.Module, inputs: tuple) -> bool:
    """Whether :func:`trace` runs the pass on the meta device first (see META_MIN_*)."""
    params = sum(p.numel() for p in model.parameters())
    first = next((x for x in inputs if torch.is_tensor(x)), None)
    if first is None:
        positions = 1
    elif first.dim() >= 3:
        positions = first.numel() // first.shape[1]
    else:
        positions = first.numel()
    return params >= META_MIN_PARAMS or params * positions >= META_MIN_WORK


def _attributes(model: nn.Module) -> dict[tuple[int, str], Any]:
    """Every plain attribute of every module (not its parameters, buffers, children)."""
    return {
        (id(module), name): value
        for module in model.modules()
        for name, value in vars(module).items()
        if name not in ("_parameters", "_buffers", "_modules")
    }


def _holds_tensor(value: Any) -> bool:
    """A tensor, or a list, tuple or dict with one: what a forward pass may cache."""
    if torch.is_tensor(value):
        return True
    items = value.values() if isinstance(value, dict) else value
    return isinstance(value, (list, tuple, dict)) and any(torch.is_tensor(v) for v in items)


@contextmanager
def _on_meta(model: nn.Module) -> Iterator[dict[int, Any]]:
    """Every parameter and buffer of ``model`` replaced in place by a meta tensor of the
    same shape, dtype and ``requires_grad`` (tied ones stay tied), restored after.
    Yields ``id(meta tensor) -> real tensor``."""
    real_of: dict[int, Any] = {}
    meta_of: dict[int, Any] = {}
    swapped: list[tuple[dict, str, Any]] = []
    try:
        for module in model.modules():
            for store, is_param in ((module._parameters, True), (module._buffers, False)):
                for name, t in list(store.items()):
                    if t is None:
                        continue
                    meta = meta_of.get(id(t))
                    if meta is None:
                        meta = t.detach().to("meta")
                        if is_param:
                            meta = nn.Parameter(meta, requires_grad=t.requires_grad)
                        meta_of[id(t)] = meta
                        real_of[id(meta)] = t
                    swapped.append((store, name, t))
                    store[name] = meta
        yield real_of
    finally:
        for store, name, t in reversed(swapped):
            store[name] = t


def _trace_on_meta(model: nn.Module, inputs: tuple) -> tuple[Any, TraceFacts]:
    """:func:`_trace` with the model and inputs on the meta device, every reference to a
    meta parameter in the dependency graph pointed back at the real one after.

    Raises:
        RuntimeError: the model cannot be traced this way (see :func:`trace`); the model
            is as it was.
    """

    def meta(x: Any) -> Any:
        if torch.is_tensor(x):
            return x.detach().to("meta")
        if isinstance(x, (list, tuple)):
            return type(x)(meta(v) for v in x)
        if isinstance(x, dict):
            return {k: meta(v) for k, v in x.items()}
        return x

    before = _attributes(model)
    modules = {id(m): m for m in model.modules()}
    with _on_meta(model) as real_of:
        try:
            dg, facts = _trace(model, meta(inputs))
        finally:
            # Undo any tensor the pass left on the model (a cache of anchors, a mask):
            # it would be a meta tensor.
            changed = [
                key
                for key, value in _attributes(model).items()
                if _holds_tensor(value) and (key not in before or before[key] is not value)
            ]
            for key in changed:
                if key in before:
                    setattr(modules[key[0]], key[1], before[key])
                else:
                    delattr(modules[key[0]], key[1])
    if changed:
        raise RuntimeError("the forward pass keeps tensors on the model")
    _point_at_real(dg, real_of)
    # The LayerNorm axis test compares numbers: run each norm again on a random input
    # of the shape it saw, on its real parameters.
    with torch.no_grad(), norm_masks_suspended(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module, (x, _) in list(facts.norm_io.items()):
            p = next(module.parameters(), None)
            device = p.device if p is not None else torch.device("cpu")
            gen = torch.Generator(device="cpu").manual_seed(0)
            xr = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(device)
            facts.norm_io[module] = (xr, module(xr))
    return dg, facts


def _point_at_real(dg: Any, real_of: dict[int, Any]) -> None:
    """Replace the meta parameters a dependency graph keeps (Torch-Pruning's nodes of
    parameters outside a module, its name tables) by the real ones."""

    def real(x: Any) -> Any:
        return real_of.get(id(x), x)

    for key in [k for k in dg.module2node if id(k) in real_of]:
        node = dg.module2node.pop(key)
        node.module = real(node.module)
        dg.module2node[node.module] = node
    dg._param_to_name = {real(p): n for p, n in dg._param_to_name.items()}
    dg._module2name = {real(m): n for m, n in dg._module2name.items()}
    dg.unwrapped_parameters = [
        type(u)(parameters=real(u.parameters), pruning_dim=u.pruning_dim)
        for u in dg.unwrapped_parameters
    ]
    leftover = [
        n for n in dg.module2node.values() if torch.is_tensor(n.module) and n.module.is_meta
    ]
    if leftover:
        raise RuntimeError(f"a meta tensor is left in the graph: {leftover[0]}")


def _trace(model: nn.Module, inputs: tuple) -> tuple[Any, TraceFacts]:
    """The traced forward pass of :func:`trace`, on the device of ``model``."""
    import torch_pruning as tp

    from .pruning_group import available, pruning_group

    facts = TraceFacts()
    # Torch-Pruning's own group expansion is quadratic in the group's size and
    # recomputes every index map on each call; ours is linear and recomputes them only
    # when removal may have made them stale (see .pruning_group).
    fast_groups = available()

    class _Tracer(tp.DependencyGraph):
        #: True while the graph's shapes are those of the trace: the index maps that
        #: build_dependency computed are current.
        mapping_current = False

        def get_pruning_group(self, module: Any, pruning_fn: Any, idxs: Any) -> Any:
            if fast_groups:
                if not self.mapping_current:
                    tp.dependency.index_mapping.update_index_mapping(self)
                return pruning_group(self, module, pruning_fn, idxs)
            if not self.mapping_current:
                return super().get_pruning_group(module, pruning_fn, idxs)
            # The library's expansion recomputes every index map of the graph first:
            # O(nodes) per group, and the recomputed maps can differ from the build's
            # (the CSP model of the tests); while nothing is pruned, the build's hold.
            with _maps_kept(self):
                return super().get_pruning_group(module, pruning_fn, idxs)

        def _build_dependency(self, module2node: dict) -> None:
            super()._build_dependency(module2node)
            self.map_indices(module2node)

        def map_indices(self, module2node: dict) -> None:
            # Every index map, each on its own (Torch-Pruning's own pass, skipped after
            # this, stops at the first it cannot compute: a channels-last concat in
            # Swin). One that fails is handed over as an identity and frozen by the
            # caller. Split sizes come from the autograd record first.
            tp.dependency.shape_infer.init_shape_information(self)
            facts.bad_splits = repair_splits(self)
            mapping = tp.dependency.index_mapping
            updates = {
                tp.ops.OPTYPE.CONCAT: mapping.update_concat_index_mapping,
                tp.ops.OPTYPE.SPLIT: mapping.update_split_index_mapping,
                tp.ops.OPTYPE.RESHAPE: mapping.update_reshape_index_mapping,
                tp.ops.OPTYPE.UNBIND: mapping.update_unbind_index_mapping,
                tp.ops.OPTYPE.EXPAND: mapping.update_expand_index_mapping,
                tp.ops.OPTYPE.SLICE: mapping.update_slice_index_mapping,
            }
            for module, node in module2node.items():
                update = updates.get(node.type)
                if update is None:
                    continue
                try:
                    update(self, node)
                except Exception as exc:
                    op = type(module).__name__.strip("_").replace("Op", "").lower()
                    node.type = tp.ops.OPTYPE.ELEMENTWISE
                    facts.unmapped[module] = (
                        f"Torch-Pruning cannot map channels through a {op} "
                        f"({type(exc).__name__}: {str(exc)[:80]})"
                    )
            self.mapping_current = True

        def _trace(self, *args: Any, **kwargs: Any) -> dict:
            module2node = super()._trace(*args, **kwargs)
            for module, node in module2node.items():
                if node.type != tp.ops.OPTYPE.RESHAPE or node.grad_fn in facts.layer_internal:
                    continue
                fn = node.grad_fn
                shape = getattr(fn, "_saved_self_sym_sizes", None) or getattr(
                    fn, "_saved_self_sizes", None
                )
                problem = reshape_problem(
                    tuple(int(s) for s in shape) if shape is not None else None,
                    facts.out_shape.get(fn),
                )
                if problem:
                    # An identity index map instead of Torch-Pruning's flatten guess.
                    node.type = tp.ops.OPTYPE.ELEMENTWISE
                    facts.unmapped[module] = f"{problem} (a channel shuffle?)"
            return module2node

    def forward(m: nn.Module, xs: tuple) -> Any:
        handles = _internal_hooks(m, facts) + _norm_hooks(m, facts)
        try:
            with recording_layers(m) as found, _ShapeRecorder(facts):
                out = m(*xs)
        finally:
            for h in handles:
                h.remove()
        facts.layers = dict(found)
        return out

    with warnings.catch_warnings(), torch.enable_grad(), norm_masks_suspended(), one_thread():
        warnings.simplefilter("ignore")
        dg = _Tracer()
        with _maps_kept(dg) as swap:  # _Tracer._build_dependency computes them
            dg.build_dependency(model, example_inputs=inputs, forward_fn=forward, verbose=False)
        if not swap.skipped:
            # A Torch-Pruning whose build ran its own pass some other way (or none): ours
            # again, over whatever it left.
            dg.map_indices(dg.module2node)
    return dg, facts


def repair_splits(dg: Any) -> set[int]:
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
        module.offsets = [0, *itertools.accumulate(sizes)]
    return bad
