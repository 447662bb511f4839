"""Subcommands of `lut-builder`."""
