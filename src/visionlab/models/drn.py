"""Dilated Residual Networks (Yu, Koltun, Funkhouser 2017): DRN-C-26 and DRN-D-22, output stride 8.

Stages 5-6 keep resolution and dilate (2, 4) instead of striding; DRN-C drops the max-pool and adds "degridding"
layers 7-8 (dilation 2 then 1, no residual); DRN-D replaces the residual first stages by plain convs."""
from __future__ import annotations

import torch
from torch import nn

CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)


class DilatedBlock(nn.Module):
    """ResNet basic block with per-conv dilation; ``residual=False`` gives DRN-C's degridding blocks."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation=(1, 1), residual: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, dilation[0], dilation[0], bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, dilation[1], dilation[1], bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual
        self.downsample = None
        if residual and (stride != 1 or cin != cout):
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, dilation * (k // 2), dilation, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


def _blocks(cin: int, cout: int, n: int, stride: int = 1, dilation: int = 1, new_level: bool = True,
            residual: bool = True) -> nn.Sequential:
    """n blocks; the first block of a newly dilated stage uses half the dilation in its first conv (as the paper's
    code does), so the receptive field grows without a jump."""
    first = (1, 1) if dilation == 1 else (dilation // 2 if new_level else dilation, dilation)
    layers = [DilatedBlock(cin, cout, stride, first, residual)]
    layers += [DilatedBlock(cout, cout, 1, (dilation, dilation), residual) for _ in range(n - 1)]
    return nn.Sequential(*layers)


def _convs(cin: int, cout: int, n: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    layers = []
    for i in range(n):
        layers += _conv_bn_relu(cin if i == 0 else cout, cout, 3, stride if i == 0 else 1, dilation)
    return nn.Sequential(*layers)


class DRN(nn.Module):
    """DRN for classification: 8 levels, strides 1,1,2,2,2 then dilation 2, 4 (output stride 8); the head is global
    average pooling and a 1x1 conv (a linear layer that also runs on feature maps, for segmentation)."""

    def __init__(self, arch: str = "C", layers=(1, 1, 2, 2, 2, 2, 1, 1), num_classes: int = 1000,
                 in_channels: int = 3, stem: str = "imagenet"):
        super().__init__()
        c = CHANNELS
        k = 3 if stem == "cifar" else 7        # the stem is stride 1 already; cifar only shrinks the kernel
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, c[0], k))
        if arch == "C":
            self.layer1 = _blocks(c[0], c[0], layers[0])
            self.layer2 = _blocks(c[0], c[1], layers[1], stride=2)
        else:
            self.layer1 = _convs(c[0], c[0], layers[0])
            self.layer2 = _convs(c[0], c[1], layers[1], stride=2)
        self.layer3 = _blocks(c[1], c[2], layers[2], stride=2)
        self.layer4 = _blocks(c[2], c[3], layers[3], stride=2)
        self.layer5 = _blocks(c[3], c[4], layers[4], dilation=2, new_level=False)
        self.layer6 = _blocks(c[4], c[5], layers[5], dilation=4, new_level=False)
        if arch == "C":     # degridding: remove the gridding artifacts of dilation, no residual connections
            self.layer7 = _blocks(c[5], c[6], layers[6], dilation=2, new_level=False, residual=False)
            self.layer8 = _blocks(c[6], c[7], layers[7], residual=False)
        else:
            self.layer7 = _convs(c[5], c[6], layers[6], dilation=2)
            self.layer8 = _convs(c[6], c[7], layers[7])
        self.num_features = c[7]
        self.head = nn.Conv2d(c[7], num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m is not self.head:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The stride-8 feature map (N, 512, H/8, W/8)."""
        x = self.layer2(self.layer1(self.stem(x)))
        x = self.layer6(self.layer5(self.layer4(self.layer3(x))))
        return self.layer8(self.layer7(x))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.head(feats.mean((2, 3), keepdim=True)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.head = nn.Conv2d(self.num_features, num_classes, 1)


def drn_c_26(num_classes: int = 1000, in_channels: int = 3, image_size: int | None = None, stem: str = "imagenet"):
    """DRN-C-26 (21.1 M parameters for 1000 classes)."""
    return DRN("C", (1, 1, 2, 2, 2, 2, 1, 1), num_classes, in_channels, stem)


def drn_d_22(num_classes: int = 1000, in_channels: int = 3, image_size: int | None = None, stem: str = "imagenet"):
    """DRN-D-22 (16.4 M parameters for 1000 classes)."""
    return DRN("D", (1, 1, 2, 2, 2, 2, 1, 1), num_classes, in_channels, stem)
