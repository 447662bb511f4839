"""Tests of lut_builder.backends.torch: the layer measurer and the model runner (CPU)."""

from __future__ import annotations

import pytest
import torch

from lut_builder.backends import get_backend, make_runner
from lut_builder.errors import UserError

from .common import CONV, DW, FAST, GROUPED, LINEAR, small_net


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


def test_torch_threads_below_one_is_a_user_error_naming_threads():
    with pytest.raises(UserError, match="backend's threads must be an integer >= 1, not 0"):
        get_backend("torch", device="cpu", threads=0)


@pytest.mark.gpu
def test_torch_cuda_measures_fp16():
    b = get_backend("torch", device="cuda", precision="fp16", runs=5)
    t = b.measure(CONV, 64, 64)
    assert t.median_ms > 0 and t.n == 5
    assert b.fingerprint()["compute_capability"]


def test_torch_runner_cpu_precisions():
    net, x = small_net(), torch.randn(2, 3, 8, 8)
    ref = net(x).detach()
    r = make_runner("torch", net, x, channels_last=True)
    torch.testing.assert_close(r(), ref, rtol=1e-4, atol=1e-5)
    r = make_runner("torch", small_net(), x, precision="bf16")
    assert r().dtype == torch.bfloat16


def test_torch_runner_cuda_missing_is_user_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(UserError, match="CUDA"):
        make_runner("torch", small_net(), torch.randn(1, 3, 8, 8), device="cuda")


def test_torch_runner_leaves_the_callers_model_as_it_was():
    # A table build times its runners while it still needs the model on the CPU in
    # fp32 (its calibration traces it with the example input there afterwards).
    net, x = small_net(), torch.randn(2, 3, 8, 8)
    r = make_runner("torch", net, x, precision="bf16", channels_last=True)
    assert r().dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert net(x).dtype == torch.float32
    assert not r.cuda_graph and r.channels_last and r.note == ""


def test_torch_runner_layout_defaults_to_the_measurers_on_cpu():
    r = make_runner("torch", small_net(), torch.randn(1, 3, 8, 8))
    assert r.channels_last is False and r.cuda_graph is False


@pytest.mark.gpu
def test_torch_runner_cuda_replays_a_graph_that_computes_the_model():
    net, x = small_net(), torch.randn(4, 3, 8, 8)
    ref = net(x).detach()
    r = make_runner("torch", net, x, device="cuda")
    assert r.cuda_graph and r.channels_last and r.note == ""
    torch.testing.assert_close(r().float().cpu(), ref, rtol=1e-4, atol=1e-4)
    eager = make_runner("torch", net, x, device="cuda", cuda_graph=False)
    assert not eager.cuda_graph
    torch.testing.assert_close(eager().float().cpu(), ref, rtol=1e-4, atol=1e-4)
