"""torchvision classification architectures by name, wrapped in the shared model contract."""
from __future__ import annotations

import warnings

import torch
from torch import nn
from torchvision import models as tvm

from ..utils import ConfigError
from .pretrained import torchvision_preprocessing

# torchvision builders whose training-mode output is a tuple unless auxiliary heads are off
_NO_AUX = {"googlenet", "inception_v3"}
# builders with stochastic depth (torchvision's ``stochastic_depth_prob``); others ignore model.drop_path.
# convnext/efficientnet take it as a keyword; swin/maxvit fix it inside the builder, so their rates are rescaled
_DROP_PATH_KWARG = ("convnext_", "efficientnet_")
_DROP_PATH_FIXED = ("swin_", "maxvit_")


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

    def __init__(self, name: str, num_classes: int, in_channels: int = 3, image_size: int | None = None,
                 stem: str = "imagenet", drop_path: float = 0.0, **kwargs):
        super().__init__()          # image_size: accepted for a uniform builder signature; these nets are size-agnostic
        if name in _NO_AUX:
            kwargs.setdefault("aux_logits", False)
            kwargs.setdefault("init_weights", True)
        # always applied, so 0 means off here as in timm (torchvision's own defaults are 0.1-0.5)
        if name.startswith(_DROP_PATH_KWARG):
            kwargs["stochastic_depth_prob"] = drop_path
        elif drop_path > 0 and not name.startswith(_DROP_PATH_FIXED):
            warnings.warn(f"torchvision {name} has no stochastic depth; model.drop_path={drop_path} is ignored")
        try:
            self.body = tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        except TypeError as e:
            raise ConfigError(f"model {name!r}: {e}") from e
        if name.startswith(_DROP_PATH_FIXED):
            _rescale_stochastic_depth(self.body, drop_path)
        if in_channels != 3:
            self._replace_stem(in_channels)
        path = _find_last(self.body, nn.Linear)
        # squeezenet has no Linear: its head is the conv classifier, applied to the 4-D feature map
        self.conv_head = path is None
        path = path or "classifier"
        self.head = self.body.get_submodule(path)
        _set_submodule(self.body, path, nn.Identity())
        # torchvision files name the head by its place in the model ("fc.weight"); ours is "head.weight"
        self.key_aliases = {f"{path}.{k}": f"head.{k}" for k in self.head.state_dict()}
        self.pretrained_cfg = torchvision_preprocessing(name)
        if stem == "cifar":
            self._cifar_stem(in_channels)

    def _cifar_stem(self, in_channels: int) -> None:
        """ResNet/ResNeXt/Wide-ResNet: 3x3 stride-1 first conv and no max-pool, so 32 px images keep 32x32 into
        stage 1 (the 7x7/2 conv + pool would leave 8x8). EfficientNet (V1, V2): its 3x3 stem conv at stride 1, so
        32 px images end at 2x2 instead of 1x1 (total stride 16, as CIFAR ports of it do). Other families: as built."""
        if isinstance(self.body, tvm.ResNet):
            self.body.conv1 = nn.Conv2d(in_channels, self.body.conv1.out_channels, 3, 1, 1, bias=False)
            self.body.maxpool = nn.Identity()
        elif isinstance(self.body, tvm.EfficientNet):
            self.body.features[0][0].stride = (1, 1)

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


def _rescale_stochastic_depth(body: nn.Module, rate: float) -> None:
    """Set the deepest block's rate to ``rate``, keeping the builder's linear ramp (swin and maxvit rise linearly
    to exactly their fixed stochastic_depth_prob, so the largest p is that value)."""
    layers = [m for m in body.modules() if type(m).__name__ == "StochasticDepth"]
    top = max((m.p for m in layers), default=0.0)
    for m in layers:
        m.p = m.p * rate / top if top > 0 else 0.0


def _find_last_first_conv(module: nn.Module) -> str:
    for n, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            return n
    raise ConfigError("model has no Conv2d stem to adapt to the number of input channels")
