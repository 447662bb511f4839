"""halp-trt: latency-aware structured pruning for deployment (HALP, SP-LAMP).

The library is the product; the ``halp-trt`` command is a thin shell over it::

    import halp_trt as ht

    config = ht.PruneConfig(target="0.5x", importance="taylor-weights", steps=30)
    pruner = ht.Pruner.from_config(model, example_input, table, config,
                                   total_iterations=len(loader) * epochs)
    ...                                  # accumulate() after backward, step() after
    slim, plan = pruner.finalize("plan.json")   # optimizer.step() (see Pruner)

    slim = ht.apply_plan(fresh_model, "plan.json", example_input)   # elsewhere
    report = ht.run(ht.RunConfig(model=..., data=..., input_shape=(16, 1, 16, 16),
                                 out="runs/x", prune=ht.PruneConfig(target="0.5x")))

Latency tables come from :func:`lut_builder.build_table`. Importing this package needs
neither a GPU nor TensorRT, and loads torch only when a name below is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

#: Public name -> the module that defines it (imported on first use).
_EXPORTS = {
    "ChannelGraph": "halp_trt.graph",
    "ConfigError": "halp_trt.config",
    "Importance": "halp_trt.importance",
    "PruneConfig": "halp_trt.config",
    "PrunePlan": "halp_trt.prune",
    "PruneResult": "halp_trt.train.prune_job",
    "Pruner": "halp_trt.prune",
    "PruningError": "halp_trt.errors",
    "RunConfig": "halp_trt.config",
    "TrainConfig": "halp_trt.config",
    "UserError": "halp_trt.errors",
    "apply_plan": "halp_trt.prune",
    "fit_schedule": "halp_trt.prune",
    "list_importances": "halp_trt.importance",
    "load_plan": "halp_trt.prune",
    "prune_classifier": "halp_trt.train.prune_job",
    "register_importance": "halp_trt.importance",
    "run": "halp_trt.pipeline",
    "save_prune_result": "halp_trt.train.prune_job",
}

__all__ = [
    "__version__",
    "ChannelGraph",
    "ConfigError",
    "Importance",
    "PruneConfig",
    "PrunePlan",
    "PruneResult",
    "Pruner",
    "PruningError",
    "RunConfig",
    "TrainConfig",
    "UserError",
    "apply_plan",
    "fit_schedule",
    "list_importances",
    "load_plan",
    "prune_classifier",
    "register_importance",
    "run",
    "save_prune_result",
]

if TYPE_CHECKING:
    from .config import ConfigError, PruneConfig, RunConfig, TrainConfig
    from .errors import PruningError, UserError
    from .graph import ChannelGraph
    from .importance import Importance, list_importances, register_importance
    from .pipeline import run
    from .prune import PrunePlan, Pruner, apply_plan, fit_schedule, load_plan
    from .train.prune_job import PruneResult, prune_classifier, save_prune_result


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'halp_trt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
