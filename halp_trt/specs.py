"""Model specs shared with lut-builder (see :mod:`lut_builder.specs`)."""

from lut_builder.specs import (
    WEIGHTS_HELP,
    example_input,
    load_model,
    load_saved,
    load_weights,
    parse_kwargs,
    parse_shape,
)

__all__ = [
    "WEIGHTS_HELP",
    "example_input",
    "load_model",
    "load_saved",
    "load_weights",
    "parse_kwargs",
    "parse_shape",
]
