"""ONNX Runtime session settings shared by the per-layer measurer and the runner.

Both run on the CPU execution provider with ``threads`` intra-op threads, one inter-op
thread and sequential execution, at a named graph optimisation level: the layers are
measured the way the whole model runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...errors import UserError

#: Graph optimisation levels by name, most optimised first; ``"all"`` is what a
#: deployed session uses (layout transforms, conv + bias + activation fusion).
OPTIMIZATION_LEVELS = ("all", "extended", "basic", "disable")


def check_optimization(name: str, allowed: Sequence[str] = OPTIMIZATION_LEVELS) -> None:
    """Check an optimisation level name.

    Raises:
        UserError: ``name`` is not one of ``allowed`` (the message lists them).
    """
    if name not in allowed:
        raise UserError(f"unknown optimization level {name!r}; known: {', '.join(allowed)}")


def session_options(threads: int, optimization: str) -> Any:
    """``onnxruntime.SessionOptions`` for ``threads`` intra-op threads at a level.

    Raises:
        UserError: an unknown optimisation level.
    """
    import onnxruntime as ort

    check_optimization(optimization)
    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = levels[optimization]
    return opts
