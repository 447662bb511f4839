"""Tests of lut_builder.onnx_export: the one ONNX export path."""

from __future__ import annotations

import numpy as np
import torch

from lut_builder.onnx_export import export_onnx

from .backends.common import small_net


def test_export_onnx_folds_batchnorm_and_matches_torch(tmp_path):
    import onnx
    import onnxruntime as ort

    net, x = small_net(), torch.randn(1, 3, 8, 8)
    path = export_onnx(net, x, tmp_path / "m.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(out, net(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temp file left
