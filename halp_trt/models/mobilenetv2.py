"""MobileNetV2 (Sandler et al., 2018) for small inputs (16x16 and 32x32).

Inverted residual blocks: a 1x1 expansion (factor 6), a depthwise 3x3, a linear 1x1
projection, ReLU6, and a residual add when a block keeps its shape. The layer plan is
the paper's (32-16-24-32-64-96-160-320, 1280 features) with the strides of CIFAR
practice: the stem and the first 24-channel stage keep full resolution, so a 32x32
input is downsampled three times (to 4x4) instead of five.

Unlike a plain ResNet its latency does not follow its FLOPs: the depthwise layers and
the wide expanded layers at full resolution cost more time per MAC than the 1x1
projections, which is the case latency-aware pruning is for.
"""

from __future__ import annotations

import torch
import torch.nn as nn

# (expansion t, output channels c, blocks n, first stride s), the paper's table 2 with
# CIFAR strides (the paper's 2 at the stem and at the 24-channel stage become 1).
CIFAR_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _divisible(v: float, divisor: int = 8) -> int:
    """Round a width to a multiple of ``divisor`` without losing more than 10%
    (torchvision's ``_make_divisible``)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1) -> list:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.use_residual = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [*_conv_bn(c_in, hidden, 1, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += _conv_bn(hidden, c_out, 1, 1)
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_residual else y


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 with CIFAR strides.

    Args:
        num_classes: classifier outputs.
        in_channels: input image channels (3 for CIFAR, 1 for grey images).
        width_mult: multiplies every width (rounded to multiples of 8); the final 1280
            features are never narrowed below 1280, as in the paper.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0):
        super().__init__()
        if num_classes < 1 or in_channels < 1:
            raise ValueError("num_classes and in_channels must be positive")
        if not width_mult > 0:
            raise ValueError(f"width_mult must be positive, not {width_mult}")
        c = _divisible(32 * width_mult)
        last = _divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [nn.Sequential(*_conv_bn(in_channels, c, 3, 1), nn.ReLU6())]
        for t, ch, n, s in CIFAR_SETTINGS:
            out = _divisible(ch * width_mult)
            for i in range(n):
                features.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
        features.append(nn.Sequential(*_conv_bn(c, last, 1, 1), nn.ReLU6()))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Linear(last, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)
