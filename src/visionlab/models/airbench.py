"""airbench94 (Keller Jordan, 2024): the CIFAR-10 speed-run network. A 2x2 patch-whitening conv fitted from the data,
three conv groups (64, 256, 256), BatchNorm with a frozen scale, a bias-free head whose logits are scaled by 1/9."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LinearHeadNet


class BatchNorm(nn.BatchNorm2d):
    """airbench's BatchNorm: torch momentum 0.4 (airbench's 0.6 is its weight on the old statistics), eps 1e-12, the
    scale frozen at 1 (only the shift trains)."""

    def __init__(self, channels: int, momentum: float = 0.4, eps: float = 1e-12):
        super().__init__(channels, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)


class Conv(nn.Conv2d):
    """3x3 'same' conv without bias; its first ``in_channels`` filters start as the identity (dirac), as in airbench,
    so each block begins close to passing its input through."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 3, padding=1, bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.dirac_(self.weight[:self.in_channels])


class ConvGroup(nn.Sequential):
    """conv -> max-pool 2 -> BN -> GELU -> conv -> BN -> GELU."""

    def __init__(self, cin: int, cout: int):
        super().__init__(Conv(cin, cout), nn.MaxPool2d(2), BatchNorm(cout), nn.GELU(),
                         Conv(cout, cout), BatchNorm(cout), nn.GELU())


class Whitening(nn.Module):
    """A 2x2 conv (no padding) whose filters whiten image patches: the eigenvectors of the patch covariance scaled by
    1/sqrt(eigenvalue + eps), then their negatives (2 x C*4 channels). The filters are a buffer: fitted from data
    (``fit``), saved in checkpoints, never trained; until fitted they assume unit covariance. The bias trains, at the
    weights' learning rate (``lr_as_weight``: optim.bias_lr_mult leaves it alone)."""

    def __init__(self, in_channels: int, eps: float = 5e-4):
        super().__init__()
        k = in_channels * 4
        basis = torch.eye(k).view(k, in_channels, 2, 2)
        self.register_buffer("weight", torch.cat([basis, -basis]))
        self.bias = nn.Parameter(torch.zeros(2 * k))
        self.bias.lr_as_weight = True       # airbench trains it at the weights' lr and decay, not optim.bias_lr_mult
        self.eps = eps
        self.out_channels = 2 * k

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Set the filters from normalised images ``x`` [B, C, H, W] (every 2x2 patch, in float64)."""
        k = self.out_channels // 2
        patches = F.unfold(x.double(), 2).transpose(1, 2).reshape(-1, k)    # (c, dy, dx) order, as the conv weight
        eigval, eigvec = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (eigvec.T / (eigval[:, None] + self.eps).sqrt()).flip(0)       # largest variance first
        filters = filters.reshape(k, *self.weight.shape[1:]).to(self.weight)
        self.weight.copy_(torch.cat([filters, -filters]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias)


class Airbench94(LinearHeadNet):
    """whitening -> GELU -> three ConvGroups -> global max-pool -> Linear (no bias) x 1/9.

    Two hooks for the classification task: ``init_from_data(x)`` fits the whitening filters once, before the first
    step of a fresh run; ``set_epoch(e)`` trains the whitening bias only in the first ``whiten_bias_epochs`` epochs."""

    logit_scale = 1 / 9             # airbench's output scaling: small logits at the start, as a tempered softmax

    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths: tuple = (64, 256, 256),
                 whiten_bias_epochs: int = 3):
        super().__init__()
        self.whiten = Whitening(in_channels)
        cin, groups = self.whiten.out_channels, []
        for width in widths:
            groups.append(ConvGroup(cin, width))
            cin = width
        self.layers = nn.Sequential(nn.GELU(), *groups)
        self.num_features = cin
        self.head = nn.Linear(cin, num_classes, bias=False)
        self.whiten_bias_epochs = whiten_bias_epochs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # airbench's MaxPool2d(3) sees a 3x3 map at 32 px: a global max, which also serves other sizes
        return self.layers(self.whiten(x)).amax(dim=(2, 3))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats) * self.logit_scale

    def reset_classifier(self, num_classes: int) -> None:
        self.head = nn.Linear(self.num_features, num_classes, bias=False)

    def init_from_data(self, x: torch.Tensor) -> None:
        """Fit the whitening filters to normalised training images ``x`` [B, C, H, W]."""
        self.whiten.fit(x)

    def set_epoch(self, epoch: int) -> None:
        """Train the whitening bias in 0-based epochs below ``whiten_bias_epochs`` only (then frozen)."""
        self.whiten.bias.requires_grad_(epoch < self.whiten_bias_epochs)


def airbench94(num_classes: int = 10, in_channels: int = 3, image_size: int | None = None) -> Airbench94:
    """airbench94 for 32x32 images (``image_size`` is informational: the global max-pool takes any size)."""
    return Airbench94(num_classes, in_channels)
