"""``spec_cnn``: a CNN from a small YAML layer list (model.spec=PATH), then global average pooling and a linear head.

Grammar (one list entry per layer; see configs/spec_cnn_example.yaml):
  - conv: {out: 32, k: 3, stride: 1, groups: 1}   # k, stride, groups optional; padding k//2 keeps the size at stride 1
  - bn | relu | gelu | silu | leaky_relu | tanh     # bare words; bn is BatchNorm2d over the current channels
  - pool: 2       # max-pool, kernel = stride = 2          - avgpool: 2   # average pool, same
  - dropout: 0.25 # Dropout2d on feature maps"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..utils import ConfigError
from .layers import LinearHeadNet

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh}
CONV_KEYS = {"out", "k", "stride", "groups"}
GRAMMAR = ("conv: {out: N, k: 3, stride: 1, groups: 1}, bn, " + ", ".join(ACTIVATIONS)
           + ", pool: N, avgpool: N, dropout: P")


def read_spec(spec) -> list:
    """The layer list from a YAML file path (or an already parsed list, for the Python API)."""
    if isinstance(spec, list):
        return spec
    if not spec:
        raise ConfigError("model.name=spec_cnn needs model.spec=PATH to a YAML layer list "
                          "(see configs/spec_cnn_example.yaml)")
    p = Path(spec)
    if not p.is_file():
        raise ConfigError(f"model.spec={spec}: file not found (see configs/spec_cnn_example.yaml)")
    import yaml

    try:
        layers = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"model.spec={spec}: not valid YAML ({e})") from e
    if isinstance(layers, dict) and "layers" in layers:
        layers = layers["layers"]
    if not isinstance(layers, list) or not layers:
        raise ConfigError(f"model.spec={spec}: expected a non-empty list of layers ({GRAMMAR})")
    return layers


def _number(entry, value, kind, lo, hi):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi
    if not ok or (kind is int and value != int(value)):
        raise ConfigError(f"spec layer {entry!r}: expected a{'n integer' if kind is int else ' number'} "
                          f"in [{lo}, {hi}]")
    return kind(value)


def build_layer(entry, channels: int) -> tuple[nn.Module, int]:
    """One spec entry -> (module, output channels); ConfigError naming the entry when it does not parse."""
    if isinstance(entry, str):
        if entry == "bn":
            return nn.BatchNorm2d(channels), channels
        if entry in ACTIVATIONS:
            return ACTIVATIONS[entry](), channels
        raise ConfigError(f"spec layer {entry!r}: unknown layer; valid: {GRAMMAR}")
    if not (isinstance(entry, dict) and len(entry) == 1):
        raise ConfigError(f"spec layer {entry!r}: write one layer per list entry ({GRAMMAR})")
    (kind, arg), = entry.items()
    if kind == "conv":
        if not isinstance(arg, dict) or "out" not in arg or set(arg) - CONV_KEYS:
            raise ConfigError(f"spec layer {entry!r}: conv takes {{out: N, k: 3, stride: 1, groups: 1}}")
        out = _number(entry, arg["out"], int, 1, 65536)
        k = _number(entry, arg.get("k", 3), int, 1, 31)
        stride = _number(entry, arg.get("stride", 1), int, 1, 16)
        groups = _number(entry, arg.get("groups", 1), int, 1, 65536)
        if channels % groups or out % groups:
            raise ConfigError(f"spec layer {entry!r}: groups={groups} must divide in ({channels}) and out ({out})")
        return nn.Conv2d(channels, out, k, stride, k // 2, groups=groups), out
    if kind in ("pool", "avgpool"):
        size = _number(entry, arg, int, 1, 64)
        return (nn.MaxPool2d(size) if kind == "pool" else nn.AvgPool2d(size)), channels
    if kind == "dropout":
        return nn.Dropout2d(_number(entry, arg, float, 0.0, 0.99)), channels
    raise ConfigError(f"spec layer {entry!r}: unknown layer {kind!r}; valid: {GRAMMAR}")


class SpecCNN(LinearHeadNet):
    """The spec's layers, global average pooling, a linear head."""

    def __init__(self, layers: list, num_classes: int, in_channels: int = 3):
        super().__init__()
        modules, c = [], in_channels
        for entry in layers:
            m, c = build_layer(entry, c)
            modules.append(m)
        self.features = nn.Sequential(*modules)
        self.num_features = c
        self.head = nn.Linear(c, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean((2, 3))


def spec_cnn(num_classes: int, in_channels: int = 3, image_size: int | None = None, spec="") -> SpecCNN:
    """Build the CNN described by the YAML file ``spec``; the feature map must stay >= 1 px at ``image_size``."""
    model = SpecCNN(read_spec(spec), num_classes, in_channels)
    if image_size:
        side = image_size
        for m in model.features:
            if isinstance(m, nn.Conv2d):
                side = (side + 2 * m.padding[0] - m.kernel_size[0]) // m.stride[0] + 1
            elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
                side //= m.kernel_size
            if side < 1:
                raise ConfigError(f"model.spec: the feature map shrinks to nothing at {m} for {image_size} px "
                                  f"images; remove a pool or stride")
    return model
