"""A ConvNeXt-style network (Liu et al., 2022) for small inputs (16x16 and 32x32).

Each block is ConvNeXt's: a depthwise 7x7 on the residual stream, a normalisation, a
1x1 expansion (factor 4), GELU, a 1x1 projection back to the stream's width, and the
residual add. Between stages a normalisation and a 2x2 stride-2 convolution widen the
stream. Three departures, for pruning on small images: BatchNorm where ConvNeXt has
LayerNorm (a block's two fold into its convolutions on export; the four after a residual
sum, before each downsampling and the head, stay as BatchNormalization nodes, the
convolutions being what a latency table prices); a 3x3 stride-1 stem where ConvNeXt
patchifies 4x4 (a 16x16 image keeps 16x16, 8x8, 4x4 and 2x2 for its four stages); no
layer scale (the BatchNorm after the projection scales each channel). The head
normalises before the pooling.

Its residual streams are a quarter the width of the expansions that read them, as a
MobileNetV2's are narrower than its expansions; unlike the MobileNetV2 the depthwise
convolution runs on the stream, not inside the block.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, BatchNorm, 1x1 to ``expansion`` x the width, GELU, 1x1 back,
    BatchNorm, residual add."""

    def __init__(self, dim: int, expansion: int = 4) -> None:
        super().__init__()
        hidden = dim * expansion
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim, bias=False)
        self.norm = nn.BatchNorm2d(dim)
        self.pw1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.pw2 = nn.Conv2d(hidden, dim, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw2(self.act(self.pw1(self.norm(self.dw(x)))))
        return x + self.bn2(y)


class ConvNeXtCifar(nn.Module):
    """ConvNeXt-style stages for small inputs.

    Args:
        num_classes: classifier outputs.
        in_channels: input image channels.
        dims: the residual stream's width in each stage.
        depths: blocks per stage.
        expansion: a block's inner width over its stream's.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        dims: tuple[int, ...] = (32, 64, 128, 256),
        depths: tuple[int, ...] = (2, 2, 2, 2),
        expansion: int = 4,
    ) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1 or expansion < 1:
            raise ValueError("num_classes, in_channels and expansion must be positive")
        if not dims or len(dims) != len(depths):
            raise ValueError(f"dims {dims} and depths {depths} must pair stage by stage")
        if min(dims) < 1 or min(depths) < 1:
            raise ValueError(f"every width and depth must be positive: {dims}, {depths}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, dims[0], 3, 1, 1, bias=False), nn.BatchNorm2d(dims[0])
        )
        stages: list[nn.Module] = []
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            layers: list[nn.Module] = []
            if i > 0:
                layers += [nn.BatchNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, 2)]
            layers += [ConvNeXtBlock(dim, expansion) for _ in range(depth)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head_norm = nn.BatchNorm2d(dims[-1])
        self.classifier = nn.Linear(dims[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head_norm(self.stages(self.stem(x)))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
