"""Torch-Pruning's group expansion (``DependencyGraph.get_pruning_group``) in linear time.

Torch-Pruning 1.6.1 expands a group by walking the dependency graph from the root and,
for every dependency it reaches, scans the whole group so far twice: once to know
whether the same pruning op with the same indices is already there
(``Group.has_pruning_op``) and once more to merge the indices of ops on the same layer
(``Group.add_and_merge``), comparing index lists element by element. On a Swin
Transformer, whose groups reach thousands of dependencies, that is quadratic: under
cProfile, 38 of swin_v2_s's 46 s graph build went into ``has_pruning_op`` and 6 more
into ``add_and_merge``. It also recomputes every index map of the graph on each call
(O(nodes) per group; quadratic on DenseNet's concatenations).

:func:`pruning_group` is the same walk and the same merge, each lookup a dictionary on
``(target node, handler)`` and the index list made a tuple: the same group, item for
item, index for index, in the same order. It does not recompute the index maps: the
caller does when they may be stale (after a removal changed the shapes).

It follows Torch-Pruning's internals (``Dependency.index_mapping``, ``_HybridIndex``,
``GroupItem``), so it is used only with the versions whose ``get_pruning_group`` it was
checked against (:data:`CHECKED_VERSIONS`); with any other version, :func:`available` is
false and the caller uses the library's own (slower, same result).
"""

from __future__ import annotations

from importlib import metadata
from numbers import Number
from typing import Any

import torch.nn as nn

#: Torch-Pruning releases whose ``DependencyGraph.get_pruning_group`` this module
#: reproduces (tests/halp_trt/test_graph_speed.py compares the two group by group).
CHECKED_VERSIONS = frozenset({"1.6.1"})


def available() -> bool:
    """Whether the installed Torch-Pruning is one :func:`pruning_group` reproduces."""
    try:
        return metadata.version("torch-pruning") in CHECKED_VERSIONS
    except metadata.PackageNotFoundError:
        return False


def pruning_group(dg: Any, module: nn.Module, pruning_fn: Any, idxs: Any) -> Any:
    """``dg.get_pruning_group(module, pruning_fn, idxs)`` of Torch-Pruning 1.6.1, without
    recomputing the index maps (the caller keeps them current).

    Returns:
        A Torch-Pruning ``Group``, equal item by item to the library's.

    Raises:
        ValueError: ``module`` is not in the graph (as the library does).
    """
    from torch_pruning import _helpers, ops
    from torch_pruning.dependency.dependency import Dependency
    from torch_pruning.dependency.group import Group
    from torch_pruning.pruner import function

    if module not in dg.module2node:
        raise ValueError(f"Module {module} is not in the dependency graph.")
    if (
        isinstance(module, ops.TORCH_CONV)
        and module.groups == module.out_channels
        and module.out_channels > 1
    ):
        pruning_fn = function.prune_depthwise_conv_out_channels
    if isinstance(idxs, Number):
        idxs = [idxs]
    hybrid = _helpers._HybridIndex
    idxs = [hybrid(idx=i, root_idx=i) for i in idxs]

    group = Group()
    root = dg.module2node[module]
    group.add_dep(dep=Dependency(pruning_fn, pruning_fn, source=root, target=root), idxs=idxs)
    # (target node, handler) -> the index lists (as tuples) the group already prunes
    # there: Group.has_pruning_op as one lookup.
    done: dict[tuple[Any, Any], set[tuple]] = {(root, pruning_fn): {tuple(idxs)}}
    visited: set[Any] = set()
    stack = [(group[0].dep, idxs)]
    while stack:
        dep, idxs = stack.pop()
        node, fn = dep.target, dep.handler
        visited.add(node)
        for new_dep in node.dependencies:
            if not new_dep.is_triggered_by(fn):
                continue
            new_idxs = idxs
            for mapping in new_dep.index_mapping:
                if mapping is not None:
                    new_idxs = mapping(new_idxs)
            if len(new_idxs) == 0:
                continue
            key = (new_dep.target, new_dep.handler)
            as_tuple = tuple(new_idxs)
            if new_dep.target in visited and as_tuple in done.get(key, ()):
                continue
            group.add_dep(new_dep, new_idxs)
            done.setdefault(key, set()).add(as_tuple)
            stack.append((new_dep, new_idxs))

    # Group.add_and_merge: one item per (target, handler), at its first occurrence, with
    # the first dependency object; several index lists are concatenated and deduplicated
    # on the plain index (first occurrence kept), a single one is kept as it is.
    slot: dict[tuple[Any, Any], int] = {}
    deps: list[Any] = []
    parts: list[list[list[Any]]] = []
    for dep, idxs in group.items:
        target = dep.target.module
        if isinstance(target, nn.Parameter) and any(target is p for p in dg.ignored_params):
            continue
        key = (dep.target, dep.handler)
        i = slot.get(key)
        if i is None:
            slot[key] = len(deps)
            deps.append(dep)
            parts.append([idxs])
        else:
            parts[i].append(idxs)
    merged = Group()
    for dep, lists in zip(deps, parts):
        if len(lists) == 1:
            hybrid_idxs = lists[0]
        else:
            seen: set[Any] = set()
            hybrid_idxs = []
            for part in lists:
                for index in part:
                    if index.idx not in seen:
                        hybrid_idxs.append(index)
                        seen.add(index.idx)
        item = _helpers.GroupItem(dep, _helpers.to_plain_idxs(hybrid_idxs))
        item.root_idxs = _helpers.to_root_idxs(hybrid_idxs)
        merged.items.append(item)
    merged._DG = dg
    return merged
