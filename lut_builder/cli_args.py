"""What both command-line tools share about arguments: a parser whose errors are one
line, argument types that name the flag when a number is out of range, and the input
files a command's output must not overwrite."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any, NoReturn


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
        if (isinstance(value, float) and not math.isfinite(value)) or (
            value <= least if strict else value < least
        ):  # NaN and infinity too
            raise argparse.ArgumentTypeError(f"{what}, not {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


#: ``type=`` for counts that must be >= 1 (threads, rounds, batch sizes, steps).
positive_int = _number(int, 1, False, "must be an integer >= 1")
#: ``type=`` for counts that may be 0 (warm-up rounds, extra epochs).
nonnegative_int = _number(int, 0, False, "must be an integer >= 0")
#: ``type=`` for durations and sizes that must be > 0 (and finite).
positive_float = _number(float, 0.0, True, "must be a finite number > 0")


#: The largest seed every generator the tools seed accepts (torch's are 64-bit).
MAX_SEED = 2**64 - 1


def seed_int(text: str) -> int:
    """``type=`` for ``--seed``: an integer from 0 to :data:`MAX_SEED`."""
    value = nonnegative_int(text)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {MAX_SEED}, not {text!r}")
    return value


def thread_count(text: str) -> int:
    """``type=`` for ``--threads``: an integer from 1 to the CPUs this process may use
    (:func:`lut_builder.parallelism.usable_cpus`: more threads than CPUs only
    oversubscribe them, and a huge count crashes or hangs the runtimes instead of
    failing)."""
    from .parallelism import thread_count_problem

    value = positive_int(text)
    problem = thread_count_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


#: The arguments whose value is a model spec; a spec may name a file (``file.py:NAME``,
#: a saved ``.pt``, an ONNX file or an engine).
_SPEC_FLAGS = ("model", "original", "pruned")
#: The arguments whose value is a file the command reads.
_FILE_FLAGS = ("weights", "lut", "onnx", "plan")


def input_files(args: argparse.Namespace | Any) -> dict[str, str | None]:
    """The files ``args`` (parsed arguments, or an object with the same attributes, as a
    run's config) name for reading, by flag (None where not given): the model
    specs' files, ``--weights``, ``--lut``, ``--onnx``, ``--plan`` and the file of
    ``--data npz:PATH``. What :func:`lut_builder.fileio.check_output` keeps an output
    from overwriting."""
    from .specs import spec_file

    found = {f"--{flag}": spec_file(getattr(args, flag, None)) for flag in _SPEC_FLAGS}
    found.update({f"--{flag}": getattr(args, flag, None) for flag in _FILE_FLAGS})
    kind, _, path = (getattr(args, "data", None) or "").partition(":")
    found["--data"] = path if kind == "npz" else None
    return found
