"""Re-apply a saved plan to a fresh copy of the model.

A pruning run ends with ``plan.json``: which channels every group keeps. Train on one
machine, ship from another: build the same architecture there (the dense weights, or
the fine-tuned ones loaded into the dense shapes' masked model), then::

    slim = halp_trt.apply_plan(model, "plan.json", example_inputs)

The channel graph is traced again on ``model``; the plan must describe the same groups
(sizes) and its per-layer widths must come out exactly, or nothing is changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..errors import PruningError
from ..graph import ChannelGraph
from ..solver.plan import Plan, PlanError
from .plan_file import PrunePlan


def load_plan(path: str | os.PathLike) -> Plan:
    """A plan file: a pruning run's ``plan.json`` (a :class:`PrunePlan`) or a solver plan.

    Raises:
        PlanError: the file is missing, malformed or inconsistent (a run's plan whose
            ``pruning`` facts are invalid is not taken for a solver plan), or ``path``
            is not a path.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise PlanError(f"a plan file's path must be a str or os.PathLike, not {type(path).__name__}")  # fmt: skip
    try:
        return PrunePlan.load(path)
    except PlanError:
        plan = Plan.load(path)  # not a plan at all: the solver plan's error says why
        if "pruning" in json.loads(Path(path).read_text()):
            raise
        return plan


def apply_plan(
    model: nn.Module, plan: Plan | str | os.PathLike, example_inputs: Any, *, check: bool = True
) -> nn.Module:
    """Remove the channels a plan drops from ``model``, in place, and return it.

    Args:
        model: the unpruned architecture the plan was made for.
        plan: a :class:`~halp_trt.solver.Plan` (or :class:`PrunePlan`), or the path of
            its JSON file.
        example_inputs: an input (tensor or tuple) the model takes; any batch size.
        check: first compare the channel-removed model with the masked one on random
            inputs (on copies; ``model`` is only changed once the check passed).

    Returns:
        ``model``, slimmed.

    Raises:
        PlanError: an unreadable or malformed plan file, or a ``plan`` that is neither a
            plan nor a path.
        PruningError: ``model`` is not a module; the plan is for another architecture
            (its groups or widths do not match this model's), or the removed model
            differs from the masked one.
    """
    if not isinstance(model, nn.Module):
        raise PruningError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if not isinstance(plan, Plan):
        plan = load_plan(plan)
    graph = ChannelGraph(model, example_inputs)
    for gid, size in sorted(plan.sizes.items()):
        if gid >= len(graph.groups) or graph.groups[gid].size != size:
            here = graph.groups[gid].size if gid < len(graph.groups) else "no"
            raise PruningError(
                f"the plan is for another model: its channel group {gid} has {size} channels, "
                f"this model's has {here} (groups here: {len(graph.groups)})"
            )
    widths = graph.widths({gid: len(kept) for gid, kept in plan.keep.items()})
    differ = [
        f"{name} {widths.get(name)} here, {tuple(w)} in the plan"
        for name, w in sorted(plan.widths.items())
        if widths.get(name) != tuple(w)
    ]
    if differ or set(widths) != set(plan.widths):
        detail = "; ".join(differ[:3]) or "its layers are not this model's layers"
        raise PruningError(f"the plan is for another model: {detail}")
    if check:
        result = graph.check(plan.keep)
        if not result.passed:
            raise PruningError(
                f"the channel-removed model differs from the masked one (max relative error "
                f"{result.max_rel_err:.2e} > {result.rtol:.0e}); not removing"
            )
    return graph.remove(plan.keep)
