"""Batched joint augmentation of image + mask batches for segmentation (random scale, crop/pad, flip, colour jitter):
one affine grid per batch, sampled bilinear for the images and nearest for the masks, so they stay aligned.

The segmentation counterpart of data/transforms.py's BatchAugment (design notes, section 7: whole-batch tensor ops).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .transforms import jitter_colors

IGNORE = 255


@dataclass
class SegParams:
    """One batch's random draw: per-sample scale, crop offset (in scaled pixels; negative = padding) and flip."""

    scale: torch.Tensor          # float [B]
    offset: torch.Tensor         # float [B, 2] (y, x)
    flip: torch.Tensor           # bool [B]
    jitter: torch.Tensor | None  # float [B, 3] brightness, contrast, saturation factors, or None


class BatchSegAugment:
    """(uint8 images [B,H,W,C], uint8 masks [B,H,W]) -> (normalized float [B,C,h,w] channels_last, int64 [B,h,w]).

    Train mode, per sample: scale by s ~ U(scale), take a ``crop_size`` window at a random position (where the scaled
    image is smaller than the crop it sits at a random place and the rest is padding: image 0 after normalization =
    the dataset mean, mask 255 = ignore), flip horizontally with p = 0.5, and jitter brightness / contrast /
    saturation of the image by factors U(1 - jitter, 1 + jitter). Eval mode normalizes only (full resolution).
    Shrinking samples 4 neighbours without antialias (as BatchAugment's rotation does); the mask is never blended.
    Randomness comes from ``generator`` (a CPU torch.Generator) so a checkpoint can save and restore it exactly.
    """

    def __init__(self, mean, std, train: bool, crop_size: int | tuple[int, int] | None = None,
                 scale: tuple[float, float] = (0.5, 2.0), hflip: bool = True, jitter: float = 0.0,
                 normalize: bool = True, generator: torch.Generator | None = None):
        self.mean = torch.tensor(mean if normalize else [0.0] * len(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std if normalize else [1.0] * len(std), dtype=torch.float32).view(1, -1, 1, 1)
        self.train = train
        self.crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size   # None: input size
        self.scale = (float(scale[0]), float(scale[1]))
        self.hflip = hflip
        self.jitter = float(jitter)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images: uint8 [B, H, W, C], masks: uint8 [B, H, W], on any device."""
        if not self.train:
            return self.normalize(images), masks.long()
        return self.apply(images, masks, self.sample(images.shape[0], *images.shape[1:3]))

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        return tuple(self.crop_size) if self.crop_size else (h, w)

    def sample(self, b: int, h: int, w: int) -> SegParams:
        """Draw one batch's parameters from the generator (always in this order: scale, offset, flip, jitter)."""
        g = self.generator
        lo, hi = self.scale
        s = lo + (hi - lo) * torch.rand(b, generator=g)
        ch, cw = self.out_size(h, w)
        room = torch.stack([s * h - ch, s * w - cw], 1)                 # > 0: crop inside, < 0: pad around
        offset = torch.minimum(room, torch.zeros(())) + room.abs() * torch.rand(b, 2, generator=g)
        flip = torch.rand(b, generator=g) < 0.5 if self.hflip else torch.zeros(b, dtype=torch.bool)
        jitter = None
        if self.jitter > 0:
            jitter = 1 + self.jitter * (2 * torch.rand(b, 3, generator=g) - 1)
        return SegParams(s, offset, flip, jitter)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> (x / 255 - mean) / std as float NCHW, channels_last: two passes, the same arithmetic as
        the training path (centre, then scale), so an identity transform gives exactly these values."""
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        x = images.permute(0, 3, 1, 2).float()                             # NHWC storage = channels_last view
        return x.sub_(255.0 * mean).mul_(1.0 / (255.0 * std))

    def theta(self, p: SegParams, h: int, w: int) -> torch.Tensor:
        """[B, 2, 3] affine maps from output to input coordinates (align_corners=False convention).

        Output pixel j (of cw) shows scaled pixel j + offset, i.e. input pixel (j + offset + 0.5) / s - 0.5;
        in normalized units u = x * cw / (s W) + (cw + 2 offset) / (s W) - 1, and a flip negates x.
        """
        ch, cw = self.out_size(h, w)
        b = len(p.scale)
        sign = 1.0 - 2.0 * p.flip.float()
        t = torch.zeros(b, 2, 3)
        t[:, 0, 0] = sign * cw / (p.scale * w)
        t[:, 0, 2] = (cw + 2 * p.offset[:, 1]) / (p.scale * w) - 1
        t[:, 1, 1] = ch / (p.scale * h)
        t[:, 1, 2] = (ch + 2 * p.offset[:, 0]) / (p.scale * h) - 1
        return t

    @staticmethod
    def grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """F.affine_grid(theta, [B, C, h, w], align_corners=False) for axis-aligned theta (scale, shift, flip), built
        from one row and one column per sample: several times cheaper than affine_grid's per-pixel matmul."""
        xs = (torch.arange(w, dtype=theta.dtype, device=theta.device) * 2 + 1) / w - 1
        ys = (torch.arange(h, dtype=theta.dtype, device=theta.device) * 2 + 1) / h - 1
        g = torch.empty(theta.shape[0], h, w, 2, dtype=theta.dtype, device=theta.device)
        g[..., 0] = (theta[:, 0, 0, None] * xs + theta[:, 0, 2, None])[:, None, :]
        g[..., 1] = (theta[:, 1, 1, None] * ys + theta[:, 1, 2, None])[:, :, None]
        return g

    def apply(self, images: torch.Tensor, masks: torch.Tensor, p: SegParams) -> tuple[torch.Tensor, torch.Tensor]:
        """The transform of ``p`` on a batch. One grid, sampled twice: bilinear on the centred image (x - 255 mean, so
        grid_sample's zero padding is the mean colour) and nearest on mask - 255 (so zero padding becomes 255 =
        ignore once 255 is added back; the brief's "mask + 1, 0 -> 255" trick in one add). Jitter runs on the crop."""
        b, h, w, c = images.shape
        ch, cw = self.out_size(h, w)
        dev = images.device
        mean, std = self.mean.to(dev), self.std.to(dev)
        x = images.permute(0, 3, 1, 2).float().sub_(255.0 * mean)        # centred float, channels_last
        theta = self.theta(p, h, w)
        grid = None
        if (ch, cw) != (h, w) or not bool((theta == torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])).all()):
            grid = self.grid(theta.to(dev), ch, cw)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            y = F.grid_sample(masks.unsqueeze(1) - 255.0, grid, mode="nearest", padding_mode="zeros",
                              align_corners=False)[:, 0].add_(255.0).long()
        else:                                                             # identity: exact, no resampling
            y = masks.long()
        out = torch.empty(x.shape, device=dev, memory_format=torch.channels_last)
        post = 1.0 / (255.0 * std)
        if p.jitter is None:
            return torch.mul(x, post, out=out), y
        v = jitter_colors(x, p.jitter.to(dev), mean)                       # 0..255 units
        torch.addcmul(-255.0 * mean * post, v, post, out=out)             # normalize
        inside = self._inside(grid, h, w) if grid is not None else None
        if inside is not None:                                            # padding stays the mean colour (0)
            out.mul_(inside)
        return out, y

    @staticmethod
    def _inside(grid: torch.Tensor, h: int, w: int) -> torch.Tensor | None:
        """float [B, 1, h, w]: 1 where the (nearest) sample falls inside the input image, 0 on padding; None when
        no sample of the batch has padding."""
        gy, gx = grid[:, :, 0, 1], grid[:, 0, :, 0]
        iy = ((gy + 1) * h - 1) / 2                                       # input pixel coordinates
        ix = ((gx + 1) * w - 1) / 2
        vy = ((iy > -0.5) & (iy < h - 0.5)).float()
        vx = ((ix > -0.5) & (ix < w - 0.5)).float()
        if bool(vy.all()) and bool(vx.all()):
            return None
        return (vy[:, :, None] * vx[:, None, :]).unsqueeze(1)
