"""INT8 (Q/DQ) layers, tables and runners on ONNX Runtime; the TensorRT INT8 path's logic."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from lut_builder.backends import get_backend, make_runner  # noqa: E402
from lut_builder.backends.onnxruntime import int8  # noqa: E402
from lut_builder.backends.onnxruntime.measurer import optimized_ops  # noqa: E402
from lut_builder.errors import ExportError, UserError  # noqa: E402
from lut_builder.signatures import LayerSignature  # noqa: E402

from ...conftest import needs_cpus, tiny_convnet  # noqa: E402

CONV = LayerSignature("conv2d", kernel=3, padding=1, in_hw=(8, 8), batch=2)
CASES = [
    CONV,
    LayerSignature("conv2d", kernel=3, padding=1, in_hw=(8, 8), batch=2, epilogue=()),
    LayerSignature("conv2d", kernel=1, stride=2, in_hw=(8, 8), batch=2),
    LayerSignature(
        "conv2d", kernel=3, padding=1, in_hw=(8, 8), batch=2, group_mode="depthwise", groups=0
    ),
]

#: A staircase measured on the development machine (AVX-512 VNNI Xeon, ONNX Runtime
#: 1.32): an INT8 3x3 conv, 64 input channels, 16x16, batch 8, over output channels.
MEASURED = [
    (36, 235.7), (40, 234.6), (44, 230.4), (48, 226.9), (52, 314.4), (56, 291.0),
    (60, 297.8), (64, 294.4), (68, 377.1), (72, 375.6), (76, 413.9), (80, 418.5),
    (84, 440.9), (88, 414.6), (92, 424.8), (96, 446.1),
]  # fmt: skip


@pytest.mark.parametrize("sig", CASES, ids=["3x3", "no-relu", "1x1-s2", "depthwise"])
def test_onnxruntime_fuses_every_copy_into_one_int8_kernel(sig):
    c = 16
    ops = optimized_ops(int8.qdq_layer_model(sig, c, c, copies=3))
    # Nothing but the INT8 convolutions: no float conv, no layout transposes, no Q/DQ.
    assert ops == {"com.microsoft:QLinearConv": 3}, ops


def test_onnxruntime_fuses_a_linear_layer_into_qgemm():
    sig = LayerSignature("linear", batch=4)
    ops = optimized_ops(int8.qdq_layer_model(sig, 32, 16, copies=2))
    assert not {":Gemm", ":MatMul"} & set(ops), ops
    assert ops.get("com.microsoft:QGemm") == 2, ops


def test_tensorrt_flavour_is_symmetric_int8_with_float_io():
    from onnx import TensorProto, numpy_helper

    m = int8.qdq_layer_model(CONV, 8, 16, flavor="tensorrt")
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version >= 13
    inits = {i.name: i for i in m.graph.initializer}
    qdq = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for n in qdq:
        zp = inits[n.input[2]]
        assert zp.data_type == TensorProto.INT8 and not numpy_helper.to_array(zp).any()
        assert inits.get(n.input[0]) is None or inits[n.input[0]].data_type == TensorProto.INT8
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert {n.domain for n in m.graph.node} == {""}
    # ONNX Runtime runs it (what TensorRT does with it needs a GPU).
    import onnxruntime as ort

    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": int8.input_array(m)})
    assert y.shape == (2, 16, 8, 8) and (y >= 0).all()


def test_layer_model_refuses_what_the_signature_cannot_have():
    with pytest.raises(ValueError):
        int8.qdq_layer_model(CASES[3], 8, 16)
    with pytest.raises(ValueError):
        int8.qdq_layer_model(CONV, 8, 8, copies=0)
    with pytest.raises(ValueError):
        int8.qdq_layer_model(CONV, 8, 8, flavor="tflite")


def test_alignment_from_a_measured_staircase():
    assert int8.staircase_alignment(MEASURED) == 16
    smooth = [(c, 0.004 * c + 0.05) for c in range(36, 100, 4)]
    assert int8.staircase_alignment(smooth) == 4
    step8 = [(c, float(-(-c // 8))) for c in range(36, 100, 4)]
    assert int8.staircase_alignment(step8) == 8
    step32 = [(c, float(-(-c // 32))) for c in range(36, 100, 4)]
    assert int8.staircase_alignment(step32) == 32
    assert int8.staircase_alignment([(c, 1.0) for c in range(36, 100, 4)]) == 4
    assert int8.probe_widths() == list(range(36, 97, 4))


def test_int8_backend_measures_and_says_int8_in_its_fingerprint():
    b = get_backend(
        "onnxruntime", precision="int8", alignment=16, runs=3, min_time_s=0.0, normalize=False
    )
    t = b.measure(CONV, 16, 16)
    assert t.median_ms > 0
    fp = b.fingerprint()
    assert fp["precision"] == "int8" and "qdq" in fp["options"]
    assert get_backend("onnxruntime").fingerprint()["precision"] == "fp32"
    assert b.alignment == 16


def test_int8_backend_reads_its_alignment_from_the_staircase(monkeypatch):
    b = get_backend("onnxruntime", precision="int8", normalize=False)
    seen = []

    def fake(times, candidates=int8.CANDIDATES, share=int8.SHARE):
        seen.append([c for c, _ in times])
        return 32

    monkeypatch.setattr(int8, "staircase_alignment", fake)
    assert b.alignment == 32 and b.alignment == 32
    assert seen == [int8.probe_widths()]  # measured once, at the probe widths


def test_int8_backend_refuses_a_layer_that_would_run_in_float(monkeypatch):
    from lut_builder.backends.onnxruntime import measurer

    b = get_backend("onnxruntime", precision="int8", alignment=16, normalize=False)
    monkeypatch.setattr(measurer, "optimized_ops", lambda m, t=1: {":Conv": 1})
    with pytest.raises(UserError, match="does not fuse an INT8"):
        b.measure(CONV, 16, 16)


def test_backend_refuses_precisions_it_does_not_measure():
    with pytest.raises(UserError, match="fp32 or int8"):
        get_backend("onnxruntime", precision="fp16")


def _tiny():
    return tiny_convnet(4)


def test_int8_runner_quantizes_a_module_into_int8_kernels(tmp_path):
    import torch

    x = torch.randn(2, 3, 8, 8)
    with make_runner("onnxruntime", _tiny(), x, precision="int8") as r:
        (y,) = r()
        assert y.shape == (2, 4)
        ops = optimized_ops(str(r.path))
    assert ops.get("com.microsoft:QLinearConv") == 2 and ":Conv" not in ops, ops
    from lut_builder.onnx_export import export_onnx

    fp32 = export_onnx(_tiny(), x, tmp_path / "fp32.onnx")
    with pytest.raises(UserError, match="not an INT8 Q/DQ model"):
        make_runner("onnxruntime", fp32, x, precision="int8")
    with pytest.raises(UserError, match="fp32 or int8"):
        make_runner("onnxruntime", fp32, x, precision="fp16")


def test_quantize_qdq_flavours(tmp_path):
    import torch
    from onnx import TensorProto

    from lut_builder.onnx_export import export_onnx, quantize_qdq

    x = torch.randn(2, 3, 8, 8)
    fp32 = export_onnx(_tiny(), x, tmp_path / "fp32.onnx")
    batches = [torch.randn(2, 3, 8, 8) for _ in range(2)]
    kinds = {}
    for flavor in ("tensorrt", "onnxruntime"):
        out = quantize_qdq(fp32, tmp_path / f"{flavor}.onnx", batches, flavor=flavor)
        m = onnx.load(str(out))
        q = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
        inits = {i.name: i for i in m.graph.initializer}
        kinds[flavor] = {inits[n.input[2]].data_type for n in q}
        int32 = [
            n
            for n in m.graph.node
            if n.op_type == "DequantizeLinear"
            and n.input[0] in inits
            and inits[n.input[0]].data_type == TensorProto.INT32
        ]
        assert bool(int32) == (flavor == "onnxruntime")  # TensorRT: float biases
    assert kinds == {"tensorrt": {TensorProto.INT8}, "onnxruntime": {TensorProto.UINT8}}
    with pytest.raises(UserError, match="flavour"):
        quantize_qdq(fp32, tmp_path / "x.onnx", batches, flavor="tflite")
    with pytest.raises(UserError, match="at least one batch"):
        quantize_qdq(fp32, tmp_path / "x.onnx", [], flavor="tensorrt")
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    with pytest.raises(ExportError, match="INT8 quantization failed"):
        quantize_qdq(tmp_path / "broken.onnx", tmp_path / "x.onnx", batches)
    assert not (tmp_path / "x.onnx").exists()


# --- TensorRT: logic only (no TensorRT here) ---------------------------------------------


def test_tensorrt_int8_layer_is_the_tensorrt_flavour():
    from lut_builder.backends.tensorrt.measurer import int8_layer_onnx

    m = onnx.load_from_string(int8_layer_onnx(CONV, 8, 16))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    ops = [n.op_type for n in m.graph.node]
    assert ops[:2] == ["QuantizeLinear", "DequantizeLinear"] and "Conv" in ops


def test_tensorrt_backend_takes_int8_and_refuses_bf16():
    from lut_builder.backends.tensorrt.measurer import TensorRTBackend
    from lut_builder.backends.tensorrt.trt_compat import TensorRTUnavailable

    with pytest.raises(UserError, match="fp32, fp16, int8"):
        TensorRTBackend(precision="bf16")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        # int8 passes the precision check; only the missing TensorRT stops it.
        with pytest.raises(TensorRTUnavailable):
            TensorRTBackend(precision="int8")


class _FakeParser:
    def __init__(self, ok):
        self.ok, self.num_errors, self.seen = ok, 1, None

    def parse(self, data):
        self.seen = data
        return self.ok

    def get_error(self, i):
        class E:
            def desc(self):
                return "zero point must be 0"

        return E()


class _FakeTrt:
    __version__ = "10.16.1.11"

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 0

    def __init__(self, ok):
        self.parser = _FakeParser(ok)

    def OnnxParser(self, network, logger):  # noqa: N802 - TensorRT's name
        return self.parser


class _FakeBuilder:
    def __init__(self):
        self.flags = None

    def create_network(self, flags):
        self.flags = flags
        return "network"


def test_parse_onnx_bytes_builds_a_strongly_typed_network_and_quotes_parser_errors():
    from lut_builder.backends.tensorrt import trt_compat

    trt, builder = _FakeTrt(True), _FakeBuilder()
    network, parser = trt_compat.parse_onnx_bytes(trt, builder, None, b"model")
    assert network == "network" and parser.seen == b"model"
    assert builder.flags == 1  # STRONGLY_TYPED on TensorRT 10
    with pytest.raises(trt_compat.EngineBuildError, match="zero point must be 0"):
        trt_compat.parse_onnx_bytes(_FakeTrt(False), _FakeBuilder(), None, b"model")


def test_staircase_input_widths_are_regular():
    widths = int8.probe_widths((8, 16))
    assert widths == list(range(24, 49, 8))
    assert np.all(np.diff(widths) == 8)


def test_an_int8_table_is_built_and_calibrated_on_int8_models(tmp_path):
    import torch

    from lut_builder import LatencyTable, build_table

    backend = get_backend(
        "onnxruntime", precision="int8", alignment=16, runs=3, min_time_s=0.0, normalize=False
    )
    x = torch.randn(2, 3, 8, 8)
    res = build_table(
        tmp_path / "t.db", _tiny(), x, backend, calibration="additive",
        runner_options={"precision": "int8"},
    )  # fmt: skip
    assert res.complete and res.overhead_ms is not None
    with LatencyTable.open(tmp_path / "t.db") as table:
        assert table.fingerprint["precision"] == "int8" and table.alignment == 16
        assert table.threads == 1


@needs_cpus(2)
def test_an_int8_table_is_normalised_by_an_int8_reference():
    from lut_builder.backends.base import make_reference
    from lut_builder.backends.onnxruntime.measurer import reference_kind

    kind = get_backend("onnxruntime", precision="int8", alignment=16).reference_kind
    assert kind == reference_kind(1, "int8") != reference_kind(1)
    assert "int8" in kind
    make_reference(kind)()  # runs
    make_reference(reference_kind(2))()
    with pytest.raises(UserError, match="unknown onnxruntime reference"):
        make_reference("onnxruntime/int8-conv3x3-16x16-64-64/threads=1")
