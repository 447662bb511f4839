"""Engine builder: the decisions made before TensorRT, the sidecar, and the CLI's errors.

The build itself needs TensorRT and a GPU (tests marked ``tensorrt``); everything else
runs here.
"""

from __future__ import annotations

import importlib.util
import json

import onnx
import pytest
from onnx import TensorProto, helper

from halp_trt.export import BatchRange, EngineMismatch, EngineSidecar, export_onnx, sidecar_path
from halp_trt.export.engine import onnx_precision, plan_build, read_onnx, resolve_profiles
from halp_trt.export.sidecar import check_engine, load_engine, sha256_bytes
from halp_trt.models import create_model
from lut_builder.errors import ShapeError, UserError

from ..conftest import assert_user_error

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
GPU = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def tiny_onnx(path, shape=(-1, 3, 8, 8), dtype=TensorProto.FLOAT, meta=None):
    """A one-conv ONNX model; ``-1`` dimensions are symbolic."""
    import numpy as np
    from onnx import numpy_helper

    np_dtype = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    dims = ["batch" if d == -1 else d for d in shape]
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np_dtype), "W")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "W"], ["output"])],
        "g",
        [helper.make_tensor_value_info("input", dtype, dims)],
        [helper.make_tensor_value_info("output", dtype, [dims[0], 4, *dims[2:]])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for k, v in (meta or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def sidecar(**kw):
    d = dict(
        engine_sha256=sha256_bytes(b"engine"),
        onnx={"path": "m.onnx", "sha256": "0" * 64},
        inputs=[{"name": "input", "shape": [-1, 3, 32, 32], "dtype": "float16", "profile": None}],
        outputs=[{"name": "output", "shape": [-1, 10], "dtype": "float16"}],
        precision="fp16",
        tensorrt="10.16.1.11",
        gpu=dict(GPU),
    )
    d.update(kw)
    return EngineSidecar(**d)


# --- profiles -------------------------------------------------------------------------


def test_static_inputs_need_no_profile():
    assert resolve_profiles([{"name": "x", "shape": [1, 3, 8, 8]}], None) == {}
    assert resolve_profiles([{"name": "x", "shape": [4, 3, 8, 8]}], BatchRange(4, 4, 4)) == {}


def test_batch_range_that_contradicts_a_fixed_batch_is_refused():
    with pytest.raises(ShapeError, match="fixed batch 1"):
        resolve_profiles([{"name": "x", "shape": [1, 3, 8, 8]}], BatchRange(1, 8, 32))


def test_dynamic_batch_takes_the_given_range_then_the_stored_one():
    inputs = [{"name": "x", "shape": [-1, 3, 8, 8]}]
    given = resolve_profiles(inputs, BatchRange(1, 8, 32), BatchRange(2, 2, 2))
    assert given == {"x": ((1, 3, 8, 8), (8, 3, 8, 8), (32, 3, 8, 8))}
    stored = resolve_profiles(inputs, None, BatchRange(2, 4, 6))
    assert stored == {"x": ((2, 3, 8, 8), (4, 3, 8, 8), (6, 3, 8, 8))}
    with pytest.raises(ShapeError, match="--batch MIN:OPT:MAX"):
        resolve_profiles(inputs, None, None)


def test_only_the_batch_axis_may_be_dynamic():
    with pytest.raises(ShapeError, match="besides the batch"):
        resolve_profiles([{"name": "x", "shape": [-1, 3, -1, 8]}], BatchRange(1, 1, 1))


# --- the ONNX file --------------------------------------------------------------------


def test_plan_build_reads_inputs_precision_hash_and_stored_range(tmp_path):
    path = tiny_onnx(tmp_path / "m.onnx", meta={"halp_trt.batch": "1:4:16"})
    _, settings, facts = plan_build(path, workspace_gib=2, opt_level=5, timing_cache=tmp_path / "c")
    assert settings.profiles == {"input": ((1, 3, 8, 8), (4, 3, 8, 8), (16, 3, 8, 8))}
    assert settings.workspace_bytes == 2 << 30 and settings.opt_level == 5
    assert facts["precision"] == "fp32"
    assert facts["inputs"][0]["profile"] == {
        "min": [1, 3, 8, 8],
        "opt": [4, 3, 8, 8],
        "max": [16, 3, 8, 8],
    }
    assert len(facts["onnx"]["sha256"]) == 64


def test_precision_comes_from_the_onnx_types(tmp_path):
    h = read_onnx(tiny_onnx(tmp_path / "h.onnx", dtype=TensorProto.FLOAT16))
    f = read_onnx(tiny_onnx(tmp_path / "f.onnx"))
    assert onnx_precision(h) == "fp16" and onnx_precision(f) == "fp32"
    f.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    assert onnx_precision(f) == "mixed"


def test_exported_fp16_model_plans_an_fp16_engine(tmp_path):
    path = tmp_path / "r.onnx"
    export_onnx(
        create_model("resnet20"), (1, 3, 32, 32), path, fp16=True,
        dynamic_batch=BatchRange(1, 8, 32), parity=False,
    )  # fmt: skip
    _, settings, facts = plan_build(path)
    assert facts["precision"] == "fp16"
    assert settings.profiles["input"][2] == (32, 3, 32, 32)


def test_bad_files_and_settings_are_user_errors(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"not a model at all")
    with pytest.raises(UserError, match="not an ONNX model"):
        plan_build(tmp_path / "junk.onnx")
    with pytest.raises(UserError, match="does not exist"):
        plan_build(tmp_path / "missing.onnx")
    good = tiny_onnx(tmp_path / "m.onnx", shape=(1, 3, 8, 8))
    with pytest.raises(UserError, match="workspace"):
        plan_build(good, workspace_gib=0)
    with pytest.raises(UserError, match="0-5"):
        plan_build(good, opt_level=7)


# --- the sidecar ----------------------------------------------------------------------


def test_sidecar_round_trips_and_is_written_atomically(tmp_path):
    s = sidecar()
    path = sidecar_path(tmp_path / "m.engine")
    assert path.name == "m.engine.json"
    s.write(path)
    assert EngineSidecar.read(path) == s
    assert [p.name for p in tmp_path.iterdir()] == ["m.engine.json"]  # no temp file left
    d = json.loads(path.read_text())
    assert d["tensorrt"] == "10.16.1.11" and d["gpu"]["compute_capability"] == "9.0"
    assert d["latency"] == {"predicted_ms": None, "measured_ms": None} and d["halp_trt"]


def test_sidecar_read_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        EngineSidecar.read(tmp_path / "none.json")
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(UserError, match="not JSON"):
        EngineSidecar.read(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"inputs": []}))
    with pytest.raises(UserError, match="malformed"):
        EngineSidecar.read(tmp_path / "b.json")
    with pytest.raises(UserError, match="format"):
        sidecar(format=99)


