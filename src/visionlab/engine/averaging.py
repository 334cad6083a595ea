"""Weight averaging for evaluation: an exponential moving average (train.ema_decay) or airbench94's lookahead
(train.lookahead). Both look like torch's AveragedModel to the loop: ``module`` is the model that evaluation, the
best checkpoint and progress pictures use; ``update_parameters(model)`` runs after every optimizer step;
``state_dict`` travels in the checkpoint, so a resumed run continues the average exactly."""
from __future__ import annotations

import copy

import torch

from ..utils import ConfigError


class Lookahead(torch.nn.Module):
    """airbench94's lookahead (after Zhang et al. 2019): every ``every`` steps the slow copy moves toward the trained
    weights, slow <- rho x slow + (1 - rho) x fast with rho = decay^every x (step / total)^3, and the trained weights
    are set back to it; at the last step they become the slow copy. Early on rho is near 0 (the slow copy follows);
    at the end it is decay^every = 0.77 (a pull back toward the average). Every float tensor of the state (weights,
    BatchNorm statistics) takes part, as in airbench."""

    def __init__(self, model: torch.nn.Module, total_steps: int, every: int = 5, decay: float = 0.95):
        super().__init__()
        self.module = copy.deepcopy(model)
        self.total_steps, self.every, self.decay = max(1, total_steps), every, decay
        self.register_buffer("n_steps", torch.tensor(0, dtype=torch.long))

    def rho(self, step: int) -> float:
        """The slow copy's weight in the average taken at ``step``."""
        return self.decay ** self.every * min(1.0, step / self.total_steps) ** 3

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        self.n_steps += 1
        step = int(self.n_steps)
        if step % self.every and step != self.total_steps:
            return
        slow_fast = [(s, f) for s, f in zip(self.module.state_dict().values(), model.state_dict().values())
                     if f.is_floating_point()]
        if step % self.every == 0:
            for slow, fast in slow_fast:
                slow.lerp_(fast, 1 - self.rho(step))
        for slow, fast in slow_fast:
            fast.copy_(slow)


def build_averaging(model: torch.nn.Module, cfg, total_steps: int) -> torch.nn.Module | None:
    """The averaged model the train config asks for (``cfg``: TrainConfig), or None."""
    if cfg.lookahead and cfg.ema_decay > 0:
        raise ConfigError(f"train.lookahead=true and train.ema_decay={cfg.ema_decay}: choose one way of averaging "
                          "the weights (lookahead moves the trained weights too; an EMA only watches them)")
    if cfg.lookahead:
        return Lookahead(model, total_steps)
    if cfg.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    return None
