"""The checks every generative task runs before building its networks: square images of a supported size, its own
architecture name, labels when conditional."""
from __future__ import annotations

from ...config import DEFAULT_MODEL
from ...models.generative import base_and_levels
from ...utils import ConfigError


def check_generative(cfg, info, task: str) -> int:
    """The image side the networks are built for; a ConfigError naming the fix otherwise."""
    if cfg.model.name != DEFAULT_MODEL[task]:
        raise ConfigError(f"task={task} trains its own network (model.name={DEFAULT_MODEL[task]}, sized by the "
                          f"{task}.* keys), got model.name={cfg.model.name}: drop model.name")
    h, w = info.image_size
    if h != w:
        raise ConfigError(f"task={task} needs square images, got {h}x{w}: set data.image_size=N "
                          "(with data.pad_square=true to letterbox instead of stretching)")
    base_and_levels(h)
    section = getattr(cfg, task)
    if section.conditional and info.target != "label":
        raise ConfigError(f"{task}.conditional=true needs class labels; data.name={cfg.data.name} has "
                          f"{info.target} targets")
    return h
