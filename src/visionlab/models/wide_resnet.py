"""Wide ResNets for 32x32 images (Zagoruyko & Komodakis 2016): WRN-28-2 (1.47 M) and WRN-28-10 (36.5 M)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import DropPath, LinearHeadNet, drop_path_rates


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3, (dropout), BN-ReLU-conv3x3, plus a 1x1 shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None if (stride == 1 and cin == cout) else nn.Conv2d(cin, cout, 1, stride, bias=False)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        # the projection sees the pre-activated input, as in the authors' code
        short = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = self.conv2(self.dropout(F.relu(self.bn2(o))))
        return short + self.drop_path(o)


class WideResNet(LinearHeadNet):
    """WRN-depth-k: 3x3 stem (16 ch), three groups of (depth-4)/6 blocks with 16k, 32k, 64k channels (strides 1,2,2),
    BN-ReLU, global average pool, linear head."""

    def __init__(self, depth: int = 28, widen: int = 10, num_classes: int = 10, in_channels: int = 3,
                 dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WRN depth must be 6n+4")
        n = (depth - 4) // 6
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        rates, blocks, cin = iter(drop_path_rates(drop_path, 3 * n)), [], 16
        for g, w in enumerate(widths):
            for i in range(n):
                blocks.append(WideBlock(cin, w, 2 if (i == 0 and g > 0) else 1, dropout, next(rates)))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.num_features = cin
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.blocks(self.stem(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def wrn_28_2(num_classes: int = 10, in_channels: int = 3, image_size: int | None = None, drop_path: float = 0.0):
    """WRN-28-2 (1.47 M parameters for 10 classes), the usual semi-supervised CIFAR backbone."""
    return WideResNet(28, 2, num_classes, in_channels, drop_path=drop_path)


def wrn_28_10(num_classes: int = 10, in_channels: int = 3, image_size: int | None = None, drop_path: float = 0.0):
    """WRN-28-10 (36.5 M parameters for 10 classes)."""
    return WideResNet(28, 10, num_classes, in_channels, drop_path=drop_path)
