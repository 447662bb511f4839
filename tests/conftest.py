"""Shared fixtures. CLI tests run the real commands in a subprocess, as a user would."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def _run(module: str, args: list[str], cwd: Path, timeout: float) -> CliResult:
    proc = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def halp_cli(tmp_path):
    """Run `halp-trt ARGS...` in tmp_path; returns a CliResult."""

    def run(*args, timeout: float = 300) -> CliResult:
        return _run("halp_trt", list(args), tmp_path, timeout)

    return run


@pytest.fixture
def lut_cli(tmp_path):
    """Run `lut-builder ARGS...` in tmp_path; returns a CliResult."""

    def run(*args, timeout: float = 300) -> CliResult:
        return _run("lut_builder", list(args), tmp_path, timeout)

    return run


def assert_user_error(result: CliResult, *fragments: str) -> None:
    """A user error: exit code 2, no traceback, and one line on stderr saying the problem:
    the last one (a progress bar may come before it), the only one with ``error:``."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines, "nothing on stderr"
    assert "Traceback" not in result.stderr, result.stderr
    errors = [ln for ln in lines if "error:" in ln]
    assert errors == [lines[-1]], result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
