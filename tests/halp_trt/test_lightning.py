"""HALPCallback in a real Lightning Trainer on CPU: schedule in optimizer steps, slimming
in place, gradient accumulation, AMP overflow, short fits, bad set-ups, resuming."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

L = pytest.importorskip("lightning")

from halp_trt.config import PruneConfig  # noqa: E402
from halp_trt.errors import UserError  # noqa: E402
from halp_trt.integrations.lightning import HALPCallback  # noqa: E402
from halp_trt.models import CifarResNet  # noqa: E402
from halp_trt.prune import PrunePlan  # noqa: E402

from ..conftest import subprocess_env  # noqa: E402
from .test_prune_support import analytic_table  # noqa: E402

SHAPE = (1, 3, 16, 16)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return analytic_table(
        tmp_path_factory.mktemp("lut") / "r8.lut",
        CifarResNet(8, 10, 3, width=16),
        torch.zeros(SHAPE),
    )


class Classifier(L.LightningModule):
    """ResNet-8 (16/32/64 channels) on 16x16 inputs; ``boom`` makes that optimizer
    step's gradients infinite (a mixed-precision overflow)."""

    def __init__(self, example: bool = True, boom: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = CifarResNet(8, 10, 3, width=16)
        self.example_input_array = torch.zeros(SHAPE) if example else None
        self.boom = boom

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if self.boom is not None and self.trainer.global_step == self.boom:
            loss = loss * float("inf")
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def loader(batches: int, batch: int = 4):
    gen = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(
        torch.randn(batches * batch, 3, 16, 16, generator=gen),
        torch.randint(0, 10, (batches * batch,), generator=gen),
    )
    return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False)


def trainer(callbacks, **kwargs):
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **kwargs,
    }
    return L.Trainer(callbacks=callbacks, **options)


class MaskedCopy(L.Callback):
    """Keeps a copy of the masked, full-width module as training ends (before HALP's
    ``on_train_end`` slims it: callbacks run in list order)."""

    model = None

    def on_train_end(self, trainer, pl_module):
        self.model = copy.deepcopy(pl_module).eval()


def channels(module):
    return sum(m.out_channels for m in module.modules() if isinstance(m, torch.nn.Conv2d))


def test_prunes_at_optimizer_steps_and_slims_the_module_in_place(table, tmp_path):
    model = Classifier()
    before = channels(model)
    snap = MaskedCopy()
    halp = HALPCallback(table, "0.6x", steps=3, min_interval=1, plan_path=tmp_path / "plan.json")
    fit = trainer([snap, halp])
    fit.fit(model, loader(12))
    # 12 optimizer steps; 3 pruning steps over the first half: every 2 (no minimum
    # interval: by default, 40 apart, they would be one).
    assert [r.iteration for r in halp.pruner.history] == [2, 4, 6]
    assert [r.minibatches for r in halp.pruner.history] == [2, 2, 2]
    assert halp.pruner.iteration == fit.global_step == 12
    plan = halp.plan
    assert plan.check["passed"]
    assert plan.predicted_ms <= plan.target_ms * 1.001
    assert plan.target_ms == pytest.approx(0.6 * plan.base_ms)
    assert channels(model) < before
    assert channels(snap.model) == before
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), snap.model(x), rtol=1e-4, atol=1e-5)
    saved = PrunePlan.load(tmp_path / "plan.json")
    assert saved.predicted_ms == pytest.approx(plan.predicted_ms)
    assert saved.schedule["interval"] == 2


def test_gradient_accumulation_counts_optimizer_steps(table):
    halp = HALPCallback(table, "0.6x", steps=2, interval=2)
    fit = trainer([halp], accumulate_grad_batches=3)
    fit.fit(Classifier(), loader(12))
    # 12 batches, 4 optimizer steps: pruned after the 2nd and 4th, importance once per
    # optimizer step (the accumulated gradient), not once per micro-batch.
    assert fit.global_step == halp.pruner.iteration == 4
    assert [(r.iteration, r.minibatches) for r in halp.pruner.history] == [(2, 2), (4, 2)]


def test_mixed_precision_overflow_is_left_out_of_the_importance(table):
    from lightning.pytorch.plugins import MixedPrecision

    amp = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    halp = HALPCallback(table, "0.6x", steps=2, interval=3)
    fit = trainer([halp], plugins=[amp])
    fit.fit(Classifier(boom=1), loader(6))
    # The 2nd optimizer step overflows: the scaler skips it, and so does the importance.
    assert [(r.iteration, r.minibatches) for r in halp.pruner.history] == [(3, 2), (6, 3)]
    assert halp.plan.check["passed"]


