"""Generative networks: a convolutional VAE, the DCGAN generator/discriminator (optionally class-conditional) and a
small DDPM U-Net with sinusoidal time embedding. Sizes: any square image whose side is 4 or 7 times a power of two
(28 MNIST, 32 CIFAR-10, 64 TrashNet): the nets halve down to that base size and double back up."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import ConfigError


def base_and_levels(image_size: int) -> tuple[int, int]:
    """(base, levels) with image_size = base * 2**levels, base 4 or 7 (28 -> (7, 2), 32 -> (4, 3), 64 -> (4, 4))."""
    for base in (4, 7):
        levels = 0
        while base * 2 ** levels < image_size:
            levels += 1
        if base * 2 ** levels == image_size and levels >= 1:
            return base, levels
    raise ConfigError(f"generative models need square images of side 4 or 7 times a power of two (28, 32, 56, 64, "
                      f"128), got {image_size}: set data.image_size=32 (or 28, 64)")


def dcgan_init(m: nn.Module) -> None:
    """DCGAN's initialisation (Radford et al. 2016): conv weights N(0, 0.02), batch-norm scales N(1, 0.02)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


# ---- VAE ------------------------------------------------------------------------------------------------------------

class ConvVAE(nn.Module):
    """Encoder: stride-2 convs down to the base size -> (mu, logvar); decoder mirrors it and outputs pixel logits
    (Bernoulli likelihood on [0, 1] intensities). ``num_classes`` > 0 conditions both on a one-hot label (CVAE)."""

    def __init__(self, channels: int, image_size: int, latent_dim: int = 32, width: int = 32, num_classes: int = 0):
        super().__init__()
        base, levels = base_and_levels(image_size)
        self.latent_dim, self.num_classes, self.base = latent_dim, num_classes, base
        widths = [width * 2 ** min(i, 3) for i in range(levels)]
        enc, c = [], channels
        for w in widths:
            enc += [nn.Conv2d(c, w, 4, 2, 1), nn.BatchNorm2d(w), nn.LeakyReLU(0.2)]
            c = w
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        flat = c * base * base
        self.to_stats = nn.Linear(flat + num_classes, 2 * latent_dim)
        self.from_latent = nn.Sequential(nn.Linear(latent_dim + num_classes, flat), nn.ReLU())
        dec = []
        for w_in, w_out in zip(widths[::-1], widths[::-1][1:] + [None]):
            if w_out is None:
                dec += [nn.ConvTranspose2d(w_in, channels, 4, 2, 1)]
            else:
                dec += [nn.ConvTranspose2d(w_in, w_out, 4, 2, 1), nn.BatchNorm2d(w_out), nn.ReLU()]
        self.decoder = nn.Sequential(*dec)
        self._top = c

    def _cond(self, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if not self.num_classes:
            return h
        return torch.cat([h, F.one_hot(labels, self.num_classes).to(h.dtype)], 1)

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_stats(self._cond(self.encoder(x), labels)).chunk(2, dim=1)
        return mu, logvar.clamp(-30, 20)

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.from_latent(self._cond(z, labels)).view(-1, self._top, self.base, self.base)
        return self.decoder(h)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Latent codes -> images in [-1, 1] (what sampling and the exported decoder compute)."""
        return torch.sigmoid(self.decode(z, labels)) * 2 - 1


# ---- DCGAN ----------------------------------------------------------------------------------------------------------

class DCGANGenerator(nn.Module):
    """z [B, latent_dim] (+ label) -> tanh image: a transposed conv to base x base, then stride-2 transposed convs
    with batch norm and ReLU, halving the width at each doubling (Radford et al. 2016)."""

    def __init__(self, channels: int, image_size: int, latent_dim: int = 100, width: int = 64, num_classes: int = 0):
        super().__init__()
        base, levels = base_and_levels(image_size)
        self.latent_dim, self.num_classes = latent_dim, num_classes
        w = width * 2 ** (levels - 1)
        layers = [nn.ConvTranspose2d(latent_dim + num_classes, w, base, 1, 0, bias=False), nn.BatchNorm2d(w),
                  nn.ReLU(True)]
        for _ in range(levels - 1):
            layers += [nn.ConvTranspose2d(w, w // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(w // 2), nn.ReLU(True)]
            w //= 2
        layers += [nn.ConvTranspose2d(w, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes:
            z = torch.cat([z, F.one_hot(labels, self.num_classes).to(z.dtype)], 1)
        return self.net(z[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    """image (+ one-hot label maps as extra input channels, Mirza & Osindero 2014) -> one logit per image:
    stride-2 convs with LeakyReLU(0.2), batch norm after the first, a base x base conv to 1x1 at the end."""

    def __init__(self, channels: int, image_size: int, width: int = 64, num_classes: int = 0):
        super().__init__()
        base, levels = base_and_levels(image_size)
        self.num_classes = num_classes
        layers, c, w = [], channels + num_classes, width
        for i in range(levels):
            layers += [nn.Conv2d(c, w, 4, 2, 1, bias=i == 0)]
            layers += ([nn.BatchNorm2d(w)] if i else []) + [nn.LeakyReLU(0.2, True)]
            c, w = w, w * 2
        layers += [nn.Conv2d(c, 1, base, 1, 0)]
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes:
            maps = F.one_hot(labels, self.num_classes).to(x.dtype)[:, :, None, None]
            x = torch.cat([x, maps.expand(-1, -1, *x.shape[-2:])], 1)
        return self.net(x).flatten()


# ---- DDPM U-Net -----------------------------------------------------------------------------------------------------

def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (integer or real) timesteps, as in the Transformer and DDPM."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], 1)


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added in between (Ho et al. 2020)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.block1 = nn.Sequential(_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, c_out))
        self.block2 = nn.Sequential(_norm(c_out), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x) + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.block2(h)


class SelfAttention(nn.Module):
    """Single-head self-attention over the pixels of the lowest-resolution feature map."""

    def __init__(self, c: int):
        super().__init__()
        self.norm, self.qkv, self.proj = _norm(c), nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class UNet(nn.Module):
    """(x_t [B, C, H, W], t [B]) (+ label) -> predicted noise: one residual block per level, stride-2 convs down,
    nearest-upsample + conv up, skip connections, attention at the lowest resolution. ``mults`` widen each level."""

    def __init__(self, channels: int, image_size: int, width: int = 32, mults: tuple = (1, 2, 2),
                 attention: bool = True, num_classes: int = 0, dropout: float = 0.0):
        super().__init__()
        if image_size % 2 ** (len(mults) - 1):
            raise ConfigError(f"ddpm.channel_mults has {len(mults)} levels: image size {image_size} must be divisible "
                              f"by {2 ** (len(mults) - 1)}; use fewer levels")
        self.width, self.num_classes = width, num_classes
        emb = 4 * width
        self.time = nn.Sequential(nn.Linear(width, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.label = nn.Embedding(num_classes, emb) if num_classes else None
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        widths = [width * m for m in mults]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        c = width
        for i, w in enumerate(widths):
            self.down.append(ResBlock(c, w, emb, dropout))
            self.downsample.append(nn.Conv2d(w, w, 3, 2, 1) if i < len(widths) - 1 else nn.Identity())
            c = w
        self.mid1, self.mid2 = ResBlock(c, c, emb, dropout), ResBlock(c, c, emb, dropout)
        self.attn = SelfAttention(c) if attention else nn.Identity()
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            self.up.append(ResBlock(c + w, w, emb, dropout))
            up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w, w, 3, padding=1))
            self.upsample.append(up if i > 0 else nn.Identity())
            c = w
        self.head = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time(timestep_embedding(t, self.width))
        if self.label is not None:
            emb = emb + self.label(labels)
        h, skips = self.stem(x), []
        for block, down in zip(self.down, self.downsample):
            h = block(h, emb)
            skips.append(h)
            h = down(h)
        h = self.mid2(self.attn(self.mid1(h, emb)), emb)
        for block, up in zip(self.up, self.upsample):
            h = up(block(torch.cat([h, skips.pop()], 1), emb))
        return self.head(h)
