"""A small CNN for 28×28 inputs (MNIST, Fashion-MNIST): the demo and test workhorse.

stem conv 3×3 (float by default) → BN → ReLU → max-pool → conv 3×3 → BN → ReLU → max-pool →
conv 3×3 → BN → ReLU → flatten (7×7 map) → classifier (float by default). Two quantized
convolutions, three quantized BNs and three quantized activation points: every WAGEUBN data path
appears at least once. One epoch of MNIST at batch 32 reaches about 98 % with the ``paper`` preset
(configs/mnist_cnn_paper.yaml).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .registry import register_model

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Conv2d(in_channels, w, 3, padding=1, bias=False)  # (N, w, 28, 28)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)  # (N, w, 14, 14)
        self.conv1 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * w)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)  # (N, 2w, 7, 7)
        self.conv2 = nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * w)
        self.relu3 = nn.ReLU()
        self.resize = nn.AdaptiveAvgPool2d(7)  # the identity at 28×28 inputs; other sizes → 7×7
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * w * 49, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                std = 1.0 / math.sqrt(m.in_channels * m.kernel_size[0] * m.kernel_size[1])
                nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.stem(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv1(x))))
        x = self.relu3(self.bn3(self.conv2(x)))
        return self.fc(self.flatten(self.resize(x)))


@register_model(image_size=28)
def small_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> SmallCNN:
    """The small CNN for 28×28 inputs (about 60k parameters at width 16)."""
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, width=width)
