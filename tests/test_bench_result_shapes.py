"""bench/result_shapes.py: the kept fraction of a model's residual streams and inner
widths, read off pareto rows' widths; runs of other models, or rows that do not fit the
model, are refused in one line with no output written."""

from __future__ import annotations

import json

import pytest
import torch.nn as nn

from tests.conftest import load_bench

MODEL = "halp_trt.models:resnet20"


def widths():
    from halp_trt.models import resnet20

    return [m.out_channels for m in resnet20().modules() if isinstance(m, nn.Conv2d)]


def row(seed, method, acc, w):
    return {"seed": seed, "target": "0.5x", "method": method, "status": "ok",
            "val_acc": acc, "widths": w, "measured_ratio": 0.5}  # fmt: skip


def result(rows, model=MODEL):
    return {"model": model, "input_shape": [2, 3, 16, 16], "runs": rows}


def test_kept_fractions_by_kind_and_seed():
    import torch

    from halp_trt.graph import ChannelGraph
    from halp_trt.models import resnet20

    shapes = load_bench("result_shapes")
    model = resnet20()
    graph = ChannelGraph(model, torch.randn(2, 3, 16, 16))
    stream = shapes.stream_groups(graph, model)
    # ResNet-20: three stages, each a stream written by several convs; nine inner widths.
    assert sum(stream.values()) == 3
    assert sum(not s for s in stream.values()) == 9
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    w = widths()
    streams_half = list(w)
    for g in graph.prunable:
        if stream.get(g.id):
            for ref in g.producers:
                if ref.layer in convs:
                    streams_half[convs.index(ref.layer)] = g.size // 2
    found = shapes.shapes(
        [
            ("a", result([row(0, "whole", 0.9, w), row(1, "whole", 0.8, w)])),
            ("b", result([row(0, "streams", 0.7, streams_half), row(0, "whole", 0.6, w)])),
        ]
    )
    whole = found["by_target"]["0.5x"]["whole"]
    # Seed 0 in two runs counts once, the mean of them: ((0.9 + 0.6) / 2 + 0.8) / 2.
    assert whole["seeds"] == [0, 1] and whole["val_acc_mean"] == pytest.approx(0.775)
    assert whole["runs_per_seed"] == {"0": 2, "1": 1}
    assert whole["coupled_kept_mean"] == 1.0 and whole["single_kept_mean"] == 1.0
    streams = found["by_target"]["0.5x"]["streams"]
    assert streams["coupled_kept_mean"] == 0.5 and streams["single_kept_mean"] == 1.0
    assert "runs_per_seed" not in streams  # one run a seed: the files keep their shape


def test_a_halp_run_at_another_floor_is_a_method_of_its_own():
    """The same halp-trt method at two floors (recorded per run, or the result's
    ``--min-keep``) is two rows, named as bench/pareto_pool.py names them; a baseline
    keeps its name."""
    shapes = load_bench("result_shapes")
    w = widths()
    at03 = result([{**row(0, "halp-x", 0.9, w), "min_keep": 0.3}, row(0, "uniform", 0.8, w)])
    at05 = {**result([row(0, "halp-x", 0.7, w), row(1, "uniform", 0.6, w)]),
            "settings": {"min_keep": 0.5}}  # fmt: skip
    found = shapes.shapes([("a", at03), ("b", at05)])["by_target"]["0.5x"]
    assert found["halp-x"]["val_acc_mean"] == pytest.approx(0.9)
    assert found["halp-x@floor0.5"]["val_acc_mean"] == pytest.approx(0.7)
    assert found["uniform"]["seeds"] == [0, 1]


@pytest.mark.parametrize(
    "other, message",
    [
        (result([], model="halp_trt.models:resnet32"), "b.json has model"),
        (result([row(0, "short", 0.5, [16, 16])]), "b.json: a short row: 2 widths recorded"),
    ],
)
def test_bad_runs_are_one_line_and_write_nothing(tmp_path, capsys, other, message):
    shapes = load_bench("result_shapes")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(result([row(0, "whole", 0.9, widths())])))
    b.write_text(json.dumps(other))
    out = tmp_path / "shapes.json"
    assert shapes.main([str(a), str(b), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("result_shapes.py: error: ") and message in err and "\n" not in err
    assert not out.exists()
