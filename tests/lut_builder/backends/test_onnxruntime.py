"""Tests of lut_builder.backends.onnxruntime: the layer measurer and the model runner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lut_builder.backends import get_backend, make_runner
from lut_builder.errors import UserError
from lut_builder.onnx_export import export_onnx
from lut_builder.signatures import LayerSignature
from lut_builder.timing import Timing, time_callable

from ...conftest import needs_cpus
from .common import CONV, DW, FAST, GROUPED, LINEAR, small_net


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


def test_a_differential_point_that_resolves_to_zero_is_retimed_then_a_positive_stand_in(
    monkeypatch,
):
    from lut_builder.backends.onnxruntime import measurer

    b = get_backend("onnxruntime", **FAST)
    calls = []
    zero = Timing.from_samples([0.0, 0.0, 0.0])

    def timed(sig, c_in, c_out, longer):
        calls.append(longer)
        return zero if len(calls) < 3 else Timing.from_samples([0.002] * 3)

    monkeypatch.setattr(b, "_measure", timed)
    t = b.measure(CONV, 16, 16)
    assert calls == [1, 4] and t.median_ms == measurer.UNRESOLVED_MS > 0
    assert t.p10_ms <= t.median_ms <= t.p90_ms
    calls.clear()
    calls.append(0)  # the next point resolves on its longer timing
    assert b.measure(CONV, 16, 16).median_ms == 0.002 and calls == [0, 1, 4]


@pytest.mark.parametrize(
    "opts, fragment",
    [
        ({"precision": "fp16"}, "fp32"),
        ({"device": "cuda"}, "CPU"),
        ({"method": "magic"}, "method"),
        pytest.param({"threads": 2, "clock": "thread"}, "single-threaded", marks=needs_cpus(2)),
        # Each named alone: a user who gave threads=0 reads about threads only.
        ({"threads": 0}, "backend's threads must be an integer >= 1, not 0$"),
        ({"copies": 1}, "backend's copies must be >= 2, not 1$"),
        ({"runs": 0}, "backend's runs must be >= 1, not 0$"),
    ],
)
def test_onnxruntime_rejects_options(opts, fragment):
    with pytest.raises(UserError, match=fragment):
        get_backend("onnxruntime", **opts)


@needs_cpus(2)
def test_onnxruntime_runner_from_module_and_path(tmp_path):
    net, x = small_net(), torch.randn(1, 3, 8, 8)
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


def test_onnxruntime_runner_feeds_an_fp16_model_fp16(tmp_path):
    import onnx
    import torch
    from onnx import TensorProto, helper

    from lut_builder.backends import make_runner

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
