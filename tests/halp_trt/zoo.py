"""Reference architectures for the channel-graph tests (torchvision is not importable on
the CPU machines). Each factory returns (model, example_input) for a small input.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from halp_trt.models import resnet20, resnet50_imagenet


def conv_bn(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyBottleneckResNet(nn.Module):
    """Two bottleneck stages with projection shortcuts (ResNet-50 blocks, small)."""

    def __init__(self) -> None:
        super().__init__()
        from halp_trt.models.resnet import Bottleneck

        self.stem = conv_bn(3, 16)
        self.layer1 = nn.Sequential(Bottleneck(16, 8), Bottleneck(32, 8))
        self.layer2 = nn.Sequential(Bottleneck(32, 16, 2), Bottleneck(64, 16))
        self.fc = nn.Linear(64, 7)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_res else y


class TinyMobileNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, s=2)
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, 1),
            InvertedResidual(16, 24, 2, 6),
            InvertedResidual(24, 24, 1, 6),
            InvertedResidual(24, 32, 2, 6),
        )
        self.head = conv_bn(32, 64, k=1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, 10))

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(x.mean((2, 3)))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], 1)


class TinyDenseNet(nn.Module):
    """DenseNet-style: each layer concatenates its output to its input."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.dense = nn.Sequential(DenseLayer(16, 8), DenseLayer(24, 8), DenseLayer(32, 8))
        self.trans = nn.Sequential(nn.BatchNorm2d(40), nn.ReLU(), nn.Conv2d(40, 24, 1, bias=False))
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = self.trans(self.dense(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class TinyResNeXt(nn.Module):
    """A ResNeXt block: 1x1 reduce, 3x3 grouped conv (cardinality 4), 1x1 expand."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 32)
        self.reduce = conv_bn(32, 32, k=1)
        self.grouped = conv_bn(32, 32, k=3, groups=4)
        self.expand = nn.Sequential(nn.Conv2d(32, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.fc = nn.Linear(32, 6)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.expand(self.grouped(self.reduce(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class TinyVGG(nn.Module):
    """VGG with BatchNorm and a classifier over the flattened feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16),
            nn.MaxPool2d(2),
            conv_bn(16, 32),
            conv_bn(32, 32),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(64, 10),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class TinySSD(nn.Module):
    """SSD-style detector: a backbone, an extra stage, class and box heads on two maps."""

    def __init__(self, num_classes: int = 4, anchors: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(conv_bn(3, 16, s=2), conv_bn(16, 32), conv_bn(32, 32, s=2))
        self.extra = nn.Sequential(conv_bn(32, 16, k=1), conv_bn(16, 48, s=2))
        self.cls_heads = nn.ModuleList(
            [nn.Conv2d(c, anchors * num_classes, 3, 1, 1) for c in (32, 48)]
        )
        self.box_heads = nn.ModuleList([nn.Conv2d(c, anchors * 4, 3, 1, 1) for c in (32, 48)])

    def forward(self, x):
        f1 = self.backbone(x)
        f2 = self.extra(f1)
        cls = [h(f).flatten(2) for h, f in zip(self.cls_heads, (f1, f2))]
        box = [h(f).flatten(2) for h, f in zip(self.box_heads, (f1, f2))]
        return torch.cat(cls, 2), torch.cat(box, 2)


class ChannelFlip(nn.Module):
    """A block whose middle reverses the channel order: channels are not independent."""

    def __init__(self) -> None:
        super().__init__()
        self.a = conv_bn(3, 16)
        self.b = conv_bn(16, 16)
        self.c = conv_bn(16, 24)
        self.fc = nn.Linear(24, 3)

    def forward(self, x):
        x = self.b(self.a(x))
        x = self.c(torch.flip(x, dims=(1,)))
        return self.fc(x.mean((2, 3)))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // 4, 1)
        self.fc2 = nn.Conv2d(c // 4, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class TinySENet(nn.Module):
    """Squeeze-and-excitation: a channel-wise product with a gate computed from x."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.se = conv_bn(3, 16), conv_bn(16, 32), SqueezeExcite(32)
        self.c, self.fc = conv_bn(32, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.c(self.se(self.b(self.a(x)))).mean((2, 3)))


class TinyCSP(nn.Module):
    """CSP-style: chunk the channels in two, transform one half, concatenate back."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = conv_bn(3, 32), conv_bn(16, 16), conv_bn(32, 24)
        self.fc = nn.Linear(24, 4)

    def forward(self, x):
        x1, x2 = self.a(x).chunk(2, dim=1)
        return self.fc(self.c(torch.cat([x1, self.b(x2)], 1)).mean((2, 3)))


class TinyUNet(nn.Module):
    """Encoder-decoder: upsample the deep map and concatenate the skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.e1, self.e2 = conv_bn(3, 16), conv_bn(16, 32, s=2)
        self.d, self.out = conv_bn(48, 16), nn.Conv2d(16, 2, 1)

    def forward(self, x):
        a = self.e1(x)
        u = F.interpolate(self.e2(a), scale_factor=2, mode="nearest")
        return self.out(self.d(torch.cat([a, u], 1)))


class ChannelMeanGate(nn.Module):
    """Spatial attention from the mean over channels: channels are not independent."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = conv_bn(3, 16), conv_bn(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        x = self.a(x)
        x = self.b(x * torch.sigmoid(x.mean(1, keepdim=True)))
        return self.fc(x.mean((2, 3)))


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle (view, transpose, reshape) between two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = conv_bn(3, 16), conv_bn(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        x = self.a(x)
        n, c, h, w = x.shape
        x = x.view(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(self.b(x).mean((2, 3)))


class TinyRegNetY(nn.Module):
    """RegNetY-style blocks: 1x1, grouped 3x3 (group width 8), squeeze-excitation, 1x1,
    residual; the second stage widens through a projection."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, s=2)
        self.b1 = _YBlock(16, 32, 2)
        self.b2 = _YBlock(32, 32, 1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        x = self.b2(self.b1(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class _YBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, group_width: int = 8) -> None:
        super().__init__()
        self.a = conv_bn(cin, cout, k=1)
        self.b = conv_bn(cout, cout, k=3, s=stride, groups=cout // group_width)
        self.se = SqueezeExcite(cout)
        self.c = nn.Sequential(nn.Conv2d(cout, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.proj = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        return F.relu(self.proj(x) + self.c(self.se(self.b(self.a(x)))))


class GroupedChain(nn.Module):
    """Two grouped convolutions in a row with 4 and 2 groups: units of 2 convolution
    groups of the first and one of the second."""

    def __init__(self) -> None:
        super().__init__()
        self.a = conv_bn(3, 32)
        self.g1 = conv_bn(32, 32, groups=4)
        self.g2 = conv_bn(32, 32, groups=2)
        self.c = conv_bn(32, 16, k=1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.c(self.g2(self.g1(self.a(x)))).mean((2, 3)))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (as torchvision's ConvNeXt has)."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, permute to channels-last, LayerNorm over channels, Linear 4x,
    GELU, Linear, permute back, layer scale (a bare parameter), residual add."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1 = nn.Linear(dim, 4 * dim)
        self.pw2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.rand(dim, 1, 1) + 0.5)

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(F.gelu(self.pw1(self.norm(y)))).permute(0, 3, 1, 2)
        return x + self.gamma * y


class TinyConvNeXt(nn.Module):
    """Patchify stem + LayerNorm2d, a ConvNeXt block, LayerNorm2d + 2x2 downsampling,
    another block, global pool, LayerNorm2d, linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, 4), LayerNorm2d(16, eps=1e-6))
        self.stage1 = ConvNeXtBlock(16)
        self.down = nn.Sequential(LayerNorm2d(16, eps=1e-6), nn.Conv2d(16, 24, 2, 2))
        self.stage2 = ConvNeXtBlock(24)
        self.head_norm = LayerNorm2d(24, eps=1e-6)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        x = self.head_norm(F.adaptive_avg_pool2d(x, 1))
        return self.fc(torch.flatten(x, 1))


def _shuffle(x, groups: int = 2):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 basic unit: split the channels, transform one half, concatenate,
    channel shuffle."""

    def __init__(self, c: int) -> None:
        super().__init__()
        half = c // 2
        self.branch = nn.Sequential(
            conv_bn(half, half, k=1),
            nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False),
            nn.BatchNorm2d(half),
            conv_bn(half, half, k=1),
        )

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        return _shuffle(torch.cat([x1, self.branch(x2)], 1))


class TinyShuffleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 32, s=2)
        self.units = nn.Sequential(ShuffleUnit(32), ShuffleUnit(32))
        self.head = conv_bn(32, 48, k=1)
        self.fc = nn.Linear(48, 4)

    def forward(self, x):
        return self.fc(self.head(self.units(self.stem(x))).mean((2, 3)))


ZOO = {
    "cifar_resnet20": (lambda: resnet20(), (2, 3, 32, 32)),
    "bottleneck": (TinyBottleneckResNet, (2, 3, 16, 16)),
    "mobilenetv2": (TinyMobileNetV2, (2, 3, 32, 32)),
    "densenet": (TinyDenseNet, (2, 3, 16, 16)),
    "resnext": (TinyResNeXt, (2, 3, 16, 16)),
    "vgg": (TinyVGG, (2, 3, 16, 16)),
    "ssd": (TinySSD, (2, 3, 32, 32)),
    "channel_flip": (ChannelFlip, (2, 3, 16, 16)),
    "senet": (TinySENet, (2, 3, 16, 16)),
    "csp": (TinyCSP, (2, 3, 16, 16)),
    "unet": (TinyUNet, (2, 3, 16, 16)),
    "channel_mean_gate": (ChannelMeanGate, (2, 3, 16, 16)),
    "channel_shuffle": (ChannelShuffle, (2, 3, 16, 16)),
    "regnet_y": (TinyRegNetY, (2, 3, 16, 16)),
    "grouped_chain": (GroupedChain, (2, 3, 8, 8)),
    "convnext": (TinyConvNeXt, (2, 3, 32, 32)),
    "shufflenet": (TinyShuffleNet, (2, 3, 16, 16)),
    # Batch of one, biases and no BatchNorm: a tracer that unpacks the batch axis would
    # see an unbatched input here.
    "plain_convs_batch1": (
        lambda: nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 8, 3, padding=1),
            nn.Hardswish(),
            nn.Conv2d(8, 4, 1),
        ),
        (1, 3, 16, 16),
    ),
}

#: Zoo models with a group that must be frozen because the channels are mixed, and the
#: words its reason must contain.
MIXING = {
    "channel_flip": "op Flip",
    "channel_mean_gate": "op Mean",
    "channel_shuffle": "splits or merges the channel dimension",
    "csp": "split of the channels at sizes fixed",
}


def build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The zoo model ``name`` with randomised BN statistics, and an example input."""
    torch.manual_seed(seed)
    factory, shape = ZOO[name]
    model = factory()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics make the check bite
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
        if isinstance(m, nn.LayerNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval(), torch.randn(*shape)


def resnet50_sized() -> tuple[nn.Module, torch.Tensor]:
    return resnet50_imagenet().eval(), torch.randn(1, 3, 224, 224)
