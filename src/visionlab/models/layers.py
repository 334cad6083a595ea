"""Small pieces shared by our own architectures: stochastic depth (drop path) and the linear-head model contract."""
from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, zero a residual branch for a random subset of samples and
    rescale the rest by 1/(1-p), so the expected output is unchanged; identity in eval."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def drop_path_rates(rate: float, n_blocks: int) -> list[float]:
    """Per-block rates rising linearly from 0 to ``rate`` (the deepest block drops most), as in timm and the paper."""
    if n_blocks <= 1:
        return [rate] * n_blocks
    return [rate * i / (n_blocks - 1) for i in range(n_blocks)]


class LinearHeadNet(nn.Module):
    """The model contract for our nets with a pooled feature vector and one Linear head: subclasses set
    ``self.head`` and ``self.num_features`` and define ``forward_features`` (images -> [B, num_features])."""

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.head = nn.Linear(self.num_features, num_classes)
