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
    if threads > 1:
        # ONNX Runtime's pool threads spin after each op, waiting for the next, by
        # default. Timing alternates between sessions (a layer and the reference, the
        # original and the pruned model), and the idle session's spinning threads then
        # take the cores from the one being timed: on 2 vCPUs a dense model timed at 2
        # threads against a pruned one ran 8.6-8.7 ms (4.3-4.4 alone) and the ratio's
        # interquartile range was 0.19-0.85; without spinning 4.8 ms and 0.460-0.477.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts
