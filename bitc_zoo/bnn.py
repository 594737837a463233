"""Bi-Real-Net-18 written in torch: binary 3×3 convs with real-valued shortcuts around every conv, float stem,
downsampling shortcuts and classifier (Liu et al., 2018), plus its float twin (same network, no binarization).

Weights are seeded random with non-trivial BatchNorm statistics: for speed and exactness checks, not accuracy.
"""

from __future__ import annotations

import torch
from torch import nn

from bitc_zoo.cnn import randomize_batchnorm


def sign(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1 (exports as Where(x >= 0, 1, -1))."""
    return torch.where(x >= 0, 1.0, -1.0)


class BinaryConv2d(nn.Conv2d):
    """Conv on sign(x) with weights α·sign(W), α = mean |W| per output channel (XNOR-Net / Bi-Real scaling)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.weight.abs().mean(dim=(1, 2, 3), keepdim=True)
        return self._conv_forward(sign(x), alpha * sign(self.weight), self.bias)


class BiRealBlock(nn.Module):
    """out = BN(conv(x)) + shortcut(x); the shortcut downsamples with AvgPool + 1×1 conv + BN when needed."""

    def __init__(self, cin: int, cout: int, stride: int, binary: bool):
        super().__init__()
        conv = BinaryConv2d if binary else nn.Conv2d
        self.conv = conv(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.AvgPool2d(stride), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.shortcut(x)


class BiRealNet18(nn.Module):
    def __init__(self, num_classes: int = 1000, binary: bool = True, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.MaxPool2d(3, 2, 1)
        )
        blocks, cin = [], width
        for stage, cout in enumerate([width, 2 * width, 4 * width, 8 * width]):
            for index in range(4):  # two basic blocks of two convs each, every conv with its own shortcut
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BiRealBlock(cin, cout, stride, binary))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def bireal_net18(num_classes: int = 1000, binary: bool = True, seed: int = 0, width: int = 64) -> BiRealNet18:
    """Bi-Real-Net-18 (binary=True) or its float twin; the same seed gives the same float weights for both."""
    torch.manual_seed(seed)
    return randomize_batchnorm(BiRealNet18(num_classes, binary, width), seed)
