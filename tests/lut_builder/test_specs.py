"""Model specs: factory keywords, trained weights from a state_dict file, and the one
line a user gets when either does not fit."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from lut_builder.errors import SpecError
from lut_builder.specs import load_model, load_weights, parse_kwargs, spec_file

RESNET = "halp_trt.models:resnet20"


def _one_line(info: pytest.ExceptionInfo) -> str:
    text = str(info.value)
    assert "\n" not in text, text
    return text


@pytest.fixture
def torchvision_models(monkeypatch):
    """torchvision's model definitions, importable on this CPU-only torch build."""
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    # This torch build lacks the meta kernels torchvision registers on import; the
    # models do not need them.
    stub = types.ModuleType("torchvision._meta_registrations")
    monkeypatch.setitem(sys.modules, "torchvision._meta_registrations", stub)
    try:
        import torchvision.models as tvm
    except Exception as exc:
        pytest.skip(f"torchvision does not import here: {exc}")
    return tvm


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(
        "import torch.nn as nn\n\n"
        "def make(width=4, channels=3):\n"
        "    return nn.Sequential(nn.Conv2d(channels, width, 3), nn.ReLU(), nn.Conv2d(width, 2, 1))\n"
        "\n\nmodule_object = nn.Linear(2, 2)\n"
    )
    return path


# -- keywords ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("num_classes=10", {"num_classes": 10}),
        ("width_mult=0.5,dropout=None", {"width_mult": 0.5, "dropout": None}),
        ("bias=False,norm=True", {"bias": False, "norm": True}),
        ("act=relu,layer=nn.ReLU,name=a-b", {"act": "relu", "layer": "nn.ReLU", "name": "a-b"}),
        ("name='two words',k=(3,3),dims=[1,2]", {"name": "two words", "k": (3, 3), "dims": [1, 2]}),
        ("x=-1,y=1e-3,", {"x": -1, "y": 1e-3}),
    ],
)  # fmt: skip
def test_parse_kwargs_literals_and_bare_words(text, expected):
    assert parse_kwargs(text) == expected


@pytest.mark.parametrize(
    "tail,fragment",
    [
        (",4", "keywords must read key=value"),
        (",", "keywords must read key=value"),
        (",num_classes", "keywords must read key=value"),
        (",a=b c", "keywords must read key=value"),
        (",**extra", "keywords must read key=value"),
        (",a=1,a=2", "keyword 'a' is given twice"),
        (",a=f(1)", "the value of a (f(1)) is neither a Python literal nor a bare word"),
        (",a=__import__('os')", "neither a Python literal nor a bare word"),
    ],
)
def test_malformed_keywords_are_one_line(tail, fragment):
    with pytest.raises(SpecError) as info:
        load_model(RESNET + tail)
    assert fragment in _one_line(info)


def test_keywords_reach_a_module_factory():
    model = load_model(RESNET + ",num_classes=4")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    assert not model.training


def test_keywords_reach_a_file_factory(factory_file):
    model = load_model(f"{factory_file}:make,width=8")
    assert model[0].out_channels == 8
    model = load_model(f"{factory_file}:make,width=8,channels=1")
    assert model[0].in_channels == 1


def test_an_unknown_keyword_names_it_and_what_the_factory_takes(factory_file):
    with pytest.raises(SpecError) as info:
        load_model(RESNET + ",num_classes=4,bogus=1")
    text = _one_line(info)
    assert "takes no keyword 'bogus'" in text and "num_classes" in text
    with pytest.raises(SpecError) as info:
        load_model(f"{factory_file}:make,depth=3")
    assert "takes no keyword 'depth' (it takes: width, channels)" in _one_line(info)


def test_a_module_object_takes_no_keywords(factory_file):
    assert isinstance(load_model(f"{factory_file}:module_object"), nn.Linear)
    with pytest.raises(SpecError) as info:
        load_model(f"{factory_file}:module_object,bias=False")
    assert "not a factory: it takes no keywords" in _one_line(info)


def test_timm_pretrained_is_refused_before_anything_loads():
    with pytest.raises(SpecError) as info:
        load_model("timm:resnet18,pretrained=True")
    assert "pretrained=True would download weights" in _one_line(info)


