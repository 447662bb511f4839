"""ResNet-18 for small inputs (16x16 and 32x32), as in CIFAR practice: the ImageNet
ResNet-18's four stages of two basic blocks (64-128-256-512 channels), with a 3x3
stride-1 stem and no max-pool, so a 32x32 input keeps 32x32 in the first stage.

Wide plain blocks with room to prune (11.2 M parameters): every stage is far wider
than a small-image task needs, and its 3x3 convolutions step with the backend's
channel blocks, so latency tracks FLOPs more closely than on a MobileNetV2.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cifar_resnet import BasicBlock, init_resnet


class ResNet18Cifar(nn.Module):
    """ResNet-18 with a CIFAR stem; shortcuts across a stage change are 1x1
    convolutions with BatchNorm (option B)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1:
            raise ValueError("num_classes and in_channels must be positive")
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for i, planes in enumerate((64, 128, 256, 512)):
            blocks = []
            for j in range(2):
                blocks.append(BasicBlock(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512, num_classes)
        init_resnet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
