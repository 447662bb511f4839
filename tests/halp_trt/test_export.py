"""ONNX export: graph cleanup, checker, dynamic batch, fp16, parity, and the CLI's errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from halp_trt.export import BatchRange, ExportError, ParityError, export_onnx
from halp_trt.export.onnx_export import META_BATCH, META_PRECISION
from halp_trt.models import create_model
from halp_trt.verify import uniform_prune
from lut_builder.errors import ShapeError, UserError

from ..conftest import assert_user_error


def run_ort(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


class Noisy(nn.Module):
    """Adds fresh noise on every call: ONNX Runtime cannot reproduce PyTorch's output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x) + torch.rand_like(x[:, :1]) * 10


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Linear(8, 5)
        self.b = nn.Linear(8, 2)

    def forward(self, x):
        z = self.conv(x).mean((2, 3))
        return self.a(z), self.b(z)


def test_batch_range_parses_and_checks_order():
    assert BatchRange.parse("1:8:32") == BatchRange(1, 8, 32)
    assert BatchRange.parse("4") == BatchRange(4, 4, 4)
    assert str(BatchRange(1, 2, 3)) == "1:2:3"
    for bad in ("8:1:32", "0:1:2", "1:2", "a:b:c", ""):
        with pytest.raises(ShapeError):
            BatchRange.parse(bad)


def test_static_export_is_clean_checked_and_matches_pytorch(tmp_path):
    model = create_model("resnet20").eval()
    out = tmp_path / "r20.onnx"
    report = export_onnx(model, (2, 3, 32, 32), out)
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert report.exporter == "torchscript" and report.opset == 17
    # BatchNorm folded into the convolutions and no Identity left by graphsurgeon.
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops and "Identity" not in ops
    assert report.inputs == [{"name": "input", "shape": [2, 3, 32, 32], "dtype": "float32"}]
    assert report.parity.passed and report.parity.batches == [2]
    assert report.parity.max_rel < 1e-4
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta[META_PRECISION] == "fp32" and META_BATCH not in meta
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_ort(out, x), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize(
    "name", [pytest.param("resnet56", marks=pytest.mark.slow), "pruned-resnet56"]
)
def test_parity_target_on_resnet56_and_a_pruned_copy(tmp_path, name):
    model = create_model("resnet56").eval()
    if name.startswith("pruned"):
        model = uniform_prune(model, torch.randn(1, 3, 32, 32), 0.5)
        assert sum(p.numel() for p in model.parameters()) < 0.35 * 855_770
    report = export_onnx(
        model, (1, 3, 32, 32), tmp_path / "m.onnx", dynamic_batch=BatchRange(1, 4, 16)
    )
    assert report.parity.passed
    assert report.parity.batches == [1, 16]
    assert report.parity.max_rel < 1e-4


def test_dynamic_batch_runs_every_batch_in_range_and_is_recorded(tmp_path):
    out = tmp_path / "d.onnx"
    report = export_onnx(
        create_model("resnet20"), (1, 3, 32, 32), out, dynamic_batch=BatchRange(1, 8, 32)
    )
    assert report.inputs[0]["shape"] == [-1, 3, 32, 32]
    assert report.outputs[0]["shape"] == [-1, 10]
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta[META_BATCH] == "1:8:32"
    for b in (1, 5, 32):
        assert run_ort(out, np.zeros((b, 3, 32, 32), np.float32)).shape == (b, 10)


def test_fp16_export_has_fp16_weights_and_io_within_its_tolerance(tmp_path):
    out = tmp_path / "h.onnx"
    report = export_onnx(
        create_model("resnet20"), (1, 3, 32, 32), out, fp16=True, dynamic_batch=BatchRange(1, 2, 4)
    )
    proto = onnx.load(str(out))
    floats = {i.data_type for i in proto.graph.initializer} & {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
    }
    assert floats == {onnx.TensorProto.FLOAT16}
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert report.precision == "fp16" and report.parity.tolerance == 1e-2
    assert report.parity.passed and 0 < report.parity.max_rel < 1e-2


def test_multi_output_models_name_each_output(tmp_path):
    report = export_onnx(TwoHeads(), (2, 3, 8, 8), tmp_path / "two.onnx")
    assert [o["name"] for o in report.outputs] == ["output0", "output1"]
    assert [o.name for o in report.parity.outputs] == ["output0", "output1"]
    assert report.parity.passed


def test_parity_failure_raises_and_writes_nothing(tmp_path):
    out = tmp_path / "noisy.onnx"
    with pytest.raises(ParityError) as err:
        export_onnx(Noisy(), (1, 3, 8, 8), out)
    assert err.value.exit_code == 1 and "FAILED" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_export_errors_leave_nothing_behind(tmp_path):
    model = create_model("resnet20")
    with pytest.raises(ShapeError):
        export_onnx(model, (1, 5, 32, 32), tmp_path / "a.onnx")  # wrong channels
    with pytest.raises(ShapeError):
        export_onnx(model, (64, 3, 32, 32), tmp_path / "a.onnx", dynamic_batch=BatchRange(1, 2, 4))
    with pytest.raises(UserError):
        export_onnx(model, (1, 3, 32, 32), tmp_path / "missing" / "a.onnx")
    with pytest.raises(UserError):
        export_onnx(model, (1, 3, 32, 32), tmp_path / "a.onnx", exporter="nope")
    assert list(tmp_path.iterdir()) == []


