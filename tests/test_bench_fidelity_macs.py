"""bench/fidelity_macs.py: the MAC count's prediction of a fidelity run's speed-ups, set
beside the table's; a file that is not a fidelity run is refused in one line, nothing
written."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tests.conftest import load_bench

SPEC = "halp_trt.models:resnet20"


def macs_of(keep: dict[int, int] | None) -> int:
    from halp_trt.graph import ChannelGraph
    from halp_trt.specs import load_model

    model, x = load_model(SPEC).eval(), torch.randn(1, 3, 32, 32)
    if keep:
        ChannelGraph(model, x).remove({g: list(range(k)) for g, k in keep.items()})
    return ChannelGraph(copy.deepcopy(model), x).macs


def fidelity_run() -> tuple[dict, list[float]]:
    """A lut_fidelity result for ResNet-20 whose pruned models measured exactly their MAC
    fraction of the unpruned model's 10 ms, and the table predicted 1.1x that fraction
    for the first of them."""
    from halp_trt.graph import ChannelGraph
    from halp_trt.specs import load_model

    graph = ChannelGraph(load_model(SPEC).eval(), torch.randn(1, 3, 32, 32))
    sizes = {g.id: g.size for g in graph.prunable}
    assign = [
        {str(g): max(1, s // 2) for g, s in sizes.items()},
        {str(g): s for g, s in sizes.items()},
        {str(g): (s if i % 2 else max(1, s // 4)) for i, (g, s) in enumerate(sizes.items())},
    ]
    base = macs_of(None)
    fractions = [macs_of({int(g): k for g, k in a.items()}) / base for a in assign]
    rows = [{"model": "unpruned", "sample": False, "measured_ms": 10.0, "pred_table_ms": 10.0}]
    rows += [
        {"model": f"uniform_{f:g}", "sample": False, "measured_ms": 9.0, "pred_table_ms": 9.0}
        for f in (0.75, 0.5)
    ]
    rows += [
        {"model": f"pruned_{i:02d}", "sample": True, "measured_ms": 10 * f,
         "pred_table_ms": 10 * f * (1.1 if i == 0 else 1.0)}
        for i, f in enumerate(fractions)
    ]  # fmt: skip
    run = {"model": SPEC, "input_shape": [4, 3, 32, 32], "backend": "onnxruntime",
           "step": 1, "rows": rows, "assignments": assign}  # fmt: skip
    return run, fractions


def test_macs_and_table_ratios_against_the_measured_ones(tmp_path):
    fm = load_bench("fidelity_macs")
    run, fractions = fidelity_run()
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    out = tmp_path / "cmp.json"
    assert fm.main([str(path), "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"][0]
    rows = {r["model"]: r for r in res["rows"]}
    assert rows["pruned_01"]["macs_ratio"] == pytest.approx(1.0)  # every group kept whole
    assert fractions[0] < 0.5 and 0.25 < fractions[2] < 1.0
    for i, f in enumerate(fractions):
        r = rows[f"pruned_{i:02d}"]
        assert r["measured_ratio"] == pytest.approx(f)
        assert r["macs_ratio"] == pytest.approx(f) and r["err_macs"] == pytest.approx(0, abs=1e-9)
    assert rows["pruned_00"]["err_table"] == pytest.approx(0.1)
    assert res["table"]["median_abs"] == pytest.approx(0.0, abs=1e-9)
    assert res["table"]["max_abs"] == pytest.approx(0.1)
    assert res["macs"]["max_abs"] == pytest.approx(0.0, abs=1e-9)
    assert res["macs"]["spearman"] == pytest.approx(1.0) and res["samples"] == 3
    assert res["macs"]["pairs_misordered"] == 0
    # A uniform copy is rebuilt at its fraction: half the widths, about a quarter the MACs.
    assert 0.2 < rows["uniform_0.5"]["macs_ratio"] < 0.3


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.pop("assignments"), "not a bench/lut_fidelity.py result"),
        (lambda r: r["rows"].reverse(), "first row is not the unpruned model"),
        (lambda r: r["assignments"].pop(), "3 pruned rows but 2 assignments"),
        (lambda r: r["rows"][4].pop("measured_ms"), "lacks measured_ms/pred_table_ms"),
        (lambda r: r.update(model="halp_trt.models:nope"), "cannot build halp_trt.models:nope"),
        (lambda r: r["assignments"][0].update({"9999": 4}), "are not prunable groups"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, mutate, message):
    fm = load_bench("fidelity_macs")
    run, _ = fidelity_run()
    mutate(run)
    path, out = tmp_path / "run.json", tmp_path / "cmp.json"
    path.write_text(json.dumps(run))
    assert fm.main([str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_unreadable_file_and_missing_out_dir(tmp_path, capsys):
    fm = load_bench("fidelity_macs")
    assert fm.main([str(tmp_path / "none.json")]) == 2
    assert "cannot read a JSON file" in capsys.readouterr().err
    run, _ = fidelity_run()
    (tmp_path / "run.json").write_text(json.dumps(run))
    assert fm.main([str(tmp_path / "run.json"), "--out", str(tmp_path / "no/x.json")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_misordered_pairs():
    fm = load_bench("fidelity_macs")
    assert fm.misordered([1, 2, 3], [1, 2, 3]) == 0
    assert fm.misordered([1, 2, 3], [3, 2, 1]) == 1
    assert fm.misordered([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
