"""The seed project's MNIST CNN, layer for layer (conv-pool x2, fc 1024->128->10, log-softmax)."""
from __future__ import annotations

import torch
from torch import nn


class SeedCNN(nn.Module):
    """conv 1->32 5x5, LeakyReLU, BN, pool; conv 32->64 5x5, ReLU, BN, pool; fc 1024->128, ReLU, dropout; fc 128->C."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dropout: float = 0.5, batchnorm: bool = True,
                 image_size: int = 28):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5), nn.LeakyReLU(), norm(32), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5), nn.ReLU(), norm(64), nn.MaxPool2d(2),
        )
        side = ((image_size - 4) // 2 - 4) // 2          # 28 -> 4, so 64*4*4 = 1024 features
        self.num_features = 64 * side * side
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(self.num_features, 128), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(128, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.head(feats), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.head = nn.Linear(128, num_classes)
