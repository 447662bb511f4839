"""Detection through the Python API: data, loss, NMS, COCO mAP, pruning with the heads
intact, ONNX export."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("pycocotools")

from halp_trt import PruneConfig  # noqa: E402
from halp_trt.detection import (  # noqa: E402
    CLASSES,
    DetectionTraining,
    SSDDetector,
    batched_nms,
    decode,
    encode,
    make_detection_data,
    match,
    mean_average_precision,
    multibox_loss,
    nms,
    prune_detector,
)
from halp_trt.errors import UserError  # noqa: E402
from halp_trt.graph import ChannelGraph, uniform_keep  # noqa: E402

from .test_prune_support import analytic_table  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return make_detection_data(16, seed=3)


def test_data_is_deterministic_and_boxes_lie_inside(data):
    again = make_detection_data(16, seed=3)
    assert torch.equal(data.images, again.images)
    assert all(torch.equal(a, b) for a, b in zip(data.boxes, again.boxes))
    assert all(torch.equal(a, b) for a, b in zip(data.labels, again.labels))
    assert not torch.equal(data.images, make_detection_data(16, seed=4).images)
    assert data.images.shape == (16, 3, 64, 64)
    assert data.images.min() >= 0.0 and data.images.max() <= 1.0
    for b, lab in zip(data.boxes, data.labels):
        assert 1 <= len(b) == len(lab) <= 4
        assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 64).all()
        assert (b[:, 2:] - b[:, :2] >= 6).all()
        assert ((lab >= 0) & (lab < len(CLASSES))).all()
    # All four classes appear, on more than one texture.
    assert set(torch.cat(data.labels).tolist()) == set(range(len(CLASSES)))
    with pytest.raises(UserError, match="n >= 1"):
        make_detection_data(0)


def test_match_and_box_coding_round_trip(data):
    model = SSDDetector()
    priors = model.priors()
    assert priors.shape == (model(data.images[:1])[0].shape[1], 4)
    targets, offsets = match(priors, data.boxes[0], data.labels[0])
    pos = targets > 0
    # Every box has a prior, and the coding decodes back to the boxes.
    assert pos.sum() >= len(data.boxes[0])
    from halp_trt.detection import decode_boxes

    decoded = decode_boxes(offsets[pos], priors[pos])
    for box in decoded:
        assert (data.boxes[0] - box).abs().max(1).values.min() < 1e-3
    assert torch.allclose(encode(decoded, priors[pos]), offsets[pos], atol=1e-4)
    # A box no prior overlaps by 0.5 still gets its best prior.
    tiny, _ = match(priors, torch.tensor([[30.0, 30.0, 33.0, 33.0]]), torch.tensor([2]))
    assert tiny.tolist().count(3) == 1 and tiny.sum() == 3


def test_loss_decreases_on_a_few_steps(data):
    torch.manual_seed(0)
    model = SSDDetector()
    priors = model.priors()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    images, boxes, labels = data.images[:8], data.boxes[:8], data.labels[:8]
    losses = []
    for _ in range(6):
        loss = multibox_loss(*model(images), priors, boxes, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_nms_keeps_the_best_of_overlapping_boxes_per_class():
    boxes = torch.tensor(
        [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9.5]], dtype=torch.float32
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms(boxes, scores, 0.99).tolist() == [3, 0, 1, 2]
    # Another class is never suppressed.
    classes = torch.tensor([0, 1, 0, 0])
    assert sorted(batched_nms(boxes, scores, classes, 0.5).tolist()) == [1, 2, 3]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


def test_map_from_pycocotools_is_one_when_perfect_and_low_on_garbage(data):
    perfect = [
        {"boxes": b, "scores": torch.ones(len(b)), "labels": lab}
        for b, lab in zip(data.boxes, data.labels)
    ]
    got = mean_average_precision(perfect, data.boxes, data.labels, len(CLASSES))
    assert got["map"] == pytest.approx(1.0) and got["map_50"] == pytest.approx(1.0)
    gen = torch.Generator().manual_seed(0)
    garbage = []
    for _ in data.boxes:
        xy = torch.rand(10, 2, generator=gen) * 50
        garbage.append(
            {
                "boxes": torch.cat([xy, xy + 5 + torch.rand(10, 2, generator=gen) * 10], 1),
                "scores": torch.rand(10, generator=gen),
                "labels": torch.randint(0, len(CLASSES), (10,), generator=gen),
            }
        )
    bad = mean_average_precision(garbage, data.boxes, data.labels, len(CLASSES))
    assert bad["map"] < 0.05 and bad["map_50"] < 0.15
    # Right boxes, wrong classes: nothing matches.
    wrong = [{**p, "labels": (p["labels"] + 1) % len(CLASSES)} for p in perfect]
    assert mean_average_precision(wrong, data.boxes, data.labels, len(CLASSES))["map"] < 0.05
    assert mean_average_precision([{**p, "boxes": p["boxes"][:0], "scores": p["scores"][:0],
                                    "labels": p["labels"][:0]} for p in perfect],
                                  data.boxes, data.labels, len(CLASSES))["map"] == 0.0  # fmt: skip


def test_decode_returns_the_encoded_boxes():
    model = SSDDetector()
    priors = model.priors()
    boxes = torch.tensor([[10.0, 12.0, 30.0, 28.0], [40.0, 5.0, 60.0, 22.0]])
    labels = torch.tensor([2, 0])
    targets, offsets = match(priors, boxes, labels)
    logits = torch.full((1, len(priors), len(CLASSES) + 1), -10.0)
    logits[0, torch.arange(len(priors)), targets] = 10.0
    (det,) = decode(logits, offsets[None], priors, image_size=64)
    assert sorted(det["labels"].tolist()) == [0, 2]
    order = det["labels"].argsort(descending=True)
    assert torch.allclose(det["boxes"][order], boxes, atol=1e-3)


def test_channel_graph_freezes_the_heads_and_prunes_the_rest():
    model = SSDDetector().eval()
    x = torch.randn(2, 3, 64, 64)
    graph = ChannelGraph(model, x)
    head_layers = {f"{h}.{i}" for h in ("cls_heads", "box_heads") for i in range(3)}
    for group in graph.groups:
        producers = {r.layer for r in group.producers}
        if producers & head_layers:
            assert not group.prunable and producers <= head_layers
    pruned_layers = {r.layer for g in graph.prunable for r in g.producers}
    assert {"neck.0.0", "neck.1.0", "neck.2.0", "backbone.0.0.0", "backbone.3.1.0"} <= (
        pruned_layers
    )
    keep = uniform_keep(graph, 0.5)
    assert graph.check(keep).passed
    shapes = [o.shape for o in model(x)]
    slim = graph.remove(keep)
    assert [o.shape for o in slim(x)] == shapes
    assert slim.neck[0][0].out_channels == 32


def test_prune_detector_keeps_head_outputs_and_matches_masked(tmp_path, data):
    torch.manual_seed(0)
    model = SSDDetector()
    x = torch.zeros(2, 3, 64, 64)
    dense = copy.deepcopy(model).eval()
    table = analytic_table(tmp_path / "ssd.lut", model, x, step=8)
    try:
        result = prune_detector(
            model,
            data,
            table,
            PruneConfig(target="0.5x", steps=2, interval=1),
            DetectionTraining(epochs=1, batch_size=8),
            batch=2,
            say=lambda *_: None,
        )
    finally:
        table.close()
    slim, plan = result.model, result.plan
    assert plan.check["passed"] and plan.predicted_ms <= plan.target_ms * 1.001
    assert [o.shape for o in slim(x)] == [o.shape for o in dense(x)]
    assert sum(p.numel() for p in slim.parameters()) < 0.8 * sum(
        p.numel() for p in dense.parameters()
    )
    assert len(result.log["steps"]) == 2
    # slimmed right after the last step and trained on with its AdamW state
    assert result.log["slimmed_at"] == result.log["steps"][-1]["iteration"]
    assert sum(r["epoch"] == 1 and "slimmed_at" in r for r in result.log["epochs"]) == 1
    assert slim.cls_heads[0].out_channels == dense.cls_heads[0].out_channels


@pytest.mark.parametrize("short_run", ["calibrate", "train"])
def test_a_short_detection_run_prunes_before_training(tmp_path, data, short_run):
    """4 iterations leave room for one step: by default it is taken before the first
    iteration, scored with the detection loss on the 4 minibatches of an epoch, and the
    detector trains slim from there; ``short_run="train"`` takes it while training."""
    torch.manual_seed(0)
    model = SSDDetector()
    x = torch.zeros(2, 3, 64, 64)
    dense = copy.deepcopy(model).eval()
    table = analytic_table(tmp_path / "ssd.lut", model, x, step=8)
    said: list[str] = []
    try:
        result = prune_detector(
            model, data, table, PruneConfig(target="0.5x", steps=2, short_run=short_run),
            DetectionTraining(epochs=1, batch_size=4), batch=2, say=said.append,
        )  # fmt: skip
    finally:
        table.close()
    steps = result.log["steps"]
    assert len(steps) == 1 and result.plan.predicted_ms <= result.plan.target_ms * 1.001
    assert [o.shape for o in result.model(x)] == [o.shape for o in dense(x)]
    if short_run == "calibrate":
        assert steps[0]["iteration"] == 0 and steps[0]["minibatches"] == 4
        assert result.log["slimmed_at"] == 0
        assert any(line.startswith("note: 4 training iterations leave room") for line in said)
        assert any("one step before training, scored on 4 minibatches" in s for s in said)
    else:
        assert steps[0]["iteration"] > 0 and result.log["slimmed_at"] == steps[0]["iteration"]
        assert not any("before training" in line for line in said)


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    import numpy as np
    import onnxruntime as ort

    from halp_trt.export import export_onnx

    torch.manual_seed(0)
    model = SSDDetector().eval()
    report = export_onnx(model, (2, 3, 64, 64), tmp_path / "ssd.onnx")
    assert report.parity.passed and len(report.outputs) == 2
    sess = ort.InferenceSession(str(tmp_path / "ssd.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, 64, 64)
    logits, offsets = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = model(x)
    np.testing.assert_allclose(logits, ref[0].numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(offsets, ref[1].numpy(), rtol=1e-3, atol=1e-4)
