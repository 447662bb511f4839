"""Built-in models for small inputs: shapes, layout, and that halp-trt can prune them."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from halp_trt.graph import ChannelGraph, uniform_width
from halp_trt.models import create_model, list_models

SMALL = ("mobilenetv2_cifar", "resnet18_cifar", "resnet26_bottleneck_cifar", "convnext_cifar")


def _spatial_sizes(model: nn.Module, x: torch.Tensor) -> list[int]:
    sizes: list[int] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: sizes.append(out.shape[-1]))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return sizes


def test_registered():
    assert set(SMALL) <= set(list_models())


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("hw", [16, 32])
@pytest.mark.parametrize("channels", [1, 3])
def test_small_inputs(name, hw, channels):
    model = create_model(name, num_classes=7, in_channels=channels).eval()
    x = torch.randn(2, channels, hw, hw)
    assert model(x).shape == (2, 7)
    sizes = _spatial_sizes(model, x)
    # CIFAR stem: stride 1, no max-pool; three downsamplings in all.
    assert sizes[0] == hw
    assert min(sizes) == hw // 8


def test_mobilenetv2_layout():
    model = create_model("mobilenetv2_cifar")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [c for c in convs if c.groups == c.in_channels == c.out_channels > 1]
    assert len(depthwise) == 17  # one per inverted residual block
    assert {c.kernel_size for c in depthwise} == {(3, 3)}
    assert any(isinstance(m, nn.ReLU6) for m in model.modules())
    # expansion 6: the first block of the 24-channel stage widens 16 -> 96.
    assert any(c.in_channels == 16 and c.out_channels == 96 for c in convs)
    assert 2.1e6 < sum(p.numel() for p in model.parameters()) < 2.4e6
    half = create_model("mobilenetv2_cifar", width_mult=0.5)
    assert sum(p.numel() for p in half.parameters()) < 0.6 * sum(
        p.numel() for p in model.parameters()
    )
    with pytest.raises(ValueError):
        create_model("mobilenetv2_cifar", width_mult=0)


def test_resnet18_layout():
    model = create_model("resnet18_cifar")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].kernel_size == (3, 3) and convs[0].stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert sorted({c.out_channels for c in convs}) == [64, 128, 256, 512]
    assert 11.0e6 < sum(p.numel() for p in model.parameters()) < 11.3e6


def test_resnet26_bottleneck_layout():
    from halp_trt.models import Bottleneck

    model = create_model("resnet26_bottleneck_cifar")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].kernel_size == (3, 3) and convs[0].stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 8
    # each block narrows its stream by four and widens back: 128 -> 32 -> 128 first
    assert [(b.conv1.out_channels, b.conv3.out_channels) for b in blocks[::2]] == [
        (32, 128),
        (64, 256),
        (128, 512),
        (256, 1024),
    ]
    assert 3.4e6 < sum(p.numel() for p in model.parameters()) < 3.6e6
    with pytest.raises(ValueError):
        create_model("resnet26_bottleneck_cifar", num_classes=0)


def test_convnext_layout():
    from halp_trt.models import ConvNeXtBlock, ConvNeXtCifar

    model = create_model("convnext_cifar")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].kernel_size == (3, 3) and convs[0].stride == (1, 1)
    blocks = [m for m in model.modules() if isinstance(m, ConvNeXtBlock)]
    assert len(blocks) == 8
    # a depthwise 7x7 on the stream, then 4x wider and back: 32 -> 128 -> 32 first
    assert all(b.dw.groups == b.dw.in_channels == b.dw.out_channels for b in blocks)
    assert {b.dw.kernel_size for b in blocks} == {(7, 7)}
    assert [(b.pw1.in_channels, b.pw1.out_channels) for b in blocks[::2]] == [
        (32, 128),
        (64, 256),
        (128, 512),
        (256, 1024),
    ]
    # between stages, a 2x2 stride-2 convolution widens the stream
    downs = [c for c in convs if c.kernel_size == (2, 2)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in downs] == [
        (32, 64, (2, 2)),
        (64, 128, (2, 2)),
        (128, 256, (2, 2)),
    ]
    assert any(isinstance(m, nn.GELU) for m in model.modules())
    assert 1.6e6 < sum(p.numel() for p in model.parameters()) < 1.7e6
    for bad in ({"num_classes": 0}, {"expansion": 0}, {"dims": (32, 64), "depths": (2,)}):
        with pytest.raises(ValueError):
            ConvNeXtCifar(**bad)


@pytest.mark.parametrize("name", SMALL)
def test_prunable(name):
    """Channel groups are found (residual adds tie channels; a depthwise conv ties its
    expansion to its input), and a uniform half-width copy runs and is smaller."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1).eval()
    x = torch.randn(1, 1, 16, 16)
    graph = ChannelGraph(model, x)
    prunable = graph.prunable
    assert len(prunable) >= (20 if name == "mobilenetv2_cifar" else 10)
    if name == "mobilenetv2_cifar":
        # the depthwise layer of every expanded block belongs to its expansion's group
        assert any(
            any(".conv.3" in r.layer for r in g.refs) and any(".conv.0" in r.layer for r in g.refs)
            for g in prunable
        )
    slim = uniform_width(model, x, 0.5, 8)
    assert slim(x).shape == (1, 10)
    n = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in slim.parameters()) < 0.45 * n
