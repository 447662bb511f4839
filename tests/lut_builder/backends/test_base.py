"""Tests of lut_builder.backends.base: the registries of backends, runners and references."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from lut_builder.backends import (
    backend_options,
    check_channels,
    get_backend,
    list_backends,
    list_runners,
    make_reference,
    make_runner,
)
from lut_builder.errors import UserError

from .common import CONV, DW, GROUPED


def test_registry_names_and_unknown_backend():
    assert {"analytic", "onnxruntime", "tensorrt", "torch"} <= set(list_backends())
    with pytest.raises(UserError, match="unknown backend 'nope'.*analytic.*onnxruntime"):
        get_backend("nope")


def test_backend_options_are_the_constructors_without_building_one(monkeypatch):
    import functools

    import lut_builder.backends.onnxruntime.measurer as ort

    built_count = []
    init = ort.OnnxRuntimeBackend.__init__

    @functools.wraps(init)  # the same signature, counted
    def counting(self, *args, **kwargs):
        built_count.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(ort.OnnxRuntimeBackend, "__init__", counting)
    opts = backend_options("onnxruntime")
    assert {"threads", "copies", "clock", "precision"} <= opts and "self" not in opts
    assert built_count == []  # read from the class, nothing built
    monkeypatch.undo()
    # Every option its fingerprint records under those names is one it takes.
    built = get_backend("onnxruntime", threads=1)
    assert {"threads", "copies", "clock"} <= set(built.fingerprint()["options"]) & opts
    built.close()
    assert "precision" in backend_options("analytic")
    with pytest.raises(UserError, match="unknown backend 'nope'"):
        backend_options("nope")


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


def test_runner_names_and_unknown_reference():
    assert list_runners() == ["onnxruntime", "tensorrt", "torch"]  # analytic has none
    with pytest.raises(UserError, match="unknown runner backend 'analytic'"):
        make_runner("analytic", None, None)
    with pytest.raises(UserError, match="unknown reference workload"):
        make_reference("newer-backend/conv")
    with pytest.raises(UserError, match="unknown onnxruntime reference"):
        make_reference("onnxruntime/conv5x5")


@pytest.mark.parametrize(
    ("flags", "block"),
    [("fpu sse avx avx2 fma", 8), ("fpu avx2 avx512f avx512bw", 16), (None, 8)],
)
def test_cpu_block_size_follows_the_cpu_flags(monkeypatch, tmp_path, flags, block):
    """16 channels with AVX-512, 8 with AVX2 or when /proc/cpuinfo says nothing: the
    default grid step of the CPU backends depends on the machine, not on the tests."""
    import builtins

    from lut_builder.backends import base

    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: Some CPU\n" + (f"flags\t\t: {flags}\n" if flags else ""))
    real_open = builtins.open
    monkeypatch.setattr(
        builtins, "open", lambda p, *a, **k: real_open(info if p == "/proc/cpuinfo" else p, *a, **k)
    )
    assert base.cpu_block_size() == block


def test_cpu_flags_keep_the_extensions_that_pick_kernels():
    """Two CPUs one model name covers (an AVX2 and an AVX-512 EPYC, both "AMD EPYC")
    differ in the fingerprint's flags; flags that pick no kernel are left out."""
    from lut_builder.backends import base

    avx2 = "model name\t: AMD EPYC\nflags\t\t: fpu sse sse2 avx avx2 fma aes\n"
    avx512 = "model name\t: AMD EPYC\nflags\t\t: fpu avx avx2 fma avx512f avx512bw avx512_vnni\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp sve i8mm crc32\n"
    assert base.cpu_flags(avx2) == ["avx", "avx2", "fma"]
    assert base.cpu_flags(avx512) == ["avx", "avx2", "avx512_vnni", "avx512bw", "avx512f", "fma"]
    assert base.cpu_flags(arm) == ["asimd", "asimddp", "i8mm", "sve"]
    assert base.cpu_flags("model name\t: Some CPU\n") is None
    here = base.host_fingerprint()
    assert here["cpu_flags"] == base.cpu_flags()
