"""The `halp-trt` command. Each subcommand lives in its own module of this package with
``add_parser(subparsers)`` and ``run(args) -> int``; heavy imports happen inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

from .._version import __version__

#: Subcommand modules, in the order `--help` lists them.
COMMANDS: tuple[str, ...] = ("inspect", "prune", "export", "engine", "verify", "run", "report")


def build_parser() -> argparse.ArgumentParser:
    from lut_builder.cli_args import OneLineParser

    parser = OneLineParser(
        prog="halp-trt",
        description="Latency-aware structured pruning for TensorRT, PyTorch and ONNX Runtime.",
    )
    parser.add_argument("--version", action="version", version=f"halp-trt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def flag_errors(func: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """``func`` with configuration errors named by their flag (``--steps``), not field."""

    def call(args: argparse.Namespace) -> int:
        from lut_builder.errors import UserError

        try:
            return func(args)
        except UserError as exc:
            if hasattr(exc, "cli_message"):
                raise UserError(exc.cli_message()) from None
            raise

    return call


def main(argv: list[str] | None = None) -> int:
    from lut_builder.errors import run_cli

    args = build_parser().parse_args(argv)
    return run_cli(flag_errors(args._run), args, prog="halp-trt")


if __name__ == "__main__":
    raise SystemExit(main())
