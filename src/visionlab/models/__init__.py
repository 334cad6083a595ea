"""Model registry and ``build_model``: our nets, torchvision and timm architectures behind one contract
(forward_features, forward_head, reset_classifier, pretrained_cfg), local/bundled weights and a parameter budget."""
from __future__ import annotations

import inspect
import warnings
from functools import partial

import torch
from torch import nn

from ..registry import Registry
from ..utils import ConfigError, UserError
from .airbench import airbench94
from .drn import drn_c_26, drn_d_22
from .preact_resnet import preact_resnet18
from .pretrained import bundled_weights, download_error, download_torchvision, torchvision_classes
from .resnet_cifar import resnet18_cifar
from .seed_cnn import SeedCNN
from .segmentation import SEGMENTATION_BUILDERS
from .spec_cnn import spec_cnn
from .timm_zoo import PREFIX as TIMM_PREFIX
from .timm_zoo import TimmClassifier, is_timm_name, timm_preprocessing
from .torchvision_zoo import TorchvisionClassifier, torchvision_names
from .weights import adapt_first_conv, format_report, load_weights
from .wide_resnet import wrn_28_10, wrn_28_2

MODELS = Registry("model")
MODELS.register("mnist_cnn", SeedCNN)
MODELS.register("mnist_cnn_nobn", partial(SeedCNN, batchnorm=False))
MODELS.register("resnet18_cifar", resnet18_cifar)
MODELS.register("airbench94", airbench94)
MODELS.register("wrn_28_2", wrn_28_2)
MODELS.register("wrn_28_10", wrn_28_10)
MODELS.register("preact_resnet18", preact_resnet18)
MODELS.register("drn_c_26", drn_c_26)
MODELS.register("drn_d_22", drn_d_22)
MODELS.register("spec_cnn", spec_cnn)
for _name in torchvision_names():
    MODELS.register(_name, partial(TorchvisionClassifier, _name))
# semantic segmentation: forward returns {"out": [B, C, H, W], "aux": ...}; not the classifier contract
SEGMENTATION_MODELS = frozenset(SEGMENTATION_BUILDERS)
for _name, _fn in SEGMENTATION_BUILDERS.items():
    MODELS.register(_name, _fn)

STEMS = ("auto", "imagenet", "cifar")


def resolve_stem(stem: str, image_size: int | None, pretrained: bool) -> str:
    """``auto`` -> ``cifar`` for images under 64 px trained from scratch (a 7x7/2 conv + pool would shrink 32 px to
    8 px before the first stage), else ``imagenet``."""
    if stem not in STEMS:
        raise ConfigError(f"model.stem={stem!r}: choose one of {', '.join(STEMS)}")
    if stem != "auto":
        return stem
    return "cifar" if (image_size is not None and image_size < 64 and not pretrained) else "imagenet"


def _builder(name: str):
    """(builder, is_timm) for ``name``: our registry first, then timm (``timm/<arch>`` or any name timm knows)."""
    if name not in MODELS and (name.startswith(TIMM_PREFIX) or is_timm_name(name)):
        if not is_timm_name(name):
            raise ConfigError(f"model {name!r}: timm does not know {name.removeprefix(TIMM_PREFIX)!r} "
                              f"(or timm is not installed: pip install timm)")
        return partial(TimmClassifier, name), True
    return MODELS.get(name), False


def _construct(name: str, num_classes: int, in_channels: int, image_size, stem: str, drop_path: float,
               spec: str, timm_download: bool, extra: dict) -> nn.Module:
    """Call the builder with the common keyword arguments it declares (plus ``extra``, builder-specific ones such
    as resnet18_cifar's width); warn when a set drop_path cannot be honoured."""
    builder, is_timm = _builder(name)
    offered = {"image_size": image_size, "stem": stem, "drop_path": drop_path, "spec": spec}
    params = inspect.signature(builder).parameters
    # None = "the builder's own default" (SeedCNN's 28 px), so it is not passed
    kwargs = {k: v for k, v in offered.items() if k in params and v is not None} | extra
    if drop_path > 0 and "drop_path" not in params:
        warnings.warn(f"model {name!r} has no stochastic depth; model.drop_path={drop_path} is ignored")
    if not is_timm:
        return builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
    try:
        return builder(num_classes=num_classes, in_channels=in_channels, pretrained=timm_download, **kwargs)
    except (ConfigError, UserError):
        raise
    except Exception as e:  # noqa: BLE001 - timm raises hub/network errors of many types when offline
        if timm_download:
            raise download_error(name, e) from e
        raise


