"""A small CNN for 28×28 inputs (MNIST, Fashion-MNIST): the demo and test workhorse.

stem conv 3×3 (float by default) → [BN → ReLU → conv 3×3] ×2 with 2×2 max-pools → BN → ReLU →
global average pool → classifier (float by default). Two quantized convolutions, three quantized
BNs and three quantized activation points: every WAGEUBN data path appears at least once.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .registry import register_model

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        w = width
        self.stem = nn.Conv2d(in_channels, w, 3, padding=1, bias=False)  # (N, w, 28, 28)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False)  # (N, 2w, 14, 14)
        self.bn2 = nn.BatchNorm2d(2 * w)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1, bias=False)  # (N, 4w, 7, 7)
        self.bn3 = nn.BatchNorm2d(4 * w)
        self.relu3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * w, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                std = 1.0 / math.sqrt(m.in_channels * m.kernel_size[0] * m.kernel_size[1])
                nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.relu1(self.bn1(self.stem(x))))
        x = self.conv2(self.relu2(self.bn2(x)))
        x = self.relu3(self.bn3(x))
        return self.fc(self.flatten(self.pool(x)))


@register_model
def small_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 32) -> SmallCNN:
    """The small CNN for 28×28 inputs (about 100k parameters at width 32)."""
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, width=width)
