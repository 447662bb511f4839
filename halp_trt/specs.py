"""Model specs shared with lut-builder (see :mod:`lut_builder.specs`)."""

from lut_builder.specs import example_input, load_model, parse_shape

__all__ = ["example_input", "load_model", "parse_shape"]