def test_timm_keywords_go_to_create_model_and_a_wrong_one_is_named(monkeypatch):
    calls = []

    def create_model(name, pretrained=False, **kwargs):  # timm's: keywords reach the class
        calls.append((name, pretrained, kwargs))
        if "bogus" in kwargs:
            raise TypeError("ResNet.__init__() got an unexpected keyword argument 'bogus'")
        return nn.Linear(2, kwargs.get("num_classes", 1000))

    fake = types.ModuleType("timm")
    fake.create_model, fake.is_model = create_model, lambda name: name == "resnet18"
    monkeypatch.setitem(sys.modules, "timm", fake)
    assert load_model("timm:resnet18,num_classes=10,pretrained=False").out_features == 10
    assert calls[-1] == ("resnet18", False, {"num_classes": 10})
    with pytest.raises(SpecError) as info:
        load_model("timm:resnet18,bogus=1")
    assert "timm resnet18 takes no keyword 'bogus'" in _one_line(info)
    with pytest.raises(SpecError, match="timm has no model 'nope'"):
        load_model("timm:nope")


def test_torchvision_keywords(torchvision_models):
    model = load_model("torchvision:mobilenet_v2,num_classes=10,width_mult=0.5")
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(SpecError) as info:
        load_model("torchvision:resnet18,foo=1")
    assert "torchvision resnet18 takes no keyword 'foo'" in _one_line(info)
    for tail in (",weights=IMAGENET1K_V1", ",pretrained=True"):
        with pytest.raises(SpecError) as info:
            load_model("torchvision:resnet18" + tail)
        assert "would download weights" in _one_line(info)


# -- weights ----------------------------------------------------------------------------


def _trained(tmp_path, wrap=lambda sd: sd, name="w.pt"):
    torch.manual_seed(1)
    model = load_model(RESNET + ",num_classes=4")
    path = tmp_path / name
    torch.save(wrap(model.state_dict()), path)
    return model, path


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd, "optimizer": {}},
        lambda sd: {"model_state_dict": sd, "best_acc": 0.9},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    ],
    ids=["plain", "state_dict", "model", "model_state_dict", "ddp", "ddp_in_checkpoint"],
)
def test_weights_round_trip(tmp_path, wrap, capsys):
    trained, path = _trained(tmp_path, wrap)
    torch.manual_seed(2)
    fresh = load_model(RESNET + ",num_classes=4", weights=path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), trained.eval()(x))
    assert capsys.readouterr().err == ""  # a tensor dict loads safely, without a note


def test_a_pickled_module_as_weights_loads_with_a_note(tmp_path, capsys):
    torch.manual_seed(1)
    trained = load_model(RESNET)
    torch.save(trained, tmp_path / "whole.pt")
    fresh = load_model(RESNET, weights=tmp_path / "whole.pt")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), trained.state_dict().values()))  # fmt: skip
    assert "weights_only=False" in capsys.readouterr().err


def test_weights_that_do_not_fit_name_the_keys(tmp_path, factory_file):
    torch.save(load_model(f"{factory_file}:make,width=8").state_dict(), tmp_path / "w8.pt")
    with pytest.raises(SpecError) as info:
        load_model(f"{factory_file}:make,width=4", weights=tmp_path / "w8.pt")
    text = _one_line(info)
    assert "do not fit" in text
    assert "shape of 0.weight is (4, 3, 3, 3) here, (8, 3, 3, 3) in the file" in text
    assert "shape of 2.weight is (2, 4, 1, 1) here, (2, 8, 1, 1) in the file" in text

    sd = load_model(RESNET + ",num_classes=4").state_dict()
    del sd["fc.weight"], sd["fc.bias"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "partial.pt")
    with pytest.raises(SpecError) as info:
        load_model(RESNET + ",num_classes=4", weights=str(tmp_path / "partial.pt"))
    text = _one_line(info)
    assert f"weights {tmp_path / 'partial.pt'} do not fit {RESNET},num_classes=4" in text
    assert "missing fc.weight, fc.bias; unexpected extra.weight" in text


