"""Tests of lut_builder.backends: registry, ONNX Runtime, torch (CPU) and analytic."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from lut_builder.backends import check_channels, get_backend, list_backends
from lut_builder.errors import UserError
from lut_builder.signatures import LayerSignature
from lut_builder.timing import Timing

CONV = LayerSignature("conv2d", kernel=3, padding=1, in_hw=(8, 8))
DW = LayerSignature("conv2d", kernel=3, padding=1, group_mode="depthwise", groups=0, in_hw=8)
GROUPED = LayerSignature(
    "conv2d", kernel=3, stride=2, padding=1, group_mode="grouped", groups=4, in_hw=8
)
LINEAR = LayerSignature("linear", batch=2)
FAST = {"warmup": 1, "runs": 3, "min_time_s": 0.0}


def test_registry_names_and_unknown_backend():
    assert {"analytic", "onnxruntime", "tensorrt", "torch"} <= set(list_backends())
    with pytest.raises(UserError, match="unknown backend 'nope'.*analytic.*onnxruntime"):
        get_backend("nope")


def test_bad_option_is_user_error():
    with pytest.raises(UserError, match="options"):
        get_backend("analytic", colour="red")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT present")
def test_tensorrt_missing_is_user_error():
    with pytest.raises(UserError, match="TensorRT.*not installed"):
        get_backend("tensorrt")


def test_check_channels():
    check_channels(GROUPED, 8, 12)
    for sig, c_in, c_out in [(CONV, 0, 4), (DW, 4, 8), (GROUPED, 6, 8)]:
        with pytest.raises(ValueError):
            check_channels(sig, c_in, c_out)


def test_analytic_is_deterministic_staircase_and_not_a_measurement():
    b = get_backend("analytic", alignment=8)
    assert b.is_measurement is False and b.fingerprint()["is_measurement"] is False
    t = b.measure(CONV, 16, 16)
    assert t == b.measure(CONV, 16, 16) and t.n == 1
    # Inside one tile the cost is flat; the next tile costs more.
    assert b.measure(CONV, 16, 9).median_ms == b.measure(CONV, 16, 16).median_ms
    assert b.measure(CONV, 16, 17).median_ms > b.measure(CONV, 16, 16).median_ms
    assert b.measure(CONV, 64, 64).median_ms > b.measure(CONV, 16, 16).median_ms


def _ort_reference(sig, c_in, c_out, copies):
    """Run the backend's graph in ONNX Runtime and rebuild its output with torch."""
    import onnxruntime as ort
    from onnx import numpy_helper

    from lut_builder.backends.onnxruntime import layer_model

    model = layer_model(sig, c_in, c_out, copies=copies)
    weights = {
        i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer
    }
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    shape = (sig.batch, c_in, *sig.in_hw) if sig.op == "conv2d" else (sig.batch, c_in)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    out = sess.run(None, {"x": x})[0]
    xt, prev = torch.from_numpy(x), None
    g = {"dense": 1, "depthwise": c_in}.get(sig.group_mode, sig.groups)
    for i in range(copies):
        w, b = weights[f"W{i}"], weights[f"B{i}"]
        if sig.op == "linear":
            z = xt @ w.T + b
        else:
            z = torch.nn.functional.conv2d(xt, w, b, sig.stride, sig.padding, sig.dilation, g)
        z = z if prev is None else z + prev
        prev = torch.relu(z) if "relu" in sig.epilogue else z
    return out, prev.numpy()


@pytest.mark.parametrize(
    "sig, c_in, c_out", [(CONV, 16, 24), (DW, 16, 16), (GROUPED, 8, 12), (LINEAR, 10, 6)]
)
@pytest.mark.parametrize("copies", [1, 3])
def test_onnxruntime_layer_graph_computes_conv_bias_relu(sig, c_in, c_out, copies):
    out, ref = _ort_reference(sig, c_in, c_out, copies)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["differential", "single"])
def test_onnxruntime_measures(method):
    b = get_backend("onnxruntime", method=method, **FAST)
    t = b.measure(CONV, 16, 16)
    assert isinstance(t, Timing) and t.n >= 3 and t.median_ms >= 0
    big = b.measure(LayerSignature("conv2d", kernel=3, padding=1, in_hw=32), 64, 64)
    assert big.median_ms > t.median_ms  # 64x more work must show
    fp = b.fingerprint()
    assert fp["backend"] == "onnxruntime" and fp["options"]["method"] == method
    assert fp["options"]["clock"] == "thread" and fp["versions"]["onnxruntime"]
    assert b.alignment in (8, 16)


@pytest.mark.parametrize(
    "opts, fragment",
    [
        ({"precision": "fp16"}, "fp32"),
        ({"device": "cuda"}, "CPU"),
        ({"method": "magic"}, "method"),
        ({"threads": 2, "clock": "thread"}, "single-threaded"),
    ],
)
def test_onnxruntime_rejects_options(opts, fragment):
    with pytest.raises(UserError, match=fragment):
        get_backend("onnxruntime", **opts)


def test_torch_cpu_measures_and_module_matches_signature():
    from lut_builder.backends.torch import input_shape, layer_module

    m = layer_module(GROUPED, 8, 12)
    y = m(torch.randn(input_shape(GROUPED, 8)))
    assert y.shape == (1, 12, *GROUPED.out_hw) and (y >= 0).all()
    assert m[0].groups == 4 and m[0].bias is not None
    b = get_backend("torch", **FAST)
    t = b.measure(DW, 16, 16)
    assert t.n >= 3 and t.median_ms > 0
    fp = b.fingerprint()
    assert fp["backend"] == "torch" and fp["device"].startswith("cpu")
    assert b.measure(LINEAR, 10, 6).median_ms > 0


def test_torch_default_alignment():
    from lut_builder.backends.torch import default_alignment

    assert default_alignment("cuda", "fp16") == 8
    assert default_alignment("cuda", "fp32") == 4
    assert default_alignment("cpu", "fp32") in (8, 16)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_torch_cuda_missing_is_user_error():
    with pytest.raises(UserError, match="CUDA is not available"):
        get_backend("torch", device="cuda")


@pytest.mark.gpu
def test_torch_cuda_measures_fp16():
    b = get_backend("torch", device="cuda", precision="fp16", runs=5)
    t = b.measure(CONV, 64, 64)
    assert t.median_ms > 0 and t.n == 5
    assert b.fingerprint()["compute_capability"]
