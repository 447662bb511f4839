"""The `lut-builder` command. Each subcommand lives in a module of
``lut_builder.commands`` with ``add_parser(subparsers)`` and ``run(args) -> int``;
heavy imports happen inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib

from .cli_args import OneLineParser
from .version import __version__

#: Subcommand modules under lut_builder.commands, in the order `--help` lists them.
COMMANDS: tuple[str, ...] = ("build", "merge", "show", "plot")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="lut-builder",
        description="Measure per-layer latency lookup tables on TensorRT, PyTorch or ONNX Runtime.",
    )
    parser.add_argument("--version", action="version", version=f"lut-builder {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"lut_builder.commands.{name}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import run_cli

    args = build_parser().parse_args(argv)
    return run_cli(args._run, args, prog="lut-builder")


if __name__ == "__main__":
    raise SystemExit(main())
