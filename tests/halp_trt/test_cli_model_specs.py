"""Factory keywords and --weights through the real commands."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from ..conftest import CliResult, assert_user_error, subprocess_env

SPEC = "halp_trt.models:resnet20,num_classes=4"
SHAPE = ("--input-shape", "1,3,32,32")


@pytest.fixture
def weights(tmp_path):
    from halp_trt.models import resnet20

    torch.save({"state_dict": resnet20(num_classes=4).state_dict()}, tmp_path / "ckpt.pt")
    return "ckpt.pt"


def test_inspect_with_keywords_and_weights(halp_cli, weights):
    r = halp_cli("inspect", "--model", SPEC, *SHAPE, "--weights", weights, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["params"] == 272474 - (64 * 10 + 10) + (64 * 4 + 4)


def test_file_factory_keywords(halp_cli, tmp_path):
    (tmp_path / "net.py").write_text(
        "import torch.nn as nn\n\ndef make(width=4):\n"
        "    return nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.Conv2d(width, 2, 1))\n"
    )
    r = halp_cli("inspect", "--model", "net.py:make,width=8", *SHAPE, "--json")
    assert r.returncode == 0, r.stderr
    sizes = {g["size"] for g in json.loads(r.stdout)["groups"]}
    assert 8 in sizes and 4 not in sizes, sizes


@pytest.mark.parametrize(
    "spec,fragments",
    [
        (SPEC + ",bogus=1", ("takes no keyword 'bogus'", "num_classes, in_channels")),
        (SPEC + ",7", ("keywords must read key=value",)),
        (SPEC + ",width=a b", ("keywords must read key=value",)),
        ("timm:resnet18,pretrained=True", ("pretrained=True would download weights",)),
    ],
)
def test_bad_keywords_are_one_line(halp_cli, spec, fragments):
    assert_user_error(halp_cli("inspect", "--model", spec, *SHAPE), *fragments)


def test_weights_that_do_not_fit_are_one_line(halp_cli, weights):
    r = halp_cli("inspect", "--model", "halp_trt.models:resnet20", *SHAPE, "--weights", weights)
    assert_user_error(
        r, "weights ckpt.pt do not fit halp_trt.models:resnet20", "shape of fc.weight"
    )


def test_lut_builder_build_checks_weights_before_measuring(lut_cli, weights, tmp_path):
    args = ["build", "--model", "halp_trt.models:resnet20", *SHAPE, "--backend", "analytic"]
    r = lut_cli(*args, "--weights", weights, "--out", "t.lut")
    assert_user_error(r, "do not fit")
    assert not (tmp_path / "t.lut").exists()


@pytest.mark.parametrize("command", ["inspect", "prune", "export", "run"])
def test_every_model_command_takes_weights(halp_cli, command):
    r = halp_cli(command, "--help")
    assert r.returncode == 0 and "--weights PATH" in r.stdout


def test_run_config_carries_weights():
    from halp_trt.cli import build_parser
    from halp_trt.cli.run import config

    argv = ["run", "--model", SPEC, "--weights", "w.pt", "--data", "digits", *SHAPE]
    args = build_parser().parse_args([*argv, "--target", "0.5x", "--out", "o"])
    assert config(args).weights == "w.pt"


def test_torchvision_keywords_through_inspect(tmp_path):
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    # This torch build lacks the meta kernels torchvision registers on import; the
    # models do not need them. The stub lives only in this subprocess.
    env = subprocess_env(tmp_path / "shim")
    argv = ["inspect", "--model", "torchvision:mobilenet_v2,num_classes=10", *SHAPE, "--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "halp_trt", *argv],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    r = CliResult(proc.returncode, proc.stdout, proc.stderr)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["model"] == "torchvision:mobilenet_v2,num_classes=10"
    assert data["params"] == 2236682  # mobilenet_v2 with a 10-class head
