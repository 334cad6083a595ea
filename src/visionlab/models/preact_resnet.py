"""Pre-activation ResNet-18 for 32x32 images (He et al. 2016, "Identity Mappings in Deep Residual Networks")."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import DropPath, LinearHeadNet, drop_path_rates


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 on the residual branch; the identity path stays clean."""

    def __init__(self, cin: int, cout: int, stride: int = 1, drop_path: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if (stride == 1 and cin == cout) else nn.Conv2d(cin, cout, 1, stride, bias=False)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        short = x if self.shortcut is None else self.shortcut(o)
        o = self.conv2(F.relu(self.bn2(self.conv1(o))))
        return short + self.drop_path(o)


class PreActResNet(LinearHeadNet):
    """3x3 stem (64 ch), four stages of pre-activation blocks (64, 128, 256, 512; strides 1,2,2,2), final BN-ReLU
    (the paper's extra activation after the last addition), global average pool, linear head."""

    def __init__(self, blocks=(2, 2, 2, 2), num_classes: int = 10, in_channels: int = 3, drop_path: float = 0.0):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        rates, layers, cin = iter(drop_path_rates(drop_path, sum(blocks))), [], 64
        for i, n in enumerate(blocks):
            cout = 64 * 2**i
            for j in range(n):
                layers.append(PreActBlock(cin, cout, 2 if (j == 0 and i > 0) else 1, next(rates)))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.num_features = cin
        self.head = nn.Linear(cin, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.layers(self.stem(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def preact_resnet18(num_classes: int = 10, in_channels: int = 3, image_size: int | None = None,
                    drop_path: float = 0.0):
    """PreAct ResNet-18 (11.17 M parameters for 10 classes)."""
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels, drop_path)
