"""An optimizer carried through the removal of channels (``finalize(optimizer=...)``)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from halp_trt.prune import Pruner
from halp_trt.prune.optim_state import carry, track

from .test_prune_support import analytic_table, batches


class Depthwise(nn.Module):
    """A stem, a depthwise 3x3 (removed in whole groups) and a pointwise layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 24, 1, bias=True)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.stem(x)))
        x = F.relu(self.bn2(self.dw(x)))
        return self.fc(F.relu(self.pw(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lut") / "depthwise.lut"
    return analytic_table(path, Depthwise(), torch.randn(2, 3, 16, 16))


def _run(table, slim: bool, data) -> tuple[nn.Module, dict]:
    """AdamW with a cosine LambdaLR; one pruning step at iteration 3; slimmed then or
    trained masked to the end. Returns the slim model and what happened."""
    torch.manual_seed(0)
    model = Depthwise()
    pruner = Pruner(model, torch.randn(2, 3, 16, 16), table, "0.85x", steps=1, interval=3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    total = len(data)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total))
    )
    seen: dict = {"slimmed_at": None}
    model.train()
    for it, (x, y) in enumerate(data, 1):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if not pruner.finalized:
            pruner.accumulate()
        opt.step()
        sched.step()
        if not pruner.finalized:
            pruner.step()
            if slim and pruner.done:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # every state carried
                    pruner.finalize(optimizer=opt)
                seen["slimmed_at"] = it
                seen["grads"] = [p.grad for g in opt.param_groups for p in g["params"]]
                seen["ids"] = {id(p) for p in model.parameters()}
                seen["opt_ids"] = {id(p) for g in opt.param_groups for p in g["params"]}
                seen["state"] = opt.state[model.dw.weight]
    out, _ = pruner.finalize()
    seen["lr"] = sched.get_last_lr()
    return out, seen


def test_adamw_and_scheduler_carry_through_the_removal_to_the_masked_run(table):
    """Slimmed after the pruning step and trained on with the same AdamW (both moments
    and its step count) and LambdaLR, the model ends where training masked to the end
    does: kept weights follow the same trajectory, depthwise groups included."""
    data = batches(10, batch=8)
    slim, seen = _run(table, True, data)
    masked, masked_seen = _run(table, False, data)
    assert seen["slimmed_at"] == 3 and masked_seen["slimmed_at"] is None
    assert slim.dw.groups == slim.dw.out_channels < 16  # a depthwise conv lost groups
    assert seen["ids"] == seen["opt_ids"]  # the optimizer updates the slim parameters
    assert all(g is None for g in seen["grads"])  # the position marks are gone
    state = seen["state"]
    assert state["exp_avg"].shape == state["exp_avg_sq"].shape == slim.dw.weight.shape
    assert float(state["step"]) == len(data)  # counted on from 3, not restarted
    assert seen["lr"] == masked_seen["lr"]
    theirs = masked.state_dict()
    for k, v in slim.state_dict().items():
        assert v.shape == theirs[k].shape, k
        assert torch.allclose(v.float(), theirs[k].float(), atol=1e-6, rtol=1e-5), k


def test_carry_keeps_untouched_state_and_reports_what_it_cannot_carry():
    """A parameter the removal leaves alone keeps its state object; one whose marks did
    not come through (its .grad lost) starts afresh and is named; a parameter outside the
    model is left in its group."""
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3))
    extra = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([*model.parameters(), extra], lr=0.1, momentum=0.9)
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    opt.step()
    kept_state = opt.state[model[1].bias]
    marks = track(opt, model)
    assert extra.grad is not None and torch.equal(extra.grad, torch.ones(2))  # untouched
    # Remove output units 1 and 4 of the first layer by hand, as the removal does.
    idx = torch.tensor([0, 2, 3, 5])
    w, b = model[0].weight, model[0].bias
    model[0].weight = nn.Parameter(w.detach().index_select(0, idx))
    model[0].weight.grad = w.grad.index_select(0, idx)
    model[0].bias = nn.Parameter(b.detach().index_select(0, idx))  # its marks lost
    w1 = model[1].weight
    model[1].weight = nn.Parameter(w1.detach().index_select(1, idx))
    model[1].weight.grad = w1.grad.index_select(1, idx)
    momentum = {
        "w0": opt.state[w]["momentum_buffer"].clone(),
        "w1": opt.state[w1]["momentum_buffer"].clone(),
    }
    fresh = carry(opt, model, marks)
    assert fresh == ["0.bias"]
    params = opt.param_groups[0]["params"]
    assert params[:4] == list(model.parameters()) and params[4] is extra
    assert torch.equal(opt.state[model[0].weight]["momentum_buffer"], momentum["w0"][idx])
    assert torch.equal(opt.state[model[1].weight]["momentum_buffer"], momentum["w1"][:, idx])
    assert opt.state[model[1].bias] is kept_state
    assert model[0].bias not in opt.state
    assert all(p.grad is None for p in model.parameters())


def test_a_factored_state_is_not_carried():
    """State tensors of another shape than the parameter's (Adafactor's row and column
    moments) cannot be sliced with it: the parameter starts afresh."""
    from halp_trt.prune.optim_state import _gather, _positions

    p = torch.zeros(3, 6)
    codes = _positions(p).index_select(1, torch.tensor([0, 2, 5]))
    q = torch.zeros(3, 3)
    step = torch.tensor(4.0)
    assert _gather({"row_var": torch.ones(3), "step": step}, p, q, codes) is None
    moved = _gather({"exp_avg": torch.arange(18.0).view(3, 6), "step": step}, p, q, codes)
    assert moved["step"] is step
    assert torch.equal(moved["exp_avg"], torch.arange(18.0).view(3, 6)[:, [0, 2, 5]])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_positions_survive_index_select_bit_for_bit(dtype):
    """The marks are integers viewed as the parameter's dtype: NaN and subnormal bit
    patterns included, a gather returns them unchanged."""
    from halp_trt.prune.optim_state import _INTS, _positions

    p = torch.zeros(7, 9, 3, dtype=dtype)
    codes = _positions(p)
    assert codes is not None and codes.dtype == dtype and codes.shape == p.shape
    rows, cols = torch.tensor([0, 3, 6]), torch.tensor([1, 2, 8])
    cut = codes.index_select(0, rows).index_select(1, cols)
    got = cut.reshape(-1).view(_INTS[p.element_size()]).long().view(3, 3, 3)
    want = torch.arange(p.numel()).view(p.shape)[rows][:, cols]
    assert torch.equal(got, want)
