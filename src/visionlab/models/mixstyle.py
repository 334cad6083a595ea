"""MixStyle (Zhou et al. 2021, "Domain Generalization with MixStyle") and gradient reversal (Ganin & Lempitsky 2015).

MixStyle mixes the feature statistics (per-instance, per-channel mean and std) of training images at chosen layers:
x -> (x - mu) / sigma * sigma_mix + mu_mix with mu_mix = lam mu + (1 - lam) mu[j], lam ~ Beta(alpha, alpha), applied to
a batch with probability p, training only (off at evaluation). Partner j: a random image ("random") or one from
another domain ("crossdomain", when the batch holds two or more domains). It runs as forward hooks, so any zoo model
can take it at any named layer; all randomness comes from one torch.Generator (saved in checkpoints).
"""
from __future__ import annotations

import re

import torch
from torch import nn


def beta(alpha: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """n draws of Beta(alpha, alpha) by Johnk's rejection method in log space (exact for any alpha > 0; quick for
    the small alphas MixStyle uses, where X = U^(1/alpha) underflows in floating point)."""
    out = torch.empty(n, dtype=torch.float64)
    todo = torch.arange(n)
    while len(todo):
        log_x = torch.rand(len(todo), generator=generator, dtype=torch.float64).log() / alpha
        log_y = torch.rand(len(todo), generator=generator, dtype=torch.float64).log() / alpha
        log_s = torch.logaddexp(log_x, log_y)
        ok = log_s <= 0
        out[todo[ok]] = (log_x[ok] - log_s[ok]).exp()
        todo = todo[~ok]
    return out


def partners(domains: torch.Tensor, mix: str, generator: torch.Generator) -> torch.Tensor:
    """For each image the index of the image whose statistics it takes: uniform over the batch, or over the images
    of other domains (crossdomain; an image whose domain fills the batch falls back to a random partner)."""
    b = len(domains)
    scores = torch.rand(b, b, generator=generator)
    if mix == "crossdomain":
        other = domains.cpu().view(-1, 1) != domains.cpu().view(1, -1)
        scores = torch.where(other | ~other.any(1, keepdim=True), scores, torch.full_like(scores, -1.0))
    return scores.argmax(1)


class MixStyle:
    """Forward hooks mixing feature statistics at ``layers`` of a model (see the module docstring).

    Set ``domains`` (the batch's domain indices) before a training forward; ``active`` is True only inside
    ``mixing()``, so evaluation, export and the EMA's forward are untouched."""

    def __init__(self, p: float = 0.5, alpha: float = 0.1, mix: str = "random", generator=None, eps: float = 1e-6):
        if mix not in ("random", "crossdomain"):
            raise ValueError(f"mix={mix!r}: random or crossdomain")
        self.p, self.alpha, self.mix, self.eps = p, alpha, mix, eps
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.active = False
        self.domains: torch.Tensor | None = None
        self.handles: list = []

    def attach(self, model: nn.Module, layers: list[str]) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in layers if n not in modules]
        if missing:
            raise KeyError(missing[0])
        self.handles = [modules[n].register_forward_hook(self._hook) for n in layers]

    def mix_stats(self, x: torch.Tensor) -> torch.Tensor:
        """The mixed features of a [B, C, H, W] batch (always mixes: the probability p is drawn by the hook)."""
        b = x.shape[0]
        xf = x.float()
        mu = xf.mean((2, 3), keepdim=True).detach()
        sig = (xf.var((2, 3), keepdim=True) + self.eps).sqrt().detach()
        lam = beta(self.alpha, b, self.generator).to(x.device, torch.float32).view(b, 1, 1, 1)
        j = partners(self.domains if self.domains is not None else torch.zeros(b, dtype=torch.long), self.mix,
                     self.generator).to(x.device)
        mu_mix = lam * mu + (1 - lam) * mu[j]
        sig_mix = lam * sig + (1 - lam) * sig[j]
        return ((xf - mu) / sig * sig_mix + mu_mix).to(x.dtype)

    def _hook(self, module, inputs, output):
        if not (self.active and module.training) or not torch.is_tensor(output) or output.dim() != 4:
            return None
        if torch.rand(1, generator=self.generator).item() >= self.p:
            return None
        return self.mix_stats(output)


def auto_layers(model: nn.Module) -> list[str]:
    """MixStyle's default places: after the first two residual stages (ResNet ``layer1``, ``layer2``; EfficientNet
    and other timm ``blocks.1``, ``blocks.2``)."""
    names = [n for n, _ in model.named_modules()]
    for pattern in (r"(^|\.)layer[12]$", r"(^|\.)blocks\.[12]$", r"(^|\.)stages\.[01]$"):
        found = [n for n in names if re.search(pattern, n)]
        if len(found) == 2:
            return found
    return []


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward, gradient times -scale backward (the domain-adversarial features of DANN)."""
    return _Reverse.apply(x, scale)


class DomainHeadModel(nn.Module):
    """A classifier plus a domain head on its pooled features (the seed's joint domain + class prediction; with
    ``adversarial`` the features reach the head through gradient reversal). Calling it returns the class logits
    only, so evaluation, export, CAM and the app see the classifier."""

    def __init__(self, net: nn.Module, feature_dim: int, num_domains: int, adversarial: bool = False,
                 reverse_scale: float = 1.0):
        super().__init__()
        self.net = net
        self.domain_head = nn.Linear(feature_dim, num_domains)
        self.adversarial, self.reverse_scale = adversarial, reverse_scale

    def forward(self, x):
        return self.net(x)

    def forward_features(self, x):
        return self.net.forward_features(x)

    def forward_head(self, feats):
        return self.net.forward_head(feats)

    def both(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits, domain logits) from one pass."""
        feats = self.net.forward_features(x)
        pooled = feats.mean((-2, -1)) if feats.dim() == 4 else feats.flatten(1)
        if self.adversarial:
            pooled = grad_reverse(pooled, self.reverse_scale)
        return self.net.forward_head(feats), self.domain_head(pooled)
