"""The built-in trainer: learning-rate schedule, training, pruning inside training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from halp_trt.errors import UserError
from halp_trt.prune import Pruner
from halp_trt.train import TrainConfig, Trainer, evaluate, load_data, lr_at, recalibrate_bn

from .test_prune_support import analytic_table


class Tiny(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Three classes told apart by which colour channel is bright."""
    rng = np.random.default_rng(0)
    n = 150
    labels = np.arange(n) % 3
    images = rng.normal(0, 1, (n, 3, 8, 8)).astype(np.float32)
    images[np.arange(n), labels] += 1.5
    path = tmp_path_factory.mktemp("toy") / "toy.npz"
    np.savez(path, images=images, labels=labels)
    return load_data(f"npz:{path}", channels=3, size=(8, 8))


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    torch.manual_seed(0)
    return analytic_table(
        tmp_path_factory.mktemp("lut") / "tiny.lut", Tiny(), torch.randn(1, 3, 8, 8)
    )


def test_lr_warms_up_linearly_then_follows_cosine_to_zero():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(0, 10, 0, 0.3) == pytest.approx(0.3)


def test_config_validation():
    with pytest.raises(UserError, match=r"TrainConfig.label_smoothing must be .* < 1.0, not 1.0"):
        TrainConfig(label_smoothing=1.0)
    with pytest.raises(UserError, match=r"TrainConfig.batch_size must be an integer >= 1, not 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(UserError, match="TrainConfig.batch_size"):
        TrainConfig(batch_size=True)  # a bool is not a batch size
    with pytest.raises(UserError, match=r"TrainConfig.bn_batches must be an integer >= 0, not -1"):
        TrainConfig(bn_batches=-1)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            TrainConfig(device="cuda").resolved_device()
        with pytest.raises(UserError, match="AMP"):
            Trainer(Tiny(), None, TrainConfig(amp=True))


def test_training_learns_the_toy_problem(toy):
    torch.manual_seed(0)
    model = Tiny()
    before = evaluate(model, toy.val)[1]
    result = Trainer(model, toy, TrainConfig(epochs=4, batch_size=16, lr=0.1)).fit()
    assert [e["epoch"] for e in result.epochs] == [1, 2, 3, 4]
    assert result.epochs[-1]["val_acc"] >= 0.9 > before
    assert result.epochs[-1]["train_loss"] < result.epochs[0]["train_loss"]
    assert result.iterations == 4 * (120 // 16)
    assert not result.steps and result.pruning_overhead is None


def test_pruning_inside_training_logs_every_step(toy, tiny_table):
    torch.manual_seed(0)
    model = Tiny()
    x = torch.randn(1, 3, 8, 8)
    pruner = Pruner(model, x, tiny_table, "0.9x", steps=3, interval=3, bundle=2)
    seen = []
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.1, eval_steps=True)
    result = Trainer(model, toy, cfg, pruner=pruner, on_step=seen.append).fit()
    assert [s["iteration"] for s in result.steps] == [3, 6, 9]
    assert seen == result.steps
    for s in result.steps:
        assert s["predicted_ms"] <= s["budget_ms"] + 1e-12
        assert s["minibatches"] == 3
        assert math.isfinite(s["train_loss"]) and 0 <= s["train_acc"] <= 1
        assert 0 <= s["val_acc"] <= 1
    assert result.pruner_s > 0 and result.pruning_iterations_s > result.pruner_s
    assert result.pruning_overhead == pytest.approx(
        result.pruner_s / (result.pruning_iterations_s - result.pruner_s)
    )
    slim, plan = pruner.finalize()
    assert plan.predicted_ms <= plan.target_ms
    assert result.bn_batches == 120 // 16  # the default 100 stops at one pass
    assert evaluate(slim, toy.val)[1] == pytest.approx(result.final["val_acc"])


def test_an_epoch_just_after_a_pruning_step_is_also_read_with_settled_statistics(
    toy, tiny_table, monkeypatch
):
    # Right after a step the BatchNorms' running statistics are stale and an epoch's
    # validation accuracy can read near chance; such an epoch is also evaluated on a copy
    # with its statistics re-estimated, and the training itself is left exactly as it was.
    import halp_trt.train.trainer as trainer

    def run(settle: int):
        monkeypatch.setattr(trainer, "BN_SETTLE_ITERATIONS", settle)
        torch.manual_seed(0)
        model = Tiny()
        pruner = Pruner(model, torch.randn(1, 3, 8, 8), tiny_table, "0.9x", steps=2, interval=6, bundle=2)  # fmt: skip
        cfg = TrainConfig(epochs=3, batch_size=16, lr=0.1)
        result = Trainer(model, toy, cfg, pruner=pruner).fit()
        return result, {k: v.clone() for k, v in model.state_dict().items()}

    plain, weights = run(0)
    read, weights_read = run(30)
    assert weights.keys() == weights_read.keys()
    assert all(torch.equal(weights[k], weights_read[k]) for k in weights)
    assert [e["val_acc"] for e in plain.epochs] == [e["val_acc"] for e in read.epochs]
    assert all("val_acc_settled" not in e for e in plain.epochs)
    # Steps in iterations 6 and 12 (from 0), 8 iterations an epoch: epochs 1, 2 and 3 end
    # 1, 2 and 9 iterations after one, all fewer than 30.
    assert [s["iteration"] for s in read.steps] == [6, 12]
    assert [e.get("iterations_since_step") for e in read.epochs] == [1, 2, 9]
    assert all(0 <= e["val_acc_settled"] <= 1 for e in read.epochs)
    short, _ = run(5)  # settled within 5 iterations: epoch 3 is read as it is
    assert [e.get("iterations_since_step") for e in short.epochs] == [1, 2, None]
    said = [trainer._since_step(n) for n in (0, 1, 9)]
    assert said == ["pruned in the last iteration", "pruned 1 iteration before", "pruned 9 iterations before"]  # fmt: skip


def _batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 3, 8, 8, generator=gen) * (1 + i), torch.zeros(8, dtype=torch.long))
        for i in range(n)
    ]


