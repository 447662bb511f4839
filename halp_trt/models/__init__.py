"""Models defined in the repository, usable as ``halp_trt.models:NAME`` specs.

A small registry in the manner of timm: ``@register_model`` adds a factory,
``list_models(pattern)`` lists names. Factories take keyword arguments only and build
untrained models (nothing is downloaded).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import torch.nn as nn

from .cifar_resnet import BasicBlock, CifarResNet
from .convnext_cifar import ConvNeXtBlock, ConvNeXtCifar
from .mobilenetv2 import InvertedResidual, MobileNetV2Cifar
from .resnet import Bottleneck, ResNet
from .resnet18_cifar import ResNet18Cifar

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model factory under its function name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return _REGISTRY[name](**kwargs)


@register_model
def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-20 (0.27 M parameters)."""
    return CifarResNet(20, num_classes, in_channels)


@register_model
def resnet32(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-32 (0.46 M parameters)."""
    return CifarResNet(32, num_classes, in_channels)


@register_model
def resnet20_w2(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-20 twice as wide (32/64/128 channels, 1.09 M parameters), as in
    wide-ResNet practice: room to prune at the 16-channel steps of CPU kernels."""
    return CifarResNet(20, num_classes, in_channels, width=32)


@register_model
def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-56 (0.85 M parameters), the usual CIFAR-10 pruning benchmark."""
    return CifarResNet(56, num_classes, in_channels)


@register_model
def resnet18_cifar(num_classes: int = 10, in_channels: int = 3) -> ResNet18Cifar:
    """ResNet-18 (64-128-256-512 channels, 11.2 M parameters) with a 3x3 stride-1 stem
    and no max-pool, for 16x16 and 32x32 inputs."""
    return ResNet18Cifar(num_classes, in_channels)


@register_model
def mobilenetv2_cifar(
    num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0
) -> MobileNetV2Cifar:
    """MobileNetV2 (inverted residuals, depthwise 3x3, ReLU6, expansion 6; 2.2 M
    parameters) with CIFAR strides (stem stride 1, three downsamplings), for 16x16 and
    32x32 inputs."""
    return MobileNetV2Cifar(num_classes, in_channels, width_mult)


@register_model
def resnet26_bottleneck_cifar(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """Bottleneck ResNet-26 (four stages of two bottleneck blocks; inner widths 32-256,
    residual streams four times as wide, 128-1024; 3.5 M parameters) with a 3x3 stride-1
    stem and no max-pool, for 16x16 and 32x32 inputs: the streams are wider than the
    layers they feed, where a MobileNetV2's are narrower and a ResNet-18's as wide."""
    return ResNet(Bottleneck, (2, 2, 2, 2), num_classes, in_channels, width=32, small_input=True)


@register_model
def convnext_cifar(num_classes: int = 10, in_channels: int = 3) -> ConvNeXtCifar:
    """ConvNeXt-style network (four stages of two blocks: depthwise 7x7 on the residual
    stream, 1x1 expansion 4x, GELU, 1x1 back; streams 32-256, expansions 128-1024;
    BatchNorm for LayerNorm; 1.6 M parameters) with a 3x3 stride-1 stem, for 16x16 and
    32x32 inputs: streams a quarter the width of the layers they feed, and depthwise
    convolutions on the streams."""
    return ConvNeXtCifar(num_classes, in_channels)


@register_model
def resnet18_imagenet(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-18 with torchvision's layout, for 224x224 inputs (11.7 M parameters)."""
    from .resnet import BasicBlock as ImageNetBasicBlock

    return ResNet(ImageNetBasicBlock, (2, 2, 2, 2), num_classes, in_channels)


@register_model
def resnet50_imagenet(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-50 with torchvision's layout, for 224x224 inputs (25.6 M parameters)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)


__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "CifarResNet",
    "ConvNeXtBlock",
    "ConvNeXtCifar",
    "InvertedResidual",
    "MobileNetV2Cifar",
    "ResNet18Cifar",
    "create_model",
    "list_models",
    "register_model",
]
__all__ += list_models()