def test_short_fit_prunes_fewer_times_with_a_note(table):
    halp = HALPCallback(table, "0.6x", steps=30, min_interval=1)
    with pytest.warns(UserWarning, match="too few for 30 pruning steps"):
        trainer([halp]).fit(Classifier(), loader(5))
    assert halp.pruner.steps == 2 and not halp.pruner.calibration_batches
    assert [r.iteration for r in halp.pruner.history] == [1, 2]
    assert halp.plan.predicted_ms <= halp.plan.target_ms * 1.001
    # asked to prune while training, a fit with room for one step takes it at iteration 1
    halp = HALPCallback(table, "0.6x", steps=30, short_run="train")
    with pytest.warns(UserWarning) as warned:
        trainer([halp]).fit(Classifier(), loader(5))
    said = [str(w.message) for w in warned]
    assert any("in one step, at iteration 1" in m for m in said), said
    assert not any("before training" in m for m in said), said
    assert [r.iteration for r in halp.pruner.history] == [1]


class Counted(Classifier):
    """Logs its loss and counts its training steps; ``returns`` picks what it returns."""

    def __init__(self, returns: str = "loss") -> None:
        super().__init__()
        self.returns, self.calls, self.autocast = returns, 0, []

    def training_step(self, batch, batch_idx):
        self.calls += 1
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        loss = super().training_step(batch, batch_idx)
        self.log("train_loss", loss, on_step=True)
        return {"loss": loss} if self.returns == "dict" else loss if self.returns else None


def test_short_fit_prunes_before_training_with_its_training_step(table):
    """By default a fit with room for one step prunes before the first optimizer step,
    scored on the first batches with the module's ``training_step`` (its logging muted):
    the plan ``Pruner.calibrate()`` makes on the same batches with the same loss."""
    from halp_trt.prune import Pruner

    model, snap = Counted(returns="dict"), MaskedCopy()
    before = copy.deepcopy(model)
    halp = HALPCallback(table, "0.6x", steps=30)
    fit = trainer([snap, halp], max_epochs=2)
    with pytest.warns(UserWarning, match="pruning once before training, scored on 5 "):
        fit.fit(model, loader(5))
    assert [(r.iteration, r.minibatches) for r in halp.pruner.history] == [(0, 5)]
    assert model.calls == 5 + 10  # five scored, ten trained
    assert fit.global_step == halp.pruner.iteration == 10
    assert halp.plan.predicted_ms <= halp.plan.target_ms * 1.001 and halp.plan.check["passed"]
    direct = Pruner(before, torch.zeros(SHAPE), table, "0.6x", schedule="oneshot",
                    calibration_batches=5)  # fmt: skip
    direct.calibrate(iter(loader(5)))
    assert direct.keep == halp.pruner.keep
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():  # trained at its final widths, then slimmed to them
        torch.testing.assert_close(model.eval()(x), snap.model(x), rtol=1e-4, atol=1e-5)
    assert channels(model) < channels(before)
    # calibration asked for prunes before training in a fit of any length
    halp = HALPCallback(table, "0.6x", schedule="oneshot", calibration_batches=3)
    trainer([halp], max_epochs=4).fit(Counted(), loader(5))
    assert [(r.iteration, r.minibatches) for r in halp.pruner.history] == [(0, 3)]


def test_a_short_fit_under_a_gradient_scaler_calibrates_in_full_precision(table):
    """Under 16-mixed the scored batches run outside autocast, as halp-trt's trainer
    scores them (an fp16 backward without the scaler's factor can underflow), and the
    plan is the full-precision one; training then runs under autocast, and so does the
    BatchNorm re-estimation at the end (the statistics as training computes them)."""
    from lightning.pytorch.plugins import MixedPrecision

    from halp_trt.prune import Pruner

    model = Counted()
    direct = Pruner(copy.deepcopy(model), torch.zeros(SHAPE), table, "0.6x",
                    schedule="oneshot", calibration_batches=5)  # fmt: skip
    direct.calibrate(iter(loader(5)))
    amp = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    halp = HALPCallback(table, "0.6x", steps=30, bn_batches=2)
    with pytest.warns(UserWarning, match="pruning once before training"):
        trainer([halp], max_epochs=2, plugins=[amp]).fit(model, loader(5))
    # scored in fp32, trained under autocast, statistics re-estimated as trained
    assert model.autocast == [False] * 5 + [True] * 10 + [True] * 2
    assert halp.pruner.keep == direct.keep