def test_recalibrate_bn_averages_the_minibatch_statistics_of_the_final_weights():
    torch.manual_seed(0)
    model = Tiny().eval()
    for bn in (model.bn1, model.bn2):  # statistics of weights that are gone
        bn.running_mean.fill_(5.0)
        bn.running_var.fill_(9.0)
    weights = {k: v.clone() for k, v in model.named_parameters()}
    batches = _batches(5)
    with torch.no_grad():
        h = [model.conv1(x) for x, _ in batches[:3]]
    mean = torch.stack([t.mean((0, 2, 3)) for t in h]).mean(0)
    var = torch.stack([t.transpose(0, 1).reshape(16, -1).var(1) for t in h]).mean(0)

    assert recalibrate_bn(model, batches, 3, "cpu") == 3
    assert torch.allclose(model.bn1.running_mean, mean, atol=1e-5)
    assert torch.allclose(model.bn1.running_var, var, rtol=1e-4)
    assert not torch.allclose(model.bn2.running_mean, torch.full((16,), 5.0))
    assert model.bn1.momentum == 0.1 and model.bn1.num_batches_tracked.item() == 3
    assert not model.training  # its mode as it was
    for k, v in model.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k  # only the statistics move


def test_recalibrate_bn_without_batches_or_batchnorms_changes_nothing():
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert recalibrate_bn(model, _batches(2), 0, "cpu") == 0
    assert recalibrate_bn(model, [], 10, "cpu") == 0  # an empty loader keeps the old ones
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert recalibrate_bn(nn.Sequential(nn.Conv2d(3, 4, 1)), _batches(2), 10, "cpu") == 0


def test_fit_reestimates_the_batchnorm_statistics_after_the_last_epoch(toy):
    runs = {}
    for n in (3, 0):
        torch.manual_seed(0)
        model = Tiny()
        cfg = TrainConfig(epochs=2, batch_size=16, lr=0.1, bn_batches=n)
        runs[n] = model, Trainer(model, toy, cfg).fit()
    (on, r_on), (off, r_off) = runs[3], runs[0]
    assert r_on.bn_batches == 3 and on.bn1.num_batches_tracked.item() == 3
    assert r_off.bn_batches == 0 and off.bn1.num_batches_tracked.item() == r_off.iterations
    assert r_on.final["val_acc"] == pytest.approx(evaluate(on, toy.val)[1])
    assert r_off.final["val_acc"] == pytest.approx(r_off.epochs[-1]["val_acc"])
    assert torch.equal(on.conv1.weight, off.conv1.weight)  # the same training
    assert not torch.allclose(on.bn1.running_mean, off.bn1.running_mean)