def test_many_missing_keys_are_counted_not_listed(tmp_path):
    torch.save({"a": torch.zeros(1)}, tmp_path / "tiny.pt")
    with pytest.raises(SpecError) as info:
        load_model(RESNET, weights=tmp_path / "tiny.pt")
    text = _one_line(info)
    assert "more)" in text and "unexpected a" in text and len(text) < 400


@pytest.mark.parametrize(
    "content,fragment",
    [
        (None, "does not exist"),
        (b"not a torch file", "are not a file saved with torch.save"),
        ({"epoch": 3, "acc": 0.5}, "hold a dict without a state_dict"),
        ([1, 2], "hold a list, not a state_dict"),
    ],
)
def test_unusable_weight_files_are_one_line(tmp_path, content, fragment):
    path = tmp_path / "w.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(SpecError) as info:
        load_model(RESNET, weights=path)
    assert fragment in _one_line(info)


def test_load_weights_into_a_module(tmp_path):
    trained, path = _trained(tmp_path)
    model = load_model(RESNET + ",num_classes=4")
    load_weights(model, path)
    assert torch.equal(model.fc.weight, trained.fc.weight)


# -- a model defined in a file, saved and loaded again ----------------------------------

CLASS_FILE = (
    "import torch.nn as nn\n\n"
    "class Net(nn.Module):\n"
    "    def __init__(self):\n"
    "        super().__init__()\n"
    "        self.conv = nn.Conv2d(3, 4, 3)\n\n"
    "    def forward(self, x):\n"
    "        return self.conv(x)\n\n"
    "def make():\n"
    "    return Net()\n"
)


def test_a_model_saved_from_a_file_loads_in_another_process(tmp_path):
    """A pruned model keeps the classes of the file it was defined in: saved with
    torch.save, it loads again in a new process (where the file was imported under no
    name yet), as every later command does."""
    import os
    import subprocess

    (tmp_path / "net.py").write_text(CLASS_FILE)
    model = load_model(f"{tmp_path / 'net.py'}:make")
    torch.save(model, tmp_path / "net.pt")
    code = (
        "import sys; from lut_builder.specs import load_model; "
        "m = load_model(sys.argv[1]); print(type(m).__name__, m.conv.out_channels)"
    )
    for seed in ("1", "2"):  # the module's name must not depend on the process
        proc = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "net.pt")],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.split() == ["Net", "4"]


def test_a_saved_model_whose_file_is_gone_names_the_file(tmp_path, monkeypatch):
    from lut_builder.specs import FILE_MODULE_PREFIX

    (tmp_path / "net.py").write_text(CLASS_FILE)
    torch.save(load_model(f"{tmp_path / 'net.py'}:make"), tmp_path / "net.pt")
    (tmp_path / "net.py").rename(tmp_path / "moved.py")
    for name in [n for n in sys.modules if n.startswith(FILE_MODULE_PREFIX)]:
        monkeypatch.delitem(sys.modules, name)  # as in a new process
    with pytest.raises(SpecError, match="defined in .*net.py', which does not exist") as err:
        load_model(str(tmp_path / "net.pt"))
    _one_line(err)


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("small.py:small", "small.py"),
        ("dir/net.py:build,width=3,act=relu", "dir/net.py"),
        ("saved.pt", "saved.pt"),
        ("m.onnx", "m.onnx"),
        ("torchvision:resnet18,num_classes=10", None),
        ("halp_trt.models:resnet56", None),
        ("", None),
        (None, None),
    ],
)
def test_spec_file_is_the_file_a_spec_reads(spec, expected):
    assert spec_file(spec) == expected


def test_a_model_file_under_a_path_that_is_not_utf8_saves_and_loads(tmp_path, monkeypatch):
    """A POSIX file name is bytes: one that is not UTF-8 names its module too."""
    import os

    from lut_builder.specs import FILE_MODULE_PREFIX

    folder = Path(os.fsdecode(bytes(tmp_path) + b"/b\xffd"))
    folder.mkdir()
    (folder / "net.py").write_text(CLASS_FILE)
    torch.save(load_model(f"{folder / 'net.py'}:make"), folder / "net.pt")
    for name in [n for n in sys.modules if n.startswith(FILE_MODULE_PREFIX)]:
        monkeypatch.delitem(sys.modules, name)  # as in a new process
    assert type(load_model(str(folder / "net.pt"))).__name__ == "Net"