def bn_stats(module):
    return [
        (m.running_mean.clone(), m.running_var.clone())
        for m in module.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    ]


def test_batchnorm_statistics_are_re_estimated_on_the_slim_module(table):
    """``bn_batches=3``: after slimming, the running statistics are the plain average
    over the first 3 training batches through ``training_step`` (logging muted, no
    gradient), what ``recalibrate_bn`` gives on the same batches; the weights are those of
    the same fit without it."""
    from halp_trt.train import recalibrate_bn

    def fit(bn_batches):
        model = Counted()
        halp = HALPCallback(table, "0.6x", steps=30, bn_batches=bn_batches)
        with pytest.warns(UserWarning, match="pruning once before training"):
            trainer([halp], max_epochs=2).fit(model, loader(5))
        return model

    plain, precise = fit(0), fit(3)
    assert plain.calls == 5 + 10 and precise.calls == 5 + 10 + 3
    for a, b in zip(plain.state_dict().items(), precise.state_dict().items()):
        assert a[0] == b[0]
        if not a[0].endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(a[1], b[1]), a[0]
    twin = copy.deepcopy(plain.net)
    assert recalibrate_bn(twin, loader(5), 3, torch.device("cpu")) == 3
    for (mean, var), (want_mean, want_var), (old_mean, _) in zip(
        bn_stats(precise.net), bn_stats(twin), bn_stats(plain.net)
    ):
        torch.testing.assert_close(mean, want_mean)
        torch.testing.assert_close(var, want_var)
        assert not torch.allclose(mean, old_mean)


def test_recalibrate_bn_over_an_empty_iterable_leaves_the_statistics():
    from halp_trt.train import recalibrate_bn

    model = Classifier().net
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_()
                m.num_batches_tracked += 7
    before = copy.deepcopy(model.state_dict())
    assert recalibrate_bn(model, iter(()), 4, torch.device("cpu")) == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("returns", ["", "manual"])
def test_a_calibration_it_cannot_score_is_one_line(table, returns):
    model = Counted(returns=returns)
    if returns == "manual":
        model.automatic_optimization = False
    with pytest.raises(UserError, match="training_step") as info:
        trainer([HALPCallback(table, "0.6x", steps=30)]).fit(model, loader(5))
    assert "\n" not in str(info.value)
    if returns == "manual":  # refused at fit start, before any step
        assert "short_run='train'" in str(info.value) and model.calls == 0
    else:  # the first calibration batch's step returned nothing
        assert "returned none" in str(info.value) and model.calls == 1


def test_a_resumed_short_fit_keeps_its_calibrated_step(table, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(ckpt_path=None, checkpoints=()):
        halp = HALPCallback(table, "0.6x", steps=30)
        fit = trainer([halp, *checkpoints], max_epochs=2, enable_checkpointing=bool(checkpoints))
        fit.fit(Classifier(), loader(5), ckpt_path=ckpt_path)
        return halp

    whole = run(checkpoints=[ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)])
    resumed = run(ckpt_path=tmp_path / "epoch=0-step=5.ckpt")
    assert [r.iteration for r in resumed.pruner.history] == [0]
    assert resumed.pruner.calibration_batches == whole.pruner.calibration_batches == 5
    assert resumed.plan.widths == whole.plan.widths


def test_missing_example_input_is_a_one_line_user_error(table):
    with pytest.raises(UserError, match="example_input_array") as info:
        trainer([HALPCallback(table, "0.6x")]).fit(Classifier(example=False), loader(2))
    assert "\n" not in str(info.value)


