"""task=ddpm: denoising diffusion (Ho et al. 2020) with epsilon prediction on a small U-Net, linear or cosine noise
schedule, EMA weights through train.ema_decay; DDIM sampling (Song et al. 2021) with any number of steps, or the
ancestral sampler over all T steps (DDIM with eta = 1 on the full sequence)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...models.generative import UNet
from ...utils import ConfigError
from .base import GenerativeTask
from .checks import check_generative


def alpha_bars(schedule: str, timesteps: int) -> torch.Tensor:
    """Cumulative products of (1 - beta_t), float64 [T]: linear betas 1e-4..0.02 scaled to T (Ho et al.), or the
    cosine schedule (Nichol & Dhariwal 2021, s = 0.008, betas clipped at 0.999)."""
    if schedule == "linear":
        scale = 1000 / timesteps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
        return torch.cumprod(1 - betas, 0)
    if schedule == "cosine":
        s = 0.008
        t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        return torch.cumprod(1 - betas, 0)
    raise ConfigError(f"ddpm.schedule={schedule!r}: choose linear or cosine")


class DDPMTask(GenerativeTask):
    def __init__(self, model, info, cfg, generator):
        super().__init__(model, info, cfg.fid, cfg.data, cfg.ddpm.conditional, cfg.data.hflip, generator)
        self.p = cfg.ddpm
        if self.p.sampler not in ("ddim", "ancestral"):
            raise ConfigError(f"ddpm.sampler={self.p.sampler!r}: choose ddim or ancestral")
        self.alpha_bar = alpha_bars(self.p.schedule, self.p.timesteps)
        self.sampling_steps = self.p.sample_steps if self.p.sampler == "ddim" else None   # ancestral: all T

    @property
    def unet(self) -> UNet:
        return self.model["unet"]

    def training_step(self, batch) -> dict:
        x0 = self.augment(batch[0])
        t = torch.randint(0, self.p.timesteps, (len(x0),), device=x0.device)
        noise = torch.randn_like(x0)
        ab = self.alpha_bar.to(x0.device, torch.float32)[t][:, None, None, None]
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        err = (self.unet(xt, t, self.labels_of(batch)).float() - noise).pow(2).mean((1, 2, 3))
        return {"loss": (err * self.loss_weights(t)).mean()}

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-image weight of the epsilon MSE at timesteps ``t``: 1, or min(SNR, gamma) / SNR under Min-SNR-gamma
        (the nearly clean timesteps, whose noise is easy to see and costly to fit, count less)."""
        if self.p.min_snr_gamma <= 0:
            return torch.ones(len(t), device=t.device)
        ab = self.alpha_bar.to(t.device)[t]
        snr = ab / (1 - ab)
        return (snr.clamp(max=self.p.min_snr_gamma) / snr).float()

    def timesteps_for(self, steps: int) -> list[int]:
        """``steps`` timesteps evenly spread over [0, T-1], highest first (DDIM's sub-sequence)."""
        steps, last = min(steps, self.p.timesteps), self.p.timesteps - 1
        if steps == 1:
            return [last]
        return sorted({round(i * last / (steps - 1)) for i in range(steps)}, reverse=True)

    def sample(self, n, generator, labels, steps: int | None = None):
        """DDIM (eta 0) over ``steps`` (default ddpm.sample_steps) timesteps, or ancestral sampling over all T."""
        ancestral = self.p.sampler == "ancestral"
        seq = self.timesteps_for(self.p.timesteps if ancestral else (steps or self.p.sample_steps))
        x = self.noise((n, self.info.channels, *self.input_size), generator)
        ab = self.alpha_bar.to(x.device)
        for i, t in enumerate(seq):
            a_t = ab[t]
            a_prev = ab[seq[i + 1]] if i + 1 < len(seq) else torch.ones((), dtype=ab.dtype, device=x.device)
            eps = self.unet(x, torch.full((n,), t, device=x.device), labels).float()
            x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()          # consistent with the clipped x0
            sigma = ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt() if ancestral else a_t.new_zeros(())
            x = a_prev.sqrt() * x0 + (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * eps
            if ancestral and i + 1 < len(seq):
                x = x + sigma * self.noise(x.shape, generator)
            x = x.float()
        return x

    def export_example(self, batch: int = 2) -> dict:
        return {"x": torch.randn(batch, self.info.channels, *self.input_size),
                "t": torch.linspace(0, self.p.timesteps - 1, batch).long(), **self._labels_example(batch)}

    def export_module(self) -> nn.Module:
        """The denoiser: (x_t, t) (+ labels) -> predicted noise; the sampling loop stays outside."""
        return self.unet


def build_ddpm(cfg, info, generator: torch.Generator) -> DDPMTask:
    size = check_generative(cfg, info, "ddpm")
    d = cfg.ddpm
    model = nn.ModuleDict({"unet": UNet(info.channels, size, d.width, tuple(d.channel_mults), d.attention,
                                        info.num_classes if d.conditional else 0, d.dropout)})
    return DDPMTask(model, info, cfg, generator)
