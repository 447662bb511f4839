"""`halp-trt export --int8`, the INT8 run's checks and its report."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from halp_trt.errors import UserError  # noqa: E402
from halp_trt.export.int8 import export_int8, tensorrt_qdq_problems  # noqa: E402
from halp_trt.verify.compare import onnx_layer_widths  # noqa: E402

from ..conftest import (  # noqa: E402
    assert_outputs_declared,
    assert_user_error,
    needs_cpus,
    tiny_convnet,
)

SHAPE = (4, 3, 8, 8)


def _model():
    return tiny_convnet(3)


def _data(tmp_path, channels=3, n=48):
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 3
    images = rng.random((n, channels, 8, 8), dtype=np.float32) + labels[:, None, None, None]
    path = tmp_path / f"data{channels}.npz"
    np.savez(path, images=images, labels=labels)
    return path


def test_int8_export_writes_a_tensorrt_qdq_model_and_reports_accuracy(tmp_path):
    from halp_trt.train import load_data

    data = load_data(f"npz:{_data(tmp_path)}", channels=3, size=(8, 8))
    out = tmp_path / "m.onnx"
    r = export_int8(_model(), SHAPE, out, data, flavor="tensorrt", batches=3)
    assert out.is_file() and r.path == str(out)
    m = onnx.load(str(out))
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["halp_trt.precision"] == "int8" and meta["halp_trt.int8"] == "tensorrt"
    assert tensorrt_qdq_problems(m) == [] and r.tensorrt_problems == []
    assert r.calibration == {"data": data.spec, "batches": 3, "samples": 12}
    acc = r.accuracy
    assert acc["samples"] == len(data.val)
    for k in ("fp32", "int8", "agreement"):
        assert 0.0 <= acc[k] <= 1.0
    # The quantized model computes what the FP32 one does, nearly always.
    assert acc["agreement"] >= 0.8
    assert r.size_bytes["int8"] < r.size_bytes["fp32"]
    assert r.opset >= 13
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.onnx")]
    json.dumps(r.to_dict())
    assert not _widths(_model()) - onnx_layer_widths(out)  # every layer read through Q/DQ


def _widths(model):
    """The model's ``(in, out)`` layer widths as a plan records them, counted (a file's
    count is at least these)."""
    from collections import Counter

    import torch

    from halp_trt.graph import ChannelGraph

    return Counter(ChannelGraph(model, torch.randn(SHAPE)).widths({}).values())


def test_tensorrt_rules_catch_an_onnxruntime_flavour_model(tmp_path):
    from halp_trt.train import load_data

    data = load_data(f"npz:{_data(tmp_path)}", channels=3, size=(8, 8))
    r = export_int8(_model(), SHAPE, tmp_path / "o.onnx", data, flavor="onnxruntime", batches=2)
    assert r.float_convs == 0 and r.int8_convs == 2  # every conv an INT8 kernel
    problems = " ".join(r.tensorrt_problems)
    assert "UINT8" in problems and "zero points" in problems and "Int32" in problems
    assert not _widths(_model()) - onnx_layer_widths(tmp_path / "o.onnx")
    m = onnx.load(str(tmp_path / "o.onnx"))
    m.opset_import[0].version = 12
    assert any("opset 12" in p for p in tensorrt_qdq_problems(m))


def test_int8_export_refuses_bad_input_before_writing(tmp_path):
    from halp_trt.train import load_data

    data = load_data(f"npz:{_data(tmp_path)}", channels=3, size=(8, 8))
    out = tmp_path / "m.onnx"
    with pytest.raises(UserError, match="opset 13"):
        export_int8(_model(), SHAPE, out, data, opset=12)
    with pytest.raises(UserError, match="flavour"):
        export_int8(_model(), SHAPE, out, data, flavor="tflite")
    with pytest.raises(UserError, match="the model takes 3x16x16"):
        export_int8(_model(), (4, 3, 16, 16), out, data)
    with pytest.raises(UserError, match="at least one batch of 64"):
        export_int8(_model(), (64, 3, 8, 8), out, data)
    assert list(tmp_path.iterdir()) == [tmp_path / "data3.npz"]


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--int8"], "--int8 needs --data"),
        (["--data", "digits"], "--data is for --int8"),
        (["--int8", "--fp16", "--data", "digits"], "choose one"),
        (["--int8", "--data", "npz:data2.npz"], "images have 2 channels but the model takes 3"),
        (["--int8", "--data", "digits", "--calibration-batches", "0"], "--calibration-batches"),
    ],
)
def test_export_int8_cli_bad_input(halp_cli, tmp_path, extra, fragment):
    _data(tmp_path, channels=2)
    r = halp_cli(
        "export", "--model", "halp_trt.models:resnet20", "--input-shape", "4,3,8,8",
        "--out", "m.onnx", *extra,
    )  # fmt: skip
    assert_user_error(r, fragment)
    assert not (tmp_path / "m.onnx").exists()


def test_run_config_refuses_int8_on_torch():
    from halp_trt.config import ConfigError, PruneConfig, RunConfig

    kw = dict(model="m", data="digits", input_shape="1,3,8,8", out="o", prune=PruneConfig("0.5x"))
    assert RunConfig(**kw, precision="int8", backend="onnxruntime").precision == "int8"
    with pytest.raises(ConfigError, match="int8"):
        RunConfig(**kw, precision="int8", backend="torch")
    with pytest.raises(ConfigError, match="threads"):
        RunConfig(**kw, threads=0)


def _table(path, precision, threads):
    from lut_builder import LatencyTable

    fp = {"backend": "onnxruntime", "precision": precision, "options": {"threads": threads}}
    LatencyTable.create(path, fp, 16).close()
    return path


def test_a_table_of_another_precision_or_thread_count_is_refused(tmp_path):
    from halp_trt.pipeline import check_table_deployment

    t = _table(tmp_path / "fp32.db", "fp32", 1)
    check_table_deployment(str(t), "fp32", 1)
    with pytest.raises(UserError, match="measured at fp32, this run is at int8"):
        check_table_deployment(str(t), "int8", 1)
    with pytest.raises(UserError, match="measured at 1 CPU thread, this run deploys at --threads 2"):  # fmt: skip
        check_table_deployment(str(t), "fp32", 2)


def test_run_with_a_table_of_another_precision_stops_in_one_line(halp_cli, tmp_path):
    _table(tmp_path / "fp32.db", "fp32", 1)
    r = halp_cli(
        "run", "--model", "halp_trt.models:resnet20", "--data", "digits", "--target", "0.5x",
        "--input-shape", "4,3,16,16", "--backend", "onnxruntime", "--precision", "int8",
        "--lut", "fp32.db", "--out", "run",
    )  # fmt: skip
    assert_user_error(r, "--lut fp32.db was measured at fp32, this run is at int8")
    assert not (tmp_path / "run").exists()


def test_report_shows_fp32_and_int8_side_by_side(tmp_path):
    from halp_trt.report.render import _precision_lines

    rows = [
        {
            "model": "fp32 dense",
            "latency_ms": 2.0,
            "speedup_vs_fp32": 1.0,
            "accuracy": 0.98,
            "size_bytes": 4_000_000,
        },  # fmt: skip
        {
            "model": "int8 dense",
            "latency_ms": 0.8,
            "speedup_vs_fp32": 2.5,
            "accuracy": 0.975,
            "size_bytes": 1_000_000,
        },  # fmt: skip
        {
            "model": "int8 pruned",
            "latency_ms": 0.4,
            "speedup_vs_fp32": 5.0,
            "accuracy": 0.97,
            "size_bytes": 400_000,
        },  # fmt: skip
    ]
    text = "\n".join(_precision_lines(rows))
    assert "| int8 pruned | 0.4000 ms | 5.00x | 0.9700 | 0.40 MB |" in text
    assert "| fp32 dense | 2.0000 ms | 1.00x | 0.9800 | 4.00 MB |" in text
    assert _precision_lines(None) == []


def test_engine_precision_of_a_qdq_model_is_int8(tmp_path):
    from halp_trt.export.engine import onnx_precision
    from halp_trt.train import load_data

    data = load_data(f"npz:{_data(tmp_path)}", channels=3, size=(8, 8))
    export_int8(_model(), SHAPE, tmp_path / "m.onnx", data, batches=1)
    assert onnx_precision(onnx.load(str(tmp_path / "m.onnx"))) == "int8"


@needs_cpus(2)
def test_run_measures_and_times_at_the_deployment_thread_count(tmp_path):
    from halp_trt.config import PruneConfig, RunConfig
    from halp_trt.pipeline import Pipeline, pinned_settings

    cfg = RunConfig(
        model="m", data="digits", input_shape="1,3,8,8", out=str(tmp_path / "o"),
        prune=PruneConfig("0.5x"), backend="onnxruntime", precision="int8", threads=2,
    )  # fmt: skip
    assert Pipeline(cfg)._backend_options() == {"precision": "int8", "threads": 2}
    assert pinned_settings(cfg)["threads"] == 2


@pytest.mark.slow
def test_int8_run_reports_fp32_and_int8_side_by_side(halp_cli, tmp_path):
    r = halp_cli(
        "run", "--model", "halp_trt.models:resnet20", "--data", "digits", "--target", "0.85x",
        "--input-shape", "8,3,16,16", "--backend", "onnxruntime", "--precision", "int8",
        "--pretrain-epochs", "1", "--epochs", "2", "--steps", "2", "--verify-rounds", "5",
        "--no-progress", "--out", "run", timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    assert report["fingerprint"]["precision"] == "int8"
    rows = {row["model"]: row for row in report["precisions"]}
    assert set(rows) == {"fp32 dense", "int8 dense", "int8 pruned"}
    for row in rows.values():
        assert row["latency_ms"] > 0 and 0 <= row["accuracy"] <= 1 and row["size_bytes"] > 0
    assert rows["int8 pruned"]["size_bytes"] < rows["int8 dense"]["size_bytes"]
    for name in ("original.onnx", "pruned.onnx"):
        m = onnx.load(str(run / name))
        assert any(n.op_type == "QuantizeLinear" for n in m.graph.node)
    assert "## Precision" in (run / "report.md").read_text()
    assert_outputs_declared(run)
