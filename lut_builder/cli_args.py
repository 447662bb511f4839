"""What both command-line tools share about arguments: a parser whose errors are one
line, and argument types that name the flag when a number is out of range."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr, exit code 2, as every
    other user error of the tools (argparse's default prints the usage block first)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _number(kind: Callable[[str], float], least: float, strict: bool, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}, not {text!r}") from None
        if value != value or (value <= least if strict else value < least):  # NaN too
            raise argparse.ArgumentTypeError(f"{what}, not {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


#: ``type=`` for counts that must be >= 1 (threads, rounds, batch sizes, steps).
positive_int = _number(int, 1, False, "must be an integer >= 1")
#: ``type=`` for counts that may be 0 (warm-up rounds, extra epochs).
nonnegative_int = _number(int, 0, False, "must be an integer >= 0")
#: ``type=`` for durations and sizes that must be > 0.
positive_float = _number(float, 0.0, True, "must be a number > 0")