def test_bad_settings_are_refused_before_any_fit(table):
    with pytest.raises(TypeError, match="interal"):
        HALPCallback(table, "0.6x", interal=4)
    with pytest.raises(UserError, match="HALPCallback.bn_batches must be an integer >= 0, not -1"):
        HALPCallback(table, "0.6x", bn_batches=-1)
    model = Counted()
    model.automatic_optimization = False
    halp = HALPCallback(table, "0.6x", steps=2, interval=2, short_run="train", bn_batches=4)
    with pytest.raises(UserError, match="bn_batches=0") as info:
        trainer([halp]).fit(model, loader(5))
    assert "\n" not in str(info.value) and model.calls == 0
    with pytest.raises(UserError, match="steps must be an integer >= 1") as info:
        HALPCallback(table, "0.6x", steps=0)
    assert "\n" not in str(info.value)
    config = PruneConfig(target="3ms", steps=2, start=1)
    halp = HALPCallback.from_config(table, config, plan_path="plan.json")
    assert halp.config == config and halp.plan_path == "plan.json"


def test_resumed_fit_continues_with_the_same_masks_and_importance(table, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(ckpt_path=None, checkpoints=()):
        halp = HALPCallback(table, "0.6x", steps=3, interval=4)
        fit = trainer([halp, *checkpoints], max_epochs=2, enable_checkpointing=bool(checkpoints))
        fit.fit(Classifier(), loader(6), ckpt_path=ckpt_path)
        return halp

    saver = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    whole = run(checkpoints=[saver])
    # The checkpoint after epoch 0 (step 6): one pruning step done (at 4), two
    # minibatches of importance accumulated towards the next (at 8).
    resumed = run(ckpt_path=tmp_path / "epoch=0-step=6.ckpt")

    def steps(halp):
        return [(r.iteration, r.minibatches, r.kept, r.retained) for r in halp.pruner.history]

    assert steps(resumed) == steps(whole)
    assert [r.minibatches for r in resumed.pruner.history] == [4, 4, 4]
    assert resumed.pruner.keep == whole.pruner.keep
    assert resumed.plan.widths == whole.plan.widths


DDP_SCRIPT = """
import json, os, sys
import lightning as L
import torch
import torch.nn.functional as F
from halp_trt.integrations.lightning import HALPCallback
from halp_trt.models import CifarResNet

class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = CifarResNet(8, 10, 3, width=16)
        self.example_input_array = torch.zeros(1, 3, 16, 16)
    def forward(self, x):
        return self.net(x)
    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

torch.set_num_threads(1)
table, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
# "steps": two steps while training; "calibrate": the short fit's step before training
schedule = {"steps": 2, "interval": 2} if mode == "steps" else {}
gen = torch.Generator().manual_seed(1)
data = torch.utils.data.TensorDataset(
    torch.randn(64, 3, 16, 16, generator=gen), torch.randint(0, 10, (64,), generator=gen)
)
halp = HALPCallback(
    table, "0.6x", plan_path=os.path.join(out, "plan.json"), bn_batches=3, **schedule
)
model = Classifier()
trainer = L.Trainer(
    accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, callbacks=[halp],
    logger=False, enable_checkpointing=False, enable_progress_bar=False,
    enable_model_summary=False,
)
trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4))
rank = trainer.global_rank
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({
        "keep": {str(g): list(k) for g, k in halp.pruner.keep.items()},
        "iterations": [r.iteration for r in halp.pruner.history],
        "global_step": trainer.global_step,
        "shapes": {n: list(p.shape) for n, p in model.named_parameters()},
        "bn": [m.running_var.tolist() for m in model.modules()
               if isinstance(m, torch.nn.BatchNorm2d)],
    }, f)
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode, iterations", [("steps", [2, 4]), ("calibrate", [0])])
def test_two_ddp_ranks_prune_identically(table, tmp_path, mode, iterations):
    script = tmp_path / "fit.py"
    script.write_text(DDP_SCRIPT)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    args = ["--nproc_per_node=2", script, table.path, tmp_path, mode]
    proc = subprocess.run(
        [*torchrun, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=subprocess_env(tmp_path / "site"),  # Lightning imports torchvision
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # 64 samples, 2 ranks, batch 4: 8 optimizer steps on each rank.
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 8
    assert ranks[0]["iterations"] == ranks[1]["iterations"] == iterations
    assert ranks[0]["keep"] == ranks[1]["keep"]
    assert ranks[0]["shapes"] == ranks[1]["shapes"]
    # statistics re-estimated on each rank's shard, then averaged over the ranks
    assert len(ranks[0]["bn"]) == len(ranks[1]["bn"]) == 9
    for a, b in zip(ranks[0]["bn"], ranks[1]["bn"]):
        assert a == pytest.approx(b, rel=1e-6)
    assert PrunePlan.load(tmp_path / "plan.json").check["passed"]
