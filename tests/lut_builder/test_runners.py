"""Tests of lut_builder.runners: whole-model runners on the CPU backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from lut_builder.errors import UserError
from lut_builder.runners import export_onnx, make_runner
from lut_builder.timing import time_callable


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    # Non-trivial BN statistics so folding BN into the conv matters for the output.
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    return net.eval()


def test_export_onnx_folds_batchnorm_and_matches_torch(tmp_path):
    import onnx
    import onnxruntime as ort

    net, x = _small_net(), torch.randn(1, 3, 8, 8)
    path = export_onnx(net, x, tmp_path / "m.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(out, net(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temp file left


def test_onnxruntime_runner_from_module_and_path(tmp_path):
    net, x = _small_net(), torch.randn(1, 3, 8, 8)
    with make_runner("onnxruntime", net, x) as r:
        out = r()[0]
        tmp_onnx = r.path
        assert tmp_onnx.exists()
    assert not tmp_onnx.exists()  # the temporary export is cleaned up
    np.testing.assert_allclose(out, net(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    path = export_onnx(net, x, tmp_path / "m.onnx")
    with make_runner("onnxruntime", path, x.numpy(), threads=2) as r:
        np.testing.assert_allclose(r()[0], out, rtol=1e-5)
        t = time_callable(r, warmup=2, runs=5, sync=r.sync)
        assert t.n == 5 and t.median_ms > 0


def test_torch_runner_cpu_precisions():
    net, x = _small_net(), torch.randn(2, 3, 8, 8)
    ref = net(x).detach()
    r = make_runner("torch", net, x, channels_last=True)
    torch.testing.assert_close(r(), ref, rtol=1e-4, atol=1e-5)
    r = make_runner("torch", _small_net(), x, precision="bf16")
    assert r().dtype == torch.bfloat16


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("nope", None, None), "unknown runner backend"),
        (("onnxruntime", "missing.onnx", np.zeros((1, 3, 8, 8))), "does not exist"),
        (("torch", "x.onnx", None), "nn.Module"),
    ],
)
def test_runner_user_errors(args, fragment):
    with pytest.raises(UserError, match=fragment):
        make_runner(*args)


def test_torch_runner_cuda_missing_is_user_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(UserError, match="CUDA"):
        make_runner("torch", _small_net(), torch.randn(1, 3, 8, 8), device="cuda")


def test_tensorrt_runner_without_tensorrt_is_user_error():
    pytest.importorskip("torch")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed")
    except ImportError:
        pass
    with pytest.raises(UserError, match="TensorRT"):
        make_runner("tensorrt", _small_net(), torch.randn(1, 3, 8, 8))


def test_onnxruntime_runner_feeds_an_fp16_model_fp16(tmp_path):
    import onnx
    import torch
    from onnx import TensorProto, helper

    from lut_builder.runners import make_runner

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "half.onnx")
    inp = torch.tensor([[-1.0, 0.5, 2.0, -3.0]])
    with make_runner("onnxruntime", str(tmp_path / "half.onnx"), inp) as run:
        (out,) = run()
    assert str(out.dtype) == "float16"
    assert out.tolist() == [[0.0, 0.5, 2.0, 0.0]]