def build_model(name: str, num_classes: int, in_channels: int = 3, pretrained: bool = False, weights: str = "",
                image_size: int | None = None, stem: str = "auto", drop_path: float = 0.0, spec: str = "",
                max_params: float = 0, download: bool = False, **kwargs) -> nn.Module:
    """Build a model by name. Weights come from the local file ``weights``, else (``pretrained``) from a file an
    installed package ships (tf_efficientnet_lite0), else, only with ``download``, from torchvision/timm.
    Library weights are loaded into the full pretrained model, then the head is reset to ``num_classes``.
    ``max_params`` > 0 raises ConfigError when the model is larger. The model carries ``load_report`` when weights
    were loaded and ``pretrained_cfg`` (mean, std, input_size, interpolation) where its family defines one.
    Other ``kwargs`` go to the builder as they are (e.g. ``width`` for resnet18_cifar; ``output_stride``,
    ``aux_loss`` for the SEGMENTATION_MODELS, whose builders handle their own weights)."""
    if name in SEGMENTATION_MODELS:
        if drop_path > 0:
            warnings.warn(f"model {name!r} has no stochastic depth; model.drop_path={drop_path} is ignored")
        model = MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, pretrained=pretrained,
                                 weights=weights, download=download, image_size=image_size, **kwargs)
        check_budget(name, model, max_params)
        return model
    stem = resolve_stem(stem, image_size, pretrained)
    bundled = bundled_weights(name) if (pretrained and not weights) else None
    library = pretrained and not weights        # the whole pretrained network, head included
    if library and bundled is None and not download:
        raise UserError(f"model.pretrained=true for {name!r} needs a local weights file: set model.weights=PATH, "
                        f"or model.download=true where a network exists (nothing is downloaded implicitly)")
    src_classes = bundled[1] if bundled else (_library_classes(name) if library else num_classes)
    model = _construct(name, src_classes, 3 if library else in_channels, image_size, stem, drop_path, spec,
                       timm_download=library and bundled is None, extra=kwargs)
    if weights or bundled:
        model.load_report = load_weights(model, weights or bundled[0])
    elif library and isinstance(model, TorchvisionClassifier):
        model.load_report = download_torchvision(model, name)
    if library:
        _check_complete(name, model)
        if in_channels != 3:
            adapt_first_conv(model, in_channels)
        if num_classes != src_classes:
            model.reset_classifier(num_classes)
    check_budget(name, model, max_params)
    return model


def _library_classes(name: str) -> int:
    if _builder(name)[1]:
        import timm

        cfg = timm.get_pretrained_cfg(name.removeprefix(TIMM_PREFIX))
        return int(getattr(cfg, "num_classes", 1000) or 1000)
    return torchvision_classes(name)


def _check_complete(name: str, model: nn.Module) -> None:
    """Library weights must fill the whole network: anything missing means a wrong file or a broken mapping."""
    rep = getattr(model, "load_report", None)
    if rep and (rep["missing"] or rep["shape_mismatch"]):
        raise UserError(f"pretrained weights for {name!r} do not fit the architecture: {format_report(rep)}")


def check_budget(name: str, model: nn.Module, max_params: float) -> None:
    """ConfigError when ``model`` has more than ``max_params`` parameters (0 = no budget)."""
    if max_params and max_params > 0:
        n = count_params(model)
        if n > max_params:
            raise ConfigError(f"model {name!r} has {n:,} parameters, over the budget model.max_params="
                              f"{int(max_params):,}; choose a smaller model (or fewer spec channels), or raise "
                              f"model.max_params")


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def flops_per_image(model: nn.Module, in_channels: int, image_size: tuple[int, int]) -> int:
    """Forward FLOPs for one image (multiply-add = 2 FLOPs), counted by torch's FlopCounterMode."""
    x = torch.zeros(1, in_channels, *image_size, device=next(model.parameters()).device)
    return count_flops(model, x)


def count_flops(model: nn.Module, *inputs, method: str = "__call__") -> int:
    """Forward FLOPs of ``model(*inputs)`` in eval mode (multiply-add = 2 FLOPs), by torch's FlopCounterMode;
    ``method`` names another entry point (e.g. a VAE's ``encode``)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        getattr(model, method)(*[x.to(device) if torch.is_tensor(x) else x for x in inputs])
    model.train(was_training)
    return int(counter.get_total_flops())


__all__ = ["MODELS", "SEGMENTATION_MODELS", "build_model", "check_budget", "count_flops", "count_params",
           "flops_per_image",
           "resolve_stem", "timm_preprocessing"]
