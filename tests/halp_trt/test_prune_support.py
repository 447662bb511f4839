"""Shared set-up of the pruning, training and DDP tests (helpers only, no tests here)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F


def analytic_table(path: Path, model, example_input, step: int = 4):
    """Build (once) and open a complete analytic-backend table for ``model``."""
    from lut_builder import LatencyTable
    from lut_builder.backends import get_backend
    from lut_builder.build import build_table

    if not path.exists():
        build_table(path, model, example_input, get_backend("analytic"), step=step)
    return LatencyTable.open(path)


def batches(n: int, seed: int = 0, batch: int = 4, shape=(3, 16, 16), classes: int = 10):
    """Deterministic random minibatches."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch, *shape, generator=gen),
            torch.randint(0, classes, (batch,), generator=gen),
        )
        for _ in range(n)
    ]


def train_iterations(model, optimizer, pruner, data, records=None):
    """The documented loop: backward, accumulate, optimizer step, pruner step."""
    model.train()
    for x, y in data:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        pruner.accumulate()
        optimizer.step()
        rec = pruner.step()
        if rec is not None and records is not None:
            records.append(rec)


def small_resnet():
    """ResNet-8 with 16/32/64 channels: the structure of the CIFAR ResNets, cheaper."""
    from halp_trt.models import CifarResNet

    return CifarResNet(8, 10, 3, width=16)


def small_resnet_table(tmp_path_factory):
    """The analytic table of :func:`small_resnet` at 1x3x16x16 (for module fixtures)."""
    return analytic_table(
        tmp_path_factory.mktemp("lut") / "r8.lut", small_resnet(), torch.randn(1, 3, 16, 16)
    )