def test_engine_for_another_tensorrt_or_gpu_is_detected_from_the_sidecar(tmp_path):
    s = sidecar()
    assert s.mismatches(tensorrt="10.16.1.11", gpu=GPU) == []
    assert "TensorRT 10.16.1.11" in s.mismatches(tensorrt="11.4.0.106", gpu=GPU)[0]
    other_cc = {"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}
    assert "compute capability 9.0" in s.mismatches(tensorrt="10.16.1.11", gpu=other_cc)[0]
    same_cc = {"name": "NVIDIA H200", "compute_capability": "9.0"}
    assert "built on a NVIDIA H100" in s.mismatches(tensorrt="10.16.1.11", gpu=same_cc)[0]
    path = tmp_path / "m.engine"
    with pytest.raises(EngineMismatch, match="cannot run here"):
        check_engine(path, b"engine", s, tensorrt="11.4.0.106", gpu=GPU)
    check_engine(path, b"engine", s, tensorrt="11.4.0.106", gpu=GPU, force=True)
    with pytest.raises(EngineMismatch, match="hash differs"):
        check_engine(path, b"another engine", s, tensorrt="10.16.1.11", gpu=GPU, force=True)


def test_load_engine_checks_files_before_tensorrt(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_engine(tmp_path / "none.engine")
    (tmp_path / "m.engine").write_bytes(b"engine")
    with pytest.raises(UserError, match="sidecar"):
        load_engine(tmp_path / "m.engine")


# --- CLI ------------------------------------------------------------------------------


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_cli_engine_without_tensorrt_says_so_and_writes_nothing(halp_cli, tmp_path):
    tiny_onnx(tmp_path / "m.onnx", meta={"halp_trt.batch": "1:2:4"})
    r = halp_cli("engine", "--onnx", "m.onnx", "--out", "m.engine", "--timing-cache", "t.cache")
    assert_user_error(r, "TensorRT is not installed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_cli_engine_bad_input_is_one_line_before_tensorrt(halp_cli, tmp_path):
    (tmp_path / "junk.onnx").write_text("hello")
    tiny_onnx(tmp_path / "static.onnx", shape=(1, 3, 8, 8))
    r = halp_cli("engine", "--onnx", "junk.onnx", "--out", "m.engine")
    assert_user_error(r, "not an ONNX model")
    r = halp_cli("engine", "--onnx", "static.onnx", "--out", "m.engine", "--batch", "1:8:32")
    assert_user_error(r, "fixed batch 1")
    assert not (tmp_path / "m.engine").exists()


# --- on a GPU with TensorRT -----------------------------------------------------------


@pytest.mark.tensorrt
def test_engine_build_writes_engine_and_sidecar_that_load_back(tmp_path):
    import torch

    from lut_builder.backends.tensorrt.session import EngineSession

    path = tmp_path / "r.onnx"
    model = create_model("resnet20").eval()
    export_onnx(model, (1, 3, 32, 32), path, dynamic_batch=BatchRange(1, 4, 8))
    from halp_trt.export import build_engine

    s = build_engine(path, tmp_path / "r.engine", timing_cache=tmp_path / "t.cache")
    assert (tmp_path / "r.engine.json").is_file() and (tmp_path / "t.cache").is_file()
    assert s.inputs[0]["profile"]["max"] == [8, 3, 32, 32]
    data, back = load_engine(tmp_path / "r.engine")
    assert back == s
    session = EngineSession(data, {"input": (4, 3, 32, 32)})
    x = session.buffers["input"].float().cpu()
    session.run()
    session.sync()
    with torch.no_grad():
        ref = model(x)
    out = session.outputs()["output"].float().cpu()
    assert torch.allclose(out, ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item())
    with pytest.raises(ShapeError):
        EngineSession(data, {"input": (16, 3, 32, 32)})
