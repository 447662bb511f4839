"""Errors a user can cause. The CLIs print them as one line and exit with `exit_code`."""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input (bad spec, missing file, mismatched table).

    The command-line tools catch it, print ``error: <message>`` and exit with
    ``exit_code``; anything else is a bug and keeps its traceback.
    """

    exit_code = 2


class SpecError(UserError):
    """A model spec that cannot be resolved to an ``nn.Module``."""


class ShapeError(UserError):
    """An input shape that is malformed or does not fit the model."""


class ExportError(UserError):
    """A model that cannot be exported to a valid ONNX file."""


class IncompleteTableError(UserError):
    """A latency table opened for lookups while points of its plan are still missing."""


class FingerprintMismatchError(UserError):
    """A latency table measured on another target than the one asked for."""


def run_cli(func, *args, prog: str) -> int:
    """Run a CLI entry point; user errors become one line on stderr and their exit code.

    Also turns Ctrl-C into exit code 130 without a traceback. Any other exception is a
    bug and propagates with its traceback.
    """
    import sys

    try:
        return int(func(*args) or 0)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
