"""Layers and a small network shared by the backend tests."""

from __future__ import annotations

import torch
import torch.nn as nn

from lut_builder.signatures import LayerSignature

CONV = LayerSignature("conv2d", kernel=3, padding=1, in_hw=(8, 8))
DW = LayerSignature("conv2d", kernel=3, padding=1, group_mode="depthwise", groups=0, in_hw=8)
GROUPED = LayerSignature(
    "conv2d", kernel=3, stride=2, padding=1, group_mode="grouped", groups=4, in_hw=8
)
LINEAR = LayerSignature("linear", batch=2)
FAST = {"warmup": 1, "runs": 3, "min_time_s": 0.0}


def small_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    # Non-trivial BN statistics so folding BN into the conv matters for the output.
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    return net.eval()
