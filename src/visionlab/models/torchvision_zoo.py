"""torchvision classification architectures by name, wrapped in the shared model contract."""
from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from ..utils import ConfigError

# torchvision builders whose training-mode output is a tuple unless auxiliary heads are off
_NO_AUX = {"googlenet", "inception_v3"}


def torchvision_names() -> list[str]:
    return sorted(tvm.list_models(module=tvm))


def _find_last(module: nn.Module, kind) -> str | None:
    name = None
    for n, m in module.named_modules():
        if isinstance(m, kind):
            name = n
    return name


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, attr, new)


class TorchvisionClassifier(nn.Module):
    """A torchvision model split at its last Linear layer into ``forward_features`` and ``forward_head``."""

    def __init__(self, name: str, num_classes: int, in_channels: int = 3, image_size: int | None = None, **kwargs):
        super().__init__()          # image_size is accepted for a uniform builder signature; these nets are size-agnostic
        if name in _NO_AUX:
            kwargs.setdefault("aux_logits", False)
            kwargs.setdefault("init_weights", True)
        try:
            self.body = tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        except TypeError as e:
            raise ConfigError(f"model {name!r}: {e}") from e
        if in_channels != 3:
            self._replace_stem(in_channels)
        path = _find_last(self.body, nn.Linear)
        # squeezenet has no Linear: its head is the conv classifier, applied to the 4-D feature map
        self.conv_head = path is None
        path = path or "classifier"
        self.head = self.body.get_submodule(path)
        _set_submodule(self.body, path, nn.Identity())

    def _replace_stem(self, in_channels: int) -> None:
        path = _find_last_first_conv(self.body)
        old = self.body.get_submodule(path)
        new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                        old.dilation, old.groups, old.bias is not None)
        _set_submodule(self.body, path, new)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.features(x) if self.conv_head else self.body(x)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        out = self.head(feats)
        return torch.flatten(out, 1) if out.dim() > 2 else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        if isinstance(self.head, nn.Linear):
            self.head = nn.Linear(self.head.in_features, num_classes)
        else:
            seq = self.head
            conv = next(m for m in seq.modules() if isinstance(m, nn.Conv2d))
            self.head = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(conv.in_channels, num_classes, 1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1))


def _find_last_first_conv(module: nn.Module) -> str:
    for n, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            return n
    raise ConfigError("model has no Conv2d stem to adapt to the number of input channels")
