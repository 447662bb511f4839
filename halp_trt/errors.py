"""Errors a user can cause; the CLI prints them as one line (exit code 2)."""

from lut_builder.errors import ShapeError, SpecError, UserError


class PruningError(UserError):
    """A pruning request that cannot be met (infeasible budget, unsupported model)."""


__all__ = ["PruningError", "ShapeError", "SpecError", "UserError"]
