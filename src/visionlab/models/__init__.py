"""Model registry: ``build_model(name, num_classes, in_channels, pretrained=False, **kwargs)`` and model stats."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..registry import Registry
from ..utils import UserError
from .resnet_cifar import resnet18_cifar
from .seed_cnn import SeedCNN
from .torchvision_zoo import TorchvisionClassifier, torchvision_names
from .weights import load_weights

MODELS = Registry("model")
MODELS.register("mnist_cnn", SeedCNN)
MODELS.register("mnist_cnn_nobn", partial(SeedCNN, batchnorm=False))
MODELS.register("resnet18_cifar", resnet18_cifar)
for _name in torchvision_names():
    MODELS.register(_name, partial(TorchvisionClassifier, _name))


def build_model(name: str, num_classes: int, in_channels: int = 3, pretrained: bool = False,
                weights: str = "", **kwargs) -> nn.Module:
    """Build a registered model. Pretrained weights come from the local file ``weights`` only."""
    model = MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, **kwargs)
    if pretrained and not weights:
        raise UserError(f"model.pretrained=true needs a local weights file: set model.weights=PATH "
                        f"(nothing is downloaded implicitly)")
    if weights:
        model.load_report = load_weights(model, weights)
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_image(model: nn.Module, in_channels: int, image_size: tuple[int, int]) -> int:
    """Forward FLOPs for one image (multiply-add = 2 FLOPs), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_channels, *image_size, device=next(model.parameters()).device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())
