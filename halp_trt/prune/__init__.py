"""HALP's pruning loop: importance between steps, knapsack on a latency schedule, masks
while training, physical removal at the end.

:class:`Pruner` plugs into a user's training loop; ``halp-trt prune`` drives it with the
built-in classification trainer (:mod:`halp_trt.train`).
"""

from .apply import apply_plan, load_plan
from .feedback import MeasuredLatency
from .masks import MaskSet
from .plan_file import PrunePlan, StepRecord
from .pruner import Pruner, network_latency, unwrap
from .schedule import SCHEDULES, ScheduleFit, fit_schedule, parse_target, schedule_targets

__all__ = [
    "MeasuredLatency",
    "SCHEDULES",
    "MaskSet",
    "PrunePlan",
    "Pruner",
    "ScheduleFit",
    "StepRecord",
    "apply_plan",
    "fit_schedule",
    "load_plan",
    "network_latency",
    "parse_target",
    "schedule_targets",
    "unwrap",
]
