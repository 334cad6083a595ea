"""task=vae: a convolutional (optionally class-conditional) VAE trained on the evidence lower bound with a beta
weight and linear KL warm-up; samples from the prior, reconstructions and latent interpolations."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...models.generative import ConvVAE
from ..base import TRAIN_FLOPS_PER_FORWARD, Prediction
from .base import GenerativeTask, make_grid, to_model, to_uint8
from .checks import check_generative


class VAETask(GenerativeTask):
    def __init__(self, model, info, cfg, generator):
        super().__init__(model, info, cfg.fid, cfg.data, cfg.vae.conditional, cfg.data.hflip, generator)
        self.p = cfg.vae
        self._bound_sum, self._bound_n = 0.0, 0

    @property
    def vae(self) -> ConvVAE:
        return self.model["vae"]

    def kl_weight(self) -> float:
        """beta, ramped linearly over the first ``kl_warmup_epochs`` epochs (0 in the first one)."""
        if self.p.kl_warmup_epochs <= 0:
            return self.p.beta
        return self.p.beta * min(1.0, self.epoch / self.p.kl_warmup_epochs)

    def _terms(self, x: torch.Tensor, labels, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image reconstruction NLL (Bernoulli, nats) and KL(q(z|x) || N(0, I)), averaged over the batch."""
        mu, logvar = self.vae.encode(x, labels)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        logits = self.vae.decode(z, labels).float()
        rec = F.binary_cross_entropy_with_logits(logits, (x.float() + 1) / 2, reduction="sum") / len(x)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).float().sum() / len(x)
        return rec, kl

    def training_step(self, batch) -> dict:
        x = self.augment(batch[0])
        rec, kl = self._terms(x, self.labels_of(batch))
        w = self.kl_weight()
        return {"loss": rec + w * kl, "recon": rec.detach(), "kl": kl.detach(), "kl_weight": w}

    def sample(self, n, generator, labels, steps=None):
        return self.vae(self.noise((n, self.vae.latent_dim), generator), labels)

    # ---- evaluation: the negative ELBO (an upper bound on -log p(x), nats per image) besides FID
    def evaluate_batch(self, batch) -> None:
        rec, kl = self._terms(to_model(batch[0]), self.labels_of(batch))
        self._bound_sum += float(rec + kl) * len(batch[0])
        self._bound_n += len(batch[0])

    def own_metrics(self) -> dict:
        return {"neg_elbo": self._bound_sum / max(self._bound_n, 1)}

    def reset_metrics(self, collect_examples: bool = False) -> None:
        super().reset_metrics(collect_examples)
        self._bound_sum, self._bound_n = 0.0, 0

    def reconstruct(self, images: torch.Tensor, labels=None) -> torch.Tensor:
        mu, _ = self.vae.encode(to_model(images), labels)
        return to_uint8(self.vae(mu, labels))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        """Reconstructions through the posterior mean (a conditional VAE uses class 0: pass images of one class)."""
        labels = torch.zeros(len(images), dtype=torch.long, device=images.device) if self.conditional else None
        return Prediction("images", images=self.reconstruct(images, labels))

    @torch.no_grad()
    def epoch_images(self) -> dict:
        out = super().epoch_images()
        if self._val_images is None or self.conditional:
            return out
        real = self._val_images.to(next(self.model.parameters()).device)
        out["reconstructions"] = make_grid(torch.cat([real.cpu(), self.reconstruct(real).cpu()]), rows=2)
        mu, _ = self.vae.encode(to_model(real[:8]))
        steps = torch.linspace(0, 1, 8, device=mu.device)[:, None]
        rows = [to_uint8(self.vae(mu[i] * (1 - steps) + mu[i + 1] * steps)).cpu() for i in range(0, 8, 2)]
        out["interpolations"] = make_grid(torch.cat(rows), rows=4)
        return out

    def train_flops_per_image(self) -> int:
        """Encoder and decoder, forward and backward (3x)."""
        from ...models import count_flops

        x = torch.zeros(1, self.info.channels, *self.input_size)
        encode = count_flops(self.vae, x, *self._labels_example(1).values(), method="encode")
        return TRAIN_FLOPS_PER_FORWARD * (encode + self.flops_per_image())

    def export_example(self, batch: int = 2) -> dict:
        return {"z": torch.randn(batch, self.vae.latent_dim), **self._labels_example(batch)}

    def export_module(self) -> nn.Module:
        """The decoder: latent codes (+ labels) -> images in [-1, 1]."""
        return self.vae


def build_vae(cfg, info, generator: torch.Generator) -> VAETask:
    size = check_generative(cfg, info, "vae")
    v = cfg.vae
    model = nn.ModuleDict({"vae": ConvVAE(info.channels, size, v.latent_dim, v.width,
                                          info.num_classes if v.conditional else 0)})
    return VAETask(model, info, cfg, generator)

