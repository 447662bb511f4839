"""Latency-constrained channel selection: an exact multiple-choice knapsack and HALP's
augmented knapsack on top of it."""

from .mckp import InfeasibleBudgetError, Solution, solve_mckp

__all__ = ["InfeasibleBudgetError", "Solution", "solve_mckp"]
