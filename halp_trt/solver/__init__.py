"""Latency-constrained channel selection.

- :func:`solve_mckp`: an exact multiple-choice knapsack (NumPy DP over a conservatively
  discretised budget) for any values and real costs.
- :func:`solve_budget`: HALP's augmented knapsack on a :class:`~halp_trt.graph.ChannelGraph`
  and a latency table, with the ``one-sided`` and ``joint`` latency cost models.
- :class:`Plan`: its result, validated and JSON round-trippable.
"""

from .knapsack import DEFAULT_COST_MODEL, solve_budget
from .mckp import InfeasibleBudgetError, Solution, solve_mckp
from .plan import COST_MODELS, Plan, PlanError

__all__ = [
    "COST_MODELS",
    "DEFAULT_COST_MODEL",
    "InfeasibleBudgetError",
    "Plan",
    "PlanError",
    "Solution",
    "solve_budget",
    "solve_mckp",
]
