"""A small U-Net (Ronneberger et al. 2015) trained from scratch: an encoder of double 3x3 convs and max-pools, a
decoder that upsamples to each skip's exact size, so any H x W works without padding."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """(3x3 conv, BN, ReLU) twice: the U-Net unit (BN added, as in most modern re-implementations)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True))


class UNetEncoder(nn.Module):
    """``depth`` max-pool steps; widths base, 2 base, ... 2**depth base. Returns every scale, full resolution first,
    as {"0": ..., str(depth): bottleneck}."""

    def __init__(self, in_channels: int, base_width: int, depth: int):
        super().__init__()
        widths = [base_width * 2 ** i for i in range(depth + 1)]
        self.stem = double_conv(in_channels, widths[0])
        self.downs = nn.ModuleList(double_conv(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.widths = widths

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = {"0": self.stem(x)}
        for i, down in enumerate(self.downs, 1):
            x = feats[str(i - 1)]
            # ceil_mode: an odd side keeps its last row/column instead of dropping it
            feats[str(i)] = down(F.max_pool2d(x, 2, ceil_mode=True))
        return feats


class UNetDecoder(nn.Module):
    """Bilinear upsampling to the skip's size, concatenation, double conv; a 1x1 conv to ``num_classes`` at the end."""

    def __init__(self, widths: list[int], num_classes: int):
        super().__init__()
        # bottleneck-side first: (deep in, skip) -> skip width
        self.ups = nn.ModuleList(double_conv(deep + skip, skip)
                                 for deep, skip in zip(widths[:0:-1], widths[-2::-1]))
        self.final = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        depth = len(self.ups)
        x = feats[str(depth)]
        for i, up in enumerate(self.ups):
            skip = feats[str(depth - 1 - i)]
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = up(torch.cat([x, skip], 1))
        return self.final(x)
