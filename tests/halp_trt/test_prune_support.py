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
