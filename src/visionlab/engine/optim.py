"""Optimizers and learning-rate schedules built from the `optim` config section."""
from __future__ import annotations

import math

import torch

from ..utils import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw", "nadam", "rmsprop")
SCHEDULERS = ("none", "step", "multistep", "cosine", "onecycle", "triangle")
TRIANGLE = (0.2, 0.23, 0.07)    # airbench94's schedule: start factor, peak position (fraction of steps), end factor


def build_optimizer(param_groups, cfg) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov), Adam, AdamW, NAdam or RMSprop, with weight decay; the task's ``param_groups``
    with optim.bias_lr_mult and optim.bias_decay applied to their 1-D parameters."""
    name, lr, wd = cfg.name.lower(), cfg.lr, cfg.weight_decay
    param_groups = scale_biases(param_groups, cfg)
    betas = tuple(cfg.betas)
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(param_groups, lr=lr, betas=betas, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, weight_decay=wd)
    if name == "nadam":
        return torch.optim.NAdam(param_groups, lr=lr, betas=betas, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(param_groups, lr=lr, momentum=cfg.momentum, weight_decay=wd)
    raise ConfigError(f"optim.name: unknown optimizer {cfg.name!r}; choose one of {', '.join(OPTIMIZERS)}")


def scale_biases(groups: list[dict], cfg) -> list[dict]:
    """Each group split into its weights (unchanged) and its 1-D parameters (biases, norm weights) at the group's
    lr x ``cfg.bias_lr_mult``, decayed at weight_decay / bias_lr_mult with ``cfg.bias_decay`` (then the product
    lr x decay, the shrink per step, is the weights' own), else as the task chose. At the defaults: ``groups``.
    A 1-D parameter marked ``p.lr_as_weight = True`` (airbench94's whitening bias) keeps the group's lr, and with
    ``cfg.bias_decay`` the weights' decay."""
    mult = cfg.bias_lr_mult
    if mult == 1.0 and not cfg.bias_decay:
        return groups
    out = []
    for g in groups:
        params, task_decay = list(g["params"]), g.get("weight_decay", cfg.weight_decay)
        decay = cfg.weight_decay if cfg.bias_decay else task_decay
        weights = [p for p in params if p.ndim > 1]
        as_weights = [p for p in params if p.ndim <= 1 and getattr(p, "lr_as_weight", False)]
        biases = [p for p in params if p.ndim <= 1 and not getattr(p, "lr_as_weight", False)]
        if weights:
            out.append({**g, "params": weights})
        if as_weights:
            out.append({**g, "params": as_weights, "weight_decay": decay})
        if biases:
            out.append({**g, "params": biases, "lr": g.get("lr", cfg.lr) * mult,
                        "weight_decay": decay / mult if cfg.bias_decay else task_decay})
    return out


def lr_multiplier(cfg, epochs: int, steps_per_epoch: int):
    """A function step -> lr factor. Epoch-based schedules (step, multistep) change at epoch boundaries,
    exactly like torch's StepLR/MultiStepLR stepped once per epoch; cosine and one-cycle change every step."""
    total = max(1, epochs * steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    kind = cfg.scheduler.lower()
    if kind not in SCHEDULERS:
        raise ConfigError(f"optim.scheduler: unknown schedule {cfg.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0

    def main(step: int) -> float:
        epoch = step // steps_per_epoch
        if kind == "step":
            return cfg.gamma ** (epoch // max(1, cfg.step_size))
        if kind == "multistep":
            return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
        if kind == "cosine":
            t = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        if kind == "triangle":      # airbench94: piecewise linear, up from start to 1 at the peak, down to end
            start, at, end = TRIANGLE
            peak = int(at * total)
            if step < peak:
                return start + (1 - start) * step / peak
            return 1 + (end - 1) * min(1.0, (step - peak) / max(1, total - peak))
        if kind == "onecycle":      # Smith 2018, torch's OneCycleLR defaults: 30 % up from lr/25, cosine down to lr/1e4
            up = max(1, int(0.3 * total))
            if step < up:
                return 1 / 25 + (1 - 1 / 25) * 0.5 * (1 - math.cos(math.pi * step / up))
            t = min(1.0, (step - up) / max(1, total - up))
            return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * t))
        return 1.0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup * main(warmup)
        return main(step)

    return factor


def build_scheduler(optimizer, cfg, epochs: int, steps_per_epoch: int):
    """A LambdaLR stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg, epochs, steps_per_epoch))
