"""bench/plan_shapes.py: bad input stops it in one line before any training; a tiny
residual network's plans are split into coupled and single groups."""

from __future__ import annotations

import copy
import json
import sys

import pytest
import torch
import torch.nn as nn

from tests.conftest import load_bench


class TinyRes(nn.Module):
    """A stem and one basic block: one residual stream (two BNs), one inner width (one)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32))
        self.c1 = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32))
        self.c2 = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        s = torch.relu(s + self.c2(torch.relu(self.c1(s))))
        return self.fc(s.mean((2, 3)))


TINY = f"{__file__}:TinyRes"


@pytest.fixture(scope="module")
def shapes():
    yield load_bench("plan_shapes")
    sys.modules.pop("bench_plan_shapes", None)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    pareto = load_bench("pareto")
    path = tmp_path_factory.mktemp("t") / "macs.db"
    pareto.macs_table(path, TinyRes(), torch.randn(2, 3, 8, 8), 8, 8).close()
    sys.modules.pop("bench_pareto", None)
    return path


def argv(table, out, *extra):
    return [
        "--model", TINY, "--data", "digits", "--input-shape", "2,3,8,8", "--table", str(table),
        "--pretrain-epochs", "0", "--batches", "2", "--out", str(out), *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--importances", "taylor-abs,fisher"], "unknown importance(s) fisher"),
        (["--targets", "0.5x,1x"], "target '1x' must be a fraction below 1x"),
        (["--min-keep", "1"], "--min-keep must be a fraction"),
        (["--batches", "0"], "--batches must be at least 1"),
        (["--evaluate", "-1"], "--evaluate must be at least 0"),
        (["--seeds", "0,x"], "comma-separated integers"),
        (["--seeds", "1,1"], "names a seed twice"),
    ],
)
def test_bad_input(shapes, table, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setattr(shapes, "plans", lambda *a, **k: pytest.fail("work before checks"))
    out = tmp_path / "sub" / "s.json"
    assert shapes.main(argv(table, out, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "sub").exists()


def test_missing_table_is_one_line(shapes, tmp_path, capsys):
    assert shapes.main(argv(tmp_path / "none.db", tmp_path / "s.json")) == 2
    assert "no such file" in capsys.readouterr().err


def test_plans_by_kind_of_group(shapes, table, tmp_path, capsys):
    out = tmp_path / "s.json"
    names = "taylor-abs,taylor-abs-mean,l2"
    assert shapes.main(argv(table, out, "--targets", "0.6x,0.3x", "--importances", names)) == 0
    result = json.loads(out.read_text())
    assert [(p["importance"], p["target"]) for p in result["plans"]] == [
        (n, t) for n in names.split(",") for t in ("0.6x", "0.3x")
    ]
    for p in result["plans"]:
        assert p["predicted_ratio"] <= float(p["target"][:-1]) * 1.001
        assert p["coupled"]["groups"] == 1 and p["single"]["groups"] == 1
        for g in p["groups"]:
            assert g["kept"] % 8 == 0 or g["kept"] == g["size"]
            assert g["fraction"] == g["kept"] / g["size"]
            assert g["at_floor"] == (g["kept"] == 16)  # 0.3 of 32, up to whole bundles of 8
    assert "coupled" in capsys.readouterr().out


def test_evaluate_scores_each_plan_of_each_seed(shapes, table, tmp_path):
    out = tmp_path / "s.json"
    extra = ["--targets", "0.5x", "--importances", "taylor-abs,l2", "--seeds", "0,1"]
    assert shapes.main(argv(table, out, *extra, "--evaluate", "2")) == 0
    result = json.loads(out.read_text())
    assert [d["seed"] for d in result["dense"]] == [0, 1]
    assert [(p["seed"], p["importance"]) for p in result["plans"]] == [
        (0, "taylor-abs"), (0, "l2"), (1, "taylor-abs"), (1, "l2"),
    ]  # fmt: skip
    for p in result["plans"]:
        assert p["adapted"]["bn_batches"] == 2 and 0 <= p["adapted"]["val_acc"] <= 1
    means = {(m["importance"], m["target"]): m for m in result["adapted_mean"]}
    acc = [p["adapted"]["val_acc"] for p in result["plans"] if p["importance"] == "l2"]
    assert means["l2", "0.5x"]["seeds"] == 2
    assert means["l2", "0.5x"]["val_acc"] == pytest.approx(sum(acc) / 2)


def test_probe_masks_the_plan_and_restores_the_dense_model(shapes):
    from halp_trt.train import load_data
    from halp_trt.train.trainer import recalibrate_bn

    torch.manual_seed(0)
    dense = TinyRes().eval()
    data = load_data("digits", channels=3, size=(8, 8))
    probe = shapes.Probe(dense, torch.randn(2, 3, 8, 8), data, 2, 16, seed=0)
    (stream,) = [g for g in probe.graph.prunable if len(g.norms) > 1]
    (inner,) = [g for g in probe.graph.prunable if len(g.norms) == 1]
    whole = {stream.id: range(32), inner.id: range(32)}
    first = probe(whole)
    half = probe({stream.id: range(32), inner.id: range(16)})
    # The inner width's dropped channels are zero in c1 (its producer) and c2's input.
    assert probe.model.c1[0].weight[16:].abs().sum() == 0
    assert probe.model.c2[0].weight[:, 16:].abs().sum() == 0
    assert probe.model.c1[0].weight[:16].abs().sum() > 0
    assert half != first
    assert probe(whole) == first  # the dense weights come back for every plan
    # Keeping everything is the dense model with its BatchNorms re-estimated alike.
    ref = copy.deepcopy(dense)
    gen = torch.Generator().manual_seed(1)
    loader = torch.utils.data.DataLoader(data.train, batch_size=16, shuffle=True, generator=gen)
    recalibrate_bn(ref, loader, 2, "cpu")
    from halp_trt.train import evaluate

    assert (first["val_loss"], first["val_acc"]) == pytest.approx(evaluate(ref, data.val))
