"""Errors a user can cause. The CLIs print them as one line and exit with `exit_code`."""

from __future__ import annotations

from typing import Any


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


class OutputError(UserError, OSError):
    """An output file that cannot be written or replaced (an immutable file, a full disk):
    one line in the command-line tools, an ``OSError`` (with its ``errno``) to a caller."""


class ExportError(UserError):
    """A model that cannot be exported to a valid ONNX file."""


class IncompleteTableError(UserError):
    """A latency table opened for lookups while points of its plan are still missing."""


class FingerprintMismatchError(UserError):
    """A latency table measured on another target than the one asked for."""


#: Set when Ctrl-C reached a :func:`run_cli` command, even if a library on the way
#: caught the KeyboardInterrupt (a third-party exporter turning it into its own error).
_INTERRUPTED = False


def interrupted() -> bool:
    """Whether Ctrl-C was pressed during the running :func:`run_cli` command."""
    return _INTERRUPTED


def _on_sigint(signum: int, frame: object) -> None:
    global _INTERRUPTED
    _INTERRUPTED = True
    raise KeyboardInterrupt


def run_cli(func, *args, prog: str) -> int:
    """Run a CLI entry point; user errors become one line on stderr and their exit code.

    Also turns Ctrl-C into exit code 130 without a traceback, wherever it lands: the
    interrupt is recorded when it arrives, so a library that catches the
    KeyboardInterrupt on the way (and goes on, or raises its own error) still ends the
    command with 130. Any other exception is a bug and propagates with its traceback.

    A ``UserWarning`` raised in halp-trt's or lut-builder's own code is printed as one
    line, ``PROG: warning: MESSAGE``, not with Python's file, line and source.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings(prog, warnings.showwarning)
        return _run_cli(func, args, prog)


#: The packages whose UserWarnings a CLI prints as one line of its own.
_OWN_PACKAGES = ("halp_trt", "lut_builder")


def _one_line_warnings(prog: str, default: Any) -> Any:
    """A ``warnings.showwarning`` printing the own packages' UserWarnings as one line and
    handing every other warning to ``default``."""
    import os
    import sys

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        parts = os.path.normpath(str(filename)).split(os.sep)
        if issubclass(category, UserWarning) and any(p in parts for p in _OWN_PACKAGES):
            print(f"{prog}: warning: {message}", file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def _run_cli(func: Any, args: tuple, prog: str) -> int:
    import signal
    import sys

    global _INTERRUPTED
    _INTERRUPTED = False
    try:
        previous = signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:  # not the main thread: Python's own handling
        previous = None
    try:
        code = int(func(*args) or 0)
        if not _INTERRUPTED:
            return code
    except UserError as exc:
        if not _INTERRUPTED:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return exc.exit_code
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    print(f"{prog}: interrupted", file=sys.stderr)
    return 130
