"""Shared fixtures. CLI tests run the real commands in a process of their own, as a user
would (forked from a server that has imported torch once: ``tests/warm_cli.py``)."""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The torchvision wheel cannot load its compiled ops against the CPU build of torch the
# development machines run; its model definitions import once this module is stubbed.
# Tests only (the package never does it), and only there: Lightning imports torchvision
# whenever it is installed, and would fail on it.
_STUB_TORCHVISION = importlib.util.find_spec("torchvision") is not None
if _STUB_TORCHVISION:
    import torch

    _STUB_TORCHVISION = torch.version.cuda is None
if _STUB_TORCHVISION:
    stub = types.ModuleType("torchvision._meta_registrations")
    sys.modules.setdefault("torchvision._meta_registrations", stub)


def subprocess_env(directory: Path) -> dict[str, str]:
    """The environment for a test's subprocess, with the same torchvision stub (through
    a ``sitecustomize`` in ``directory``) where this process needed it."""
    env = dict(os.environ)
    if _STUB_TORCHVISION:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "sitecustomize.py").write_text(
            "import sys, types\n"
            "sys.modules.setdefault('torchvision._meta_registrations', "
            "types.ModuleType('torchvision._meta_registrations'))\n"
        )
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(directory), env.get("PYTHONPATH")]))
    return env


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def cli_runner():
    """Runs ``python -m MODULE ARGS`` in a fresh process per command, forked from a
    server that has imported torch once (``tests/warm_cli.py``)."""
    from .warm_cli import WarmRunner  # here: the bench tests load this file as a model spec

    runner = WarmRunner()
    yield runner
    runner.close()


def _cli(runner, module: str, cwd: Path):
    def run(*args, timeout: float = 300) -> CliResult:
        proc = runner.run(module, list(args), cwd, timeout)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture
def halp_cli(tmp_path, cli_runner):
    """Run `halp-trt ARGS...` in tmp_path; returns a CliResult."""
    return _cli(cli_runner, "halp_trt", tmp_path)


@pytest.fixture
def lut_cli(tmp_path, cli_runner):
    """Run `lut-builder ARGS...` in tmp_path; returns a CliResult."""
    return _cli(cli_runner, "lut_builder", tmp_path)


@pytest.fixture
def short_feedback(monkeypatch):
    """The benches' measured-latency feedback (``halp_trt.prune.MeasuredLatency``, which
    they import when they run) takes one batch of 5 rounds, not up to 4 of 30: for tests
    of a bench's bookkeeping, seconds instead of a minute on a tiny model. The feedback's
    precision has its own tests (tests/halp_trt/test_prune.py)."""
    from halp_trt.prune import MeasuredLatency

    class ShortFeedback(MeasuredLatency):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{"rounds": 5, "max_batches": 1, **kwargs})

    monkeypatch.setattr("halp_trt.prune.MeasuredLatency", ShortFeedback)


def needs_cpus(count: int) -> pytest.MarkDecorator:
    """Skip where this process may use fewer than ``count`` CPUs: every thread count is
    bounded by them (``lut_builder.parallelism.usable_cpus``), so a test that times or
    builds at ``count`` threads is refused there, as a user would be."""
    from lut_builder.parallelism import usable_cpus

    return pytest.mark.skipif(
        usable_cpus() < count, reason=f"needs {count} usable CPUs, this process has fewer"
    )


def assert_outputs_declared(run_dir: Path) -> None:
    """Every output a finished ``halp-trt run`` records is one of its stage's
    ``pipeline.STAGE_WRITES``: what a failed stage may delete covers what it writes."""
    import json

    from halp_trt.pipeline import STAGE_WRITES

    for stage, rec in json.loads((run_dir / "run.json").read_text())["stages"].items():
        for rel in rec["outputs"]:
            assert rel.split("/")[0] in STAGE_WRITES[stage], (stage, rel)


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


def tiny_convnet(num_classes: int):
    """Two 16-channel convs (the first with BatchNorm), pooling and a linear head, seeded:
    small enough for the INT8 tests to quantize and time in seconds."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    ).eval()  # fmt: skip


def two_conv_bn_net(num_classes: int = 10):
    """A 32- and a 64-channel conv, each with BatchNorm, pooling and a linear head: a model
    spec for the bench tests (``tests/conftest.py:two_conv_bn_net``), a table of a few
    points, seconds to train."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )  # fmt: skip


#: :func:`two_conv_bn_net` as a model spec.
TWO_CONV_BN = f"{__file__}:two_conv_bn_net"


def load_bench(name: str) -> types.ModuleType:
    """Import ``bench/NAME.py`` (the bench scripts are not a package) as ``bench_NAME``."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / f"bench/{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