def test_schedule_longer_than_training_is_refused(toy, tiny_table):
    model = Tiny()
    pruner = Pruner(
        model, torch.randn(1, 3, 8, 8), tiny_table, "0.9x", steps=30, interval=40, bundle=2
    )
    with pytest.raises(UserError, match="needs 1200 iterations but training runs 7"):
        Trainer(model, toy, TrainConfig(epochs=1, batch_size=16), pruner=pruner).fit()


def test_slim_training_after_the_last_step_matches_the_masked_one(toy, tiny_table, tmp_path):
    """Removing the channels after the last pruning step and training the slim model on,
    momentum carried, gives the weights that training the masked model to the end does."""
    runs = {}
    for slim in (True, False):
        torch.manual_seed(0)
        model = Tiny()
        pruner = Pruner(
            model, torch.randn(1, 3, 8, 8), tiny_table, "0.9x", steps=2, interval=3, bundle=2
        )
        cfg = TrainConfig(epochs=3, batch_size=16, lr=0.1, slim=slim)
        trainer = Trainer(model, toy, cfg, pruner=pruner)
        result = trainer.fit()
        runs[slim] = model, pruner, result, trainer
    model, pruner, result, trainer = runs[True]
    assert result.slimmed_at == result.steps[-1]["iteration"] == 6 and result.slim_s > 0
    assert model.conv1.out_channels < 16 and trainer.model is model
    again, plan = pruner.finalize(tmp_path / "plan.json")  # what the callers do after fit
    assert again is model and (tmp_path / "plan.json").exists()
    assert pruner.finalize()[1] is plan

    masked, masked_pruner, masked_result, _ = runs[False]
    assert masked_result.slimmed_at is None and masked.conv1.out_channels == 16
    other, other_plan = masked_pruner.finalize()
    assert other_plan.keep == plan.keep
    theirs = other.state_dict()
    for k, v in model.state_dict().items():
        assert v.shape == theirs[k].shape, k
        assert torch.allclose(v.float(), theirs[k].float(), atol=1e-5, rtol=1e-4), k
    assert result.final["val_acc"] == pytest.approx(masked_result.final["val_acc"])
    assert result.iterations == masked_result.iterations


def test_a_calibrating_pruner_prunes_before_the_first_iteration(toy, tiny_table):
    """A pruner built with ``calibration_batches``: one step before training, scored on the
    first minibatches of a pass with the trainer's loss, then the whole run on the slim
    model."""
    x = torch.randn(1, 3, 8, 8)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.1, eval_steps=True)

    def build():
        torch.manual_seed(0)
        model = Tiny()
        pruner = Pruner(
            model, x, tiny_table, "0.9x", schedule="oneshot", calibration_batches=2, bundle=2
        )
        return model, pruner

    def scored(pruner):  # the scores the pruning step solves on
        got, scores = {}, pruner.importance.scores
        pruner.importance.scores = lambda: got.update(scores()) or dict(got)
        return got

    model, pruner = build()
    scores = scored(pruner)
    seen = []
    trainer = Trainer(model, toy, cfg, pruner=pruner, on_step=seen.append)
    result = trainer.fit()
    assert seen == result.steps and len(result.steps) == 1
    step = result.steps[0]
    assert (step["iteration"], step["epoch"], step["minibatches"]) == (0, 0, 2)
    assert 0 <= step["val_acc"] <= 1 and step["predicted_ms"] <= pruner.target_ms
    assert result.slimmed_at == 0 and trainer.model.conv1.out_channels < 16
    assert result.iterations == 2 * trainer.iterations_per_epoch
    slim, plan = pruner.finalize()
    assert slim is trainer.model and plan.history[0].iteration == 0

    # the same plan from the loader's first two minibatches and the trainer's loss
    by_hand_model, by_hand = build()
    torch.manual_seed(cfg.seed)
    loader, _ = Trainer(by_hand_model, toy, cfg)._loader()
    loss = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    hand_scores = scored(by_hand)
    by_hand.calibrate(loader, loss)
    assert by_hand.keep == pruner.keep and scores.keys() == hand_scores.keys()
    for gid, s in scores.items():
        assert s == pytest.approx(hand_scores[gid], rel=1e-6)
