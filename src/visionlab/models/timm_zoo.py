"""timm architectures by name (optional dependency), wrapped in the shared model contract with preprocessing metadata.

A name reaches timm when our registry does not know it and ``timm.is_model`` does, or with an explicit ``timm/``
prefix (``timm/resnet18`` where torchvision has a ``resnet18`` too)."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..utils import ConfigError

PREFIX = "timm/"


def timm_available() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def is_timm_name(name: str) -> bool:
    """True for ``timm/<arch>`` and for any architecture timm knows (checked only when timm is installed)."""
    if not timm_available():
        return False
    import timm

    return timm.is_model(name.removeprefix(PREFIX))


def timm_preprocessing(arch: str) -> dict:
    """mean/std/input_size/interpolation/crop_pct of the architecture's default pretrained weights (no download)."""
    import timm

    cfg = timm.get_pretrained_cfg(arch.removeprefix(PREFIX))
    cfg = cfg.to_dict() if cfg is not None else {}
    return {"mean": tuple(cfg.get("mean", (0.485, 0.456, 0.406))), "std": tuple(cfg.get("std", (0.229, 0.224, 0.225))),
            "input_size": int(cfg.get("input_size", (3, 224, 224))[-1]),
            "interpolation": cfg.get("interpolation", "bicubic"), "crop_pct": float(cfg.get("crop_pct", 0.875))}


class TimmClassifier(nn.Module):
    """A timm model under ``body``; timm's own forward_features (feature map) and forward_head (pool + fc)."""

    def __init__(self, name: str, num_classes: int, in_channels: int = 3, image_size: int | None = None,
                 stem: str = "imagenet", drop_path: float = 0.0, pretrained: bool = False):
        super().__init__()
        import timm

        arch = name.removeprefix(PREFIX)
        kwargs = {"num_classes": num_classes, "in_chans": in_channels}
        pre = timm_preprocessing(arch)
        fixed = getattr(timm.get_pretrained_cfg(arch), "fixed_input_size", False)
        if fixed and image_size and image_size != pre["input_size"]:
            kwargs["img_size"] = image_size       # ViT-style models size their position embedding at build time
        if drop_path > 0:
            kwargs["drop_path_rate"] = drop_path
        try:
            self.body = timm.create_model(arch, pretrained=pretrained, **kwargs)
        except TypeError as e:
            if "drop_path_rate" not in kwargs:
                raise ConfigError(f"model {name!r}: {e}") from e
            warnings.warn(f"model {name!r} has no stochastic depth; model.drop_path={drop_path} is ignored")
            kwargs.pop("drop_path_rate")
            self.body = timm.create_model(arch, pretrained=pretrained, **kwargs)
        self.pretrained_cfg = pre
        if stem == "cifar":
            self._cifar_stem(in_channels)

    def _cifar_stem(self, in_channels: int) -> None:
        """timm ResNet family: 3x3 stride-1 first conv and no max-pool (other timm models keep their stem)."""
        from timm.models.resnet import ResNet

        if not isinstance(self.body, ResNet):
            return
        conv1 = self.body.conv1
        if isinstance(conv1, nn.Conv2d):
            self.body.conv1 = nn.Conv2d(in_channels, conv1.out_channels, 3, 1, 1, bias=False)
        else:       # deep stem ('d'/'s' variants): three 3x3 convs; only the first one strides
            first = next(m for m in conv1.modules() if isinstance(m, nn.Conv2d))
            first.stride = (1, 1)
        self.body.maxpool = nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.forward_features(x)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.body.forward_head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.body.reset_classifier(num_classes)
