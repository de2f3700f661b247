"""Pre-activation ResNets (He et al. 2016, "v2") laid out as the released WAGEUBN code.

* every block pre-activates its input with BN-ReLU; the first block of every stage has a 1×1
  projection shortcut applied to the *pre-activated* input (also in the first stage);
* ImageNet models (18/34/50): 7×7/2 stem conv + 3×3/2 max-pool, stages of 64–512 channels;
* CIFAR models (20/32/56, ``6n + 2`` layers): 3×3 stem conv, stages of 16/32/64 channels;
* a final BN-ReLU, global average pool and a fully connected classifier.

The modules are registered in data-flow order, so the stem is the first ``Conv2d`` and the
classifier the last ``Linear`` (``quantize_`` keeps both float by default, as the released code).
Conv weights start from ``truncated_normal(0, 1/sqrt(fan_in))`` cut at two standard deviations.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .registry import register_model

__all__ = ["PreActBasicBlock", "PreActBottleneck", "PreActResNet"]


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2, bias=False)


class PreActBasicBlock(nn.Module):
    """``a = relu(bn(x)); s = proj(a) or x; h = conv3x3(a, stride); h = conv3x3(relu(bn(h)))``."""

    expansion = 1

    def __init__(self, cin: int, filters: int, stride: int, projection: bool) -> None:
        super().__init__()
        cout = filters * self.expansion
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.shortcut = _conv(cin, cout, 1, stride) if projection else None
        self.conv1 = _conv(cin, filters, 3, stride)
        self.bn2 = nn.BatchNorm2d(filters)
        self.relu2 = nn.ReLU()
        self.conv2 = _conv(filters, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu1(self.bn1(x))
        s = self.shortcut(a) if self.shortcut is not None else x
        h = self.conv1(a)
        h = self.conv2(self.relu2(self.bn2(h)))
        return h + s


class PreActBottleneck(nn.Module):
    """1×1 (filters), 3×3 (filters, stride), 1×1 (4·filters), each after BN-ReLU."""

    expansion = 4

    def __init__(self, cin: int, filters: int, stride: int, projection: bool) -> None:
        super().__init__()
        cout = filters * self.expansion
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.shortcut = _conv(cin, cout, 1, stride) if projection else None
        self.conv1 = _conv(cin, filters, 1)
        self.bn2 = nn.BatchNorm2d(filters)
        self.relu2 = nn.ReLU()
        self.conv2 = _conv(filters, filters, 3, stride)
        self.bn3 = nn.BatchNorm2d(filters)
        self.relu3 = nn.ReLU()
        self.conv3 = _conv(filters, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu1(self.bn1(x))
        s = self.shortcut(a) if self.shortcut is not None else x
        h = self.conv1(a)
        h = self.conv2(self.relu2(self.bn2(h)))
        h = self.conv3(self.relu3(self.bn3(h)))
        return h + s


class PreActResNet(nn.Module):
    """A pre-activation ResNet: stem, stages of blocks, final BN-ReLU, average pool, classifier."""

    def __init__(
        self,
        block: type[PreActBasicBlock] | type[PreActBottleneck],
        layers: list[int],
        widths: list[int],
        *,
        num_classes: int,
        in_channels: int,
        imagenet_stem: bool,
    ) -> None:
        super().__init__()
        if imagenet_stem:
            self.stem = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
            self.pool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.stem = _conv(in_channels, widths[0], 3)
            self.pool = nn.Identity()
        stages = []
        cin = widths[0]
        for i, (n, w) in enumerate(zip(layers, widths, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = [block(cin, w, stride, projection=True)]
            cin = w * block.expansion
            blocks += [block(cin, w, 1, projection=False) for _ in range(1, n)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                std = 1.0 / math.sqrt(fan_in)
                nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        x = self.stages(x)
        x = self.relu(self.bn(x))
        return self.fc(self.flatten(self.avgpool(x)))


@register_model(image_size=224)
def preact_resnet18(num_classes: int = 1000, in_channels: int = 3) -> PreActResNet:
    """Pre-activation ResNet-18 (ImageNet layout, 224² inputs)."""
    return PreActResNet(
        PreActBasicBlock, [2, 2, 2, 2], [64, 128, 256, 512],
        num_classes=num_classes, in_channels=in_channels, imagenet_stem=True,
    )  # fmt: skip


@register_model(image_size=224)
def preact_resnet34(num_classes: int = 1000, in_channels: int = 3) -> PreActResNet:
    """Pre-activation ResNet-34 (ImageNet layout)."""
    return PreActResNet(
        PreActBasicBlock, [3, 4, 6, 3], [64, 128, 256, 512],
        num_classes=num_classes, in_channels=in_channels, imagenet_stem=True,
    )  # fmt: skip


@register_model(image_size=224)
def preact_resnet50(num_classes: int = 1000, in_channels: int = 3) -> PreActResNet:
    """Pre-activation ResNet-50 (ImageNet layout, bottleneck blocks)."""
    return PreActResNet(
        PreActBottleneck, [3, 4, 6, 3], [64, 128, 256, 512],
        num_classes=num_classes, in_channels=in_channels, imagenet_stem=True,
    )  # fmt: skip


def _cifar(depth: int, num_classes: int, in_channels: int) -> PreActResNet:
    n = (depth - 2) // 6
    return PreActResNet(
        PreActBasicBlock, [n, n, n], [16, 32, 64],
        num_classes=num_classes, in_channels=in_channels, imagenet_stem=False,
    )  # fmt: skip


@register_model(image_size=32)
def preact_resnet20(num_classes: int = 10, in_channels: int = 3) -> PreActResNet:
    """Pre-activation ResNet-20 for 32×32 (or 28×28) inputs."""
    return _cifar(20, num_classes, in_channels)


@register_model(image_size=32)
def preact_resnet32(num_classes: int = 10, in_channels: int = 3) -> PreActResNet:
    """Pre-activation ResNet-32 for 32×32 inputs."""
    return _cifar(32, num_classes, in_channels)


@register_model(image_size=32)
def preact_resnet56(num_classes: int = 10, in_channels: int = 3) -> PreActResNet:
    """Pre-activation ResNet-56 for 32×32 inputs."""
    return _cifar(56, num_classes, in_channels)
