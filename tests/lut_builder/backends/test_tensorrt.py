"""Tests of lut_builder.backends.tensorrt: measurer, runner, trt_compat and session.

The logic that needs no GPU, and GPU tests (marked).

Running TensorRT needs an NVIDIA GPU; on the CPU machines the configuration logic,
version branches and errors are tested here, and the API names are checked against the
real bindings by ``tests/test_tensorrt_api.py``.
"""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest

from lut_builder.backends import get_backend
from lut_builder.backends.tensorrt import trt_compat
from lut_builder.errors import ShapeError, UserError
from lut_builder.signatures import LayerSignature

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
no_trt = pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")


def fake_trt(version: str) -> types.SimpleNamespace:
    """A stand-in for the ``tensorrt`` module carrying only what the version logic reads."""
    flags = types.SimpleNamespace(STRONGLY_TYPED=0)
    return types.SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=flags)


def test_versions_parse_and_unsupported_majors_are_refused():
    assert trt_compat.parse_version("10.16.1.11") == (10, 16, 1, 11)
    assert trt_compat.parse_version("10.7.0.post1") == (10, 7, 0)
    assert trt_compat.trt_major(fake_trt("11.4.0.106")) == 11
    with pytest.raises(trt_compat.TensorRTUnavailable, match="not supported"):
        trt_compat.trt_major(fake_trt("8.6.1"))
    with pytest.raises(ValueError):
        trt_compat.parse_version("dev")


def test_network_flags_ask_for_strong_typing_on_10_and_nothing_on_11():
    assert trt_compat.network_flags(fake_trt("10.0.1")) == 1
    assert trt_compat.network_flags(fake_trt("10.16.1.11")) == 1
    # TensorRT 11 is always strongly typed and ignores the deprecated flag.
    assert trt_compat.network_flags(fake_trt("11.0.0.114")) == 0


def test_build_settings_check_themselves():
    s = trt_compat.BuildSettings(workspace_gib=1.5, opt_level=0, timing_cache="t.cache")
    assert s.workspace_bytes == 3 << 29 and isinstance(s.timing_cache, Path)
    assert trt_compat.BuildSettings().workspace_bytes is None
    for bad in ({"workspace_gib": -1}, {"opt_level": 6}, {"max_aux_streams": -1}):
        with pytest.raises(UserError):
            trt_compat.BuildSettings(**bad)
    with pytest.raises(ShapeError):
        trt_compat.BuildSettings(profiles={"x": ((2, 3), (1, 3), (4, 3))})
    with pytest.raises(ShapeError):
        trt_compat.BuildSettings(profiles={"x": ((1, 3), (2, 3, 1), (4, 3))})


@no_trt
def test_without_tensorrt_everything_says_so_in_one_line():
    with pytest.raises(trt_compat.TensorRTUnavailable, match="TensorRT is not installed"):
        trt_compat.import_tensorrt()
    with pytest.raises(UserError, match="TensorRT"):
        get_backend("tensorrt")
    from lut_builder.backends.tensorrt import TensorRTBackend, TensorRTRunner

    with pytest.raises(trt_compat.TensorRTUnavailable):
        TensorRTBackend()
    with pytest.raises(trt_compat.TensorRTUnavailable):
        TensorRTRunner("model.engine", (1, 3, 8, 8))
    with pytest.raises(trt_compat.TensorRTUnavailable):
        trt_compat.build_onnx_engine("model.onnx")


@no_trt
def test_runner_dispatch_reports_missing_tensorrt():
    from lut_builder.backends import make_runner

    with pytest.raises(UserError, match="TensorRT"):
        make_runner("tensorrt", "m.engine", (1, 3, 8, 8))


def test_tensorrt_runner_without_tensorrt_is_user_error():
    torch = pytest.importorskip("torch")
    from lut_builder.backends import make_runner

    from .common import small_net

    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed")
    except ImportError:
        pass
    with pytest.raises(UserError, match="TensorRT"):
        make_runner("tensorrt", small_net(), torch.randn(1, 3, 8, 8))


def test_layer_network_refuses_what_it_cannot_build_before_touching_tensorrt():
    from lut_builder.backends.tensorrt import layer_network

    sig = LayerSignature(op="conv2d", kernel=3, padding=1, in_hw=(8, 8))
    with pytest.raises(UserError, match="fp32, fp16"):
        layer_network(None, None, sig, 8, 8, "bf16")
    dw = LayerSignature(op="conv2d", kernel=3, group_mode="depthwise", groups=0, in_hw=(8, 8))
    with pytest.raises(ValueError):
        layer_network(None, None, dw, 8, 16, "fp16")


def test_device_names():
    from lut_builder.backends.tensorrt.session import device_index

    assert [device_index(d) for d in (0, "cuda", "cuda:1", "2")] == [0, 0, 1, 2]
    with pytest.raises(UserError):
        device_index("cpu")


# --- on a GPU with TensorRT -----------------------------------------------------------


@pytest.mark.tensorrt
def test_backend_measures_a_conv_and_fp16_is_not_slower_than_fp32():
    sig = LayerSignature(op="conv2d", kernel=3, padding=1, in_hw=(56, 56), batch=8)
    with (
        get_backend("tensorrt", precision="fp16") as b16,
        get_backend("tensorrt", precision="fp32") as b32,
    ):
        t16 = b16.measure(sig, 64, 64)
        t32 = b32.measure(sig, 64, 64)
        fp = b16.fingerprint()
    assert 0 < t16.median_ms < 10 and t16.n >= 50
    assert t16.median_ms <= t32.median_ms * 1.1
    assert fp["versions"]["tensorrt"] and fp["gpu"]["compute_capability"]


@pytest.mark.tensorrt
def test_backend_linear_and_depthwise_layers_build(tmp_path):
    cache = tmp_path / "t.cache"
    with get_backend("tensorrt", timing_cache=cache) as b:
        lin = b.measure(LayerSignature(op="linear", batch=4), 256, 128)
        dw = b.measure(
            LayerSignature(
                op="conv2d", kernel=3, padding=1, group_mode="depthwise", groups=0, in_hw=(28, 28)
            ),
            32,
            32,
        )
    assert lin.median_ms > 0 and dw.median_ms > 0
    assert cache.is_file() and cache.stat().st_size > 0


@pytest.mark.tensorrt
def test_runner_on_an_onnx_file_and_a_module(tmp_path):
    import torch

    from lut_builder.backends import make_runner
    from lut_builder.onnx_export import export_onnx

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(2, 3, 16, 16)
    path = export_onnx(model, x, tmp_path / "m.onnx")
    for source in (path, model):
        with make_runner("tensorrt", source, x) as r:
            r()
            r.sync()
            out = next(iter(r.session.outputs().values()))
            assert tuple(out.shape) == (2, 8, 16, 16)