def test_a_model_no_exporter_can_export_is_a_user_error(tmp_path, monkeypatch):
    import lut_builder.onnx_export as ox  # the project's one export path

    def refuse(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::fancy")

    # Stand-ins for both exporters failing the way an unsupported operator makes them.
    monkeypatch.setattr(ox, "_export_torchscript", refuse)
    monkeypatch.setattr(ox, "_export_dynamo", refuse)
    with pytest.raises(ExportError, match="torchscript: RuntimeError: unsupported operator"):
        export_onnx(create_model("resnet20"), (1, 3, 32, 32), tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_auto_falls_back_to_dynamo_and_says_so(tmp_path, monkeypatch):
    import lut_builder.onnx_export as ox  # the project's one export path

    real = ox._export_torchscript

    def refuse(*args, **kwargs):
        raise RuntimeError("torchscript exporter removed")

    # The TorchScript exporter fails; the "dynamo" slot writes the file with the real
    # TorchScript exporter (the dynamo exporter itself is exercised by a slow test).
    monkeypatch.setattr(ox, "_export_torchscript", refuse)
    monkeypatch.setattr(ox, "_export_dynamo", real)
    report = export_onnx(create_model("resnet20"), (1, 3, 32, 32), tmp_path / "x.onnx")
    assert report.exporter == "dynamo"
    assert report.notes and "torchscript exporter removed" in report.notes[0]
    assert report.parity.passed


@pytest.mark.slow
def test_dynamo_exporter_with_dynamic_batch(tmp_path):
    report = export_onnx(
        create_model("resnet20"),
        (1, 3, 32, 32),
        tmp_path / "dyn.onnx",
        exporter="dynamo",
        dynamic_batch=BatchRange(1, 4, 8),
    )
    assert report.exporter == "dynamo" and report.opset >= 18
    assert report.inputs[0]["shape"][0] == -1
    assert report.parity.passed and report.parity.max_rel < 1e-4


# --- CLI ------------------------------------------------------------------------------


def test_cli_export_prints_parity_and_writes_the_file(halp_cli, tmp_path):
    r = halp_cli(
        "export", "--model", "halp_trt.models:resnet20", "--input-shape", "1,3,32,32",
        "--dynamic-batch", "1:4:8", "--out", "m.onnx",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "parity PASSED" in r.stdout and "tolerance 1e-04" in r.stdout
    assert "dynamic batch 1:4:8" in r.stdout
    assert (tmp_path / "m.onnx").is_file()


@pytest.mark.slow
def test_cli_export_json(halp_cli, tmp_path):
    r = halp_cli(
        "export", "--model", "halp_trt.models:resnet20", "--input-shape", "2,3,32,32",
        "--fp16", "--out", "h.onnx", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["precision"] == "fp16" and d["parity"]["passed"] is True
    assert d["parity"]["max_rel"] < 1e-2 and d["path"] == "h.onnx"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--model", "nope:nothing"], "nope"),
        pytest.param(
            ["--model", "halp_trt.models:resnet20", "--input-shape", "1,3,a,32"],
            "input shape",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ["--model", "halp_trt.models:resnet20", "--input-shape", "1,7,32,32"],
            "does not accept",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ["--model", "halp_trt.models:resnet20", "--dynamic-batch", "4:2:1"],
            "MIN <= OPT",
            marks=pytest.mark.slow,
        ),
        (["--model", "halp_trt.models:resnet20", "--dynamic-batch", "2:4:8"], "outside"),
    ],
)
def test_cli_export_user_errors(halp_cli, tmp_path, args, fragment):
    base = {"--input-shape": "1,3,32,32"}
    if "--input-shape" not in args:
        args = [*args, "--input-shape", base["--input-shape"]]
    r = halp_cli("export", *args, "--out", "m.onnx")
    assert_user_error(r, fragment)
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_parity_failure_exits_1_without_a_file(halp_cli, tmp_path):
    (tmp_path / "noisy.py").write_text(
        "import torch, torch.nn as nn\n"
        "class Noisy(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.conv = nn.Conv2d(3, 4, 3, padding=1)\n"
        "    def forward(self, x):\n"
        "        return self.conv(x) + torch.rand_like(x[:, :1]) * 10\n"
    )
    r = halp_cli(
        "export", "--model", "noisy.py:Noisy", "--input-shape", "1,3,8,8", "--out", "n.onnx"
    )
    assert r.returncode == 1, r.stderr
    assert "parity FAILED" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "n.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noisy.py"]
