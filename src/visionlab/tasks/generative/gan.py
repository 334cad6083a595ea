"""task=dcgan: DCGAN with the non-saturating loss, two Adam optimizers stepped by the task (manual optimization),
one-sided label smoothing and a two time-scale discriminator lr; optionally class-conditional."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...models.generative import DCGANDiscriminator, DCGANGenerator
from .base import GenerativeTask
from .checks import check_generative


class DCGANTask(GenerativeTask):
    manual_optimization = True

    def __init__(self, model, info, cfg, generator):
        super().__init__(model, info, cfg.fid, cfg.data, cfg.dcgan.conditional, cfg.data.hflip, generator)
        self.p = cfg.dcgan

    @property
    def generator(self) -> DCGANGenerator:
        return self.model["generator"]

    @property
    def discriminator(self) -> DCGANDiscriminator:
        return self.model["discriminator"]

    def optimizer_groups(self, optim_cfg) -> dict:
        return {"generator": [{"params": list(self.generator.parameters())}],
                "discriminator": [{"params": list(self.discriminator.parameters()),
                                   "lr": optim_cfg.lr * self.p.d_lr_mult}]}

    def training_step(self, batch) -> dict:
        real = self.augment(batch[0])
        labels = self.labels_of(batch)
        z = torch.randn(len(real), self.generator.latent_dim, device=real.device)
        fake = self.generator(z, labels)

        d_real, d_fake = self.discriminator(real, labels).float(), self.discriminator(fake.detach(), labels).float()
        d_loss = (F.binary_cross_entropy_with_logits(d_real, torch.full_like(d_real, self.p.real_label))
                  + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        self.step_optimizer("discriminator", d_loss)

        g_logits = self.discriminator(fake, labels).float()        # non-saturating: maximise log D(G(z))
        g_loss = F.binary_cross_entropy_with_logits(g_logits, torch.ones_like(g_logits))
        self.step_optimizer("generator", g_loss)
        return {"loss": (d_loss + g_loss).detach(), "d_loss": d_loss.detach(), "g_loss": g_loss.detach(),
                "d_real": torch.sigmoid(d_real).mean().detach(), "d_fake": torch.sigmoid(d_fake).mean().detach()}

    def train_flops_per_image(self) -> int:
        """Per real image: G forward; D forward on the real, the detached fake and the fake again (3 D forwards);
        the D step's backward through both D passes and the G step's through D and G (backward = 2x forward):
        3 G + 9 D forwards."""
        from ...models import count_flops

        image = torch.zeros(1, self.info.channels, *self.input_size)
        d = count_flops(self.discriminator, image, *self._labels_example(1).values())
        return 3 * self.flops_per_image() + 9 * d

    def sample(self, n, generator, labels, steps=None):
        return self.generator(self.noise((n, self.generator.latent_dim), generator), labels)

    def export_example(self, batch: int = 2) -> dict:
        return {"z": torch.randn(batch, self.generator.latent_dim), **self._labels_example(batch)}

    def export_module(self) -> nn.Module:
        """The generator: noise (+ labels) -> images in [-1, 1]."""
        return self.generator


def build_dcgan(cfg, info, generator: torch.Generator) -> DCGANTask:
    size = check_generative(cfg, info, "dcgan")
    d, k = cfg.dcgan, info.num_classes if cfg.dcgan.conditional else 0
    model = nn.ModuleDict({"generator": DCGANGenerator(info.channels, size, d.latent_dim, d.width, k),
                           "discriminator": DCGANDiscriminator(info.channels, size, d.width, k)})
    return DCGANTask(model, info, cfg, generator)
