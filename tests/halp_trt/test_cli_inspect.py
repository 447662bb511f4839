"""`halp-trt inspect` and model specs through the real command."""

from __future__ import annotations

import json

import pytest

from ..conftest import assert_user_error


def test_inspect_json_and_check(halp_cli):
    r = halp_cli(
        "inspect",
        "--model",
        "halp_trt.models:resnet20",
        "--input-shape",
        "1,3,32,32",
        "--json",
        "--check",
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert {"groups", "frozen", "params", "macs", "check"} <= set(data)
    g = data["groups"][0]
    assert {"id", "size", "prunable", "reason", "producers", "consumers"} <= set(g)
    assert data["params"] == 272474
    assert data["check"]["passed"] is True and data["check"]["max_rel_err"] < 1e-4
    assert 0.25 <= data["check"]["removed_fraction"] <= 0.65
    assert any(f["reason"] == "model output (fc)" for f in data["frozen"])
    assert any(f["reason"] == "model input" for f in data["frozen"])


def test_inspect_table(halp_cli):
    r = halp_cli("inspect", "--model", "halp_trt.models:resnet20", "--input-shape", "1,3,32,32")
    assert r.returncode == 0, r.stderr
    assert "14 groups, 12 prunable, 2 frozen" in r.stdout


def test_inspect_saved_module_and_file_factory(halp_cli, tmp_path):
    (tmp_path / "mine.py").write_text(
        "import torch.nn as nn\n"
        "def net():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),\n"
        "                         nn.Conv2d(8, 4, 1))\n"
    )
    r = halp_cli(
        "inspect", "--model", "mine.py:net", "--input-shape", "1,3,8,8", "--json", "--check"
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert sum(g["prunable"] for g in data["groups"]) == 1
    assert data["check"]["passed"]
    import torch

    from halp_trt.models import resnet20

    torch.save(resnet20(num_classes=3, in_channels=1), tmp_path / "saved.pt")
    r = halp_cli("inspect", "--model", "saved.pt", "--input-shape", "1,1,32,32", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["groups"][0]["size"] == 3


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "raises.py").write_text("def f():\n    raise RuntimeError('boom')\n")
    (tmp_path / "notmodule.py").write_text("def f():\n    return 3\n")
    (tmp_path / "broken.py").write_text("import nothing_here_at_all\n")
    (tmp_path / "garbage.pt").write_bytes(b"not a pickle")
    return tmp_path


@pytest.mark.parametrize(
    "spec,fragment",
    [
        ("halp_trt.models:nope", "has no model 'nope'"),
        ("no_such_package_xyz:net", "cannot import module"),
        ("missing.py:net", "does not exist"),
        ("missing.pt", "does not exist"),
        ("raises.py:f", "factory raised RuntimeError: boom"),
        ("notmodule.py:f", "not a torch.nn.Module"),
        ("broken.py:f", "failed to import"),
        ("garbage.pt", "not a module saved with torch.save"),
        ("justtext", "is not one of"),
        ("halp_trt.models:", "names no model"),
        ("timm:definitely_not_a_model", "timm"),
    ],
)
def test_bad_model_specs(halp_cli, bad_files, spec, fragment):
    r = halp_cli("inspect", "--model", spec, "--input-shape", "1,3,32,32")
    assert_user_error(r, fragment)


def test_torchvision_spec_without_torchvision(halp_cli):
    try:
        import torchvision  # noqa: F401

        pytest.skip("torchvision is importable here")
    except Exception:
        pass
    r = halp_cli("inspect", "--model", "torchvision:resnet18", "--input-shape", "1,3,224,224")
    assert_user_error(r, "torchvision is not usable here")


@pytest.mark.parametrize(
    "shape,fragment",
    [
        ("1,3,a,32", "not a list of integers"),
        ("1,3,0,32", "positive"),
        ("1,5,32,32", "does not accept an input of shape (1, 5, 32, 32)"),
    ],
)
def test_bad_input_shapes(halp_cli, shape, fragment):
    r = halp_cli("inspect", "--model", "halp_trt.models:resnet20", "--input-shape", shape)
    assert_user_error(r, fragment)


def test_inspect_grouped_channels_last_and_shuffled_models(halp_cli, tmp_path):
    # Grouped convolutions pruned in whole groups (unit in the JSON), a ConvNeXt-style
    # block, and a channel shuffle that is frozen with its reason: no traceback, and the
    # removal check passes.
    from ..conftest import ROOT

    (tmp_path / "nets.py").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.halp_trt.zoo import build\n"
        "def regnet():\n    return build('regnet_y')[0]\n"
        "def convnext():\n    return build('convnext')[0]\n"
        "def shuffle():\n    return build('shufflenet')[0]\n"
    )
    units = {}
    for net, shape in (
        ("regnet", "1,3,16,16"),
        ("convnext", "1,3,32,32"),
        ("shuffle", "1,3,16,16"),
    ):
        r = halp_cli(
            "inspect", "--model", f"nets.py:{net}", "--input-shape", shape, "--json", "--check"
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        assert data["check"]["passed"], data["check"]
        units[net] = {g["unit"] for g in data["groups"] if g["prunable"]}
        reasons = " ".join(f["reason"] for f in data["frozen"])
        if net == "shuffle":
            assert "splits or merges the channel dimension" in reasons
        else:  # only the model's input and output are frozen
            assert {f["reason"] for f in data["frozen"]} == {"model input", "model output (fc)"}
    assert units["regnet"] == {1, 8} and units["convnext"] == {1}
