"""The Task contract: the science of one task (loss, metrics, prediction); the engine does the rest."""
from __future__ import annotations

import torch
from torch import nn


class Task:
    """Subclasses set ``primary_metric`` and implement the steps. Batches arrive on the task's device."""

    primary_metric: tuple[str, str] = ("val/acc", "max")
    manual_optimization: bool = False

    def __init__(self, model: nn.Module):
        self.model = model

    def training_step(self, batch) -> dict:
        """Return {"loss": scalar tensor, **other scalars (tensors or floats)} for one training batch."""
        raise NotImplementedError

    def validation_step(self, batch) -> None:
        """Update the task's metric accumulators with one evaluation batch (model in eval mode, no grad)."""
        raise NotImplementedError

    def compute_metrics(self) -> dict:
        """Metrics accumulated since ``reset_metrics``, as plain floats (plus any lists)."""
        raise NotImplementedError

    def reset_metrics(self, collect_examples: bool = False) -> None:
        raise NotImplementedError

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC images -> task output (class probabilities for classification)."""
        raise NotImplementedError

    def on_train_epoch_start(self, epoch: int) -> None:
        """Called after ``model.train()`` at the start (and resume) of each 0-based epoch; a function of the epoch
        only, so a resumed run is set up exactly like an uninterrupted one."""

    def param_groups(self, optim_cfg) -> list[dict]:
        """Parameter groups for the optimizer; weight decay skips norms and biases (1-D tensors)."""
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
