"""Object detectors: torchvision's FCOS, RetinaNet, SSDlite and Faster R-CNN on a feature pyramid over the
EfficientNet-Lite0 backbone we ship ImageNet weights for (or local weights), behind one ``Detector`` contract:

- input: float images [B, 3, H, W] in [0, 1] (the detector normalises with the backbone's mean/std itself);
- train mode with ``targets`` (one {"boxes" xyxy pixels, "labels" 0..C-1} per image) -> a dict of losses;
- eval mode -> one {"boxes", "scores", "labels" 0..C-1} per image, at most ``detections`` boxes with score >=
  ``score_thresh`` after per-class NMS at ``nms_iou``.

Softmax detectors (Faster R-CNN, SSDlite) reserve class 0 for the background; ``Detector`` hides that offset. The
detectors never resize: the data are letterboxed to a square S x S canvas and the detector's transform is told
min_size = max_size = S. ``get_classifier()`` returns everything except the backbone body (pyramid and heads), so
models/transfer.py freezes stages and gives the backbone its own learning rate as for any classifier.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from ..utils import ConfigError
from .segmentation import LITE0_MEAN_STD, Lite0Features, lite0_body
from .weights import format_report, load_weights

LITE0_LEVELS = {2: "c3", 4: "c4", 6: "c5"}         # Lite0 blocks at strides 8, 16, 32 (40, 112, 320 channels)
LITE0_CHANNELS = [40, 112, 320]
# default base box sizes per pyramid level (P3..P7, or P3..P5 + pool for Faster R-CNN), for inputs of 200-640 px
DEFAULT_SIZES = {"fcos": (8, 16, 32, 64, 128), "retinanet": (16, 32, 64, 128, 256),
                 "fasterrcnn": (16, 32, 64, 128), "ssdlite": ()}


class Lite0FPN(nn.Module):
    """Lite0 blocks 2/4/6 -> a feature pyramid of ``out_channels`` maps: P3-P5 plus P6, P7 (FCOS, RetinaNet) or a
    max-pooled P6 (Faster R-CNN); SSDlite reads the pyramid without extra levels."""

    def __init__(self, body: nn.Module, out_channels: int, extra: str):
        super().__init__()
        self.body = Lite0Features(body, LITE0_LEVELS)
        blocks = {"p6p7": LastLevelP6P7(out_channels, out_channels), "pool": LastLevelMaxPool(), "none": None}[extra]
        self.fpn = FeaturePyramidNetwork(LITE0_CHANNELS, out_channels, extra_blocks=blocks)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict:
        return self.fpn(OrderedDict(self.body(x)))


class Detector(nn.Module):
    """One torchvision detector (``net``) with class ids 0..C-1 on both sides (``offset`` 1 for softmax models)."""

    def __init__(self, net: nn.Module, offset: int, family: str):
        super().__init__()
        self.net, self.offset, self.family = net, offset, family

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        if targets is not None:
            targets = [{"boxes": t["boxes"], "labels": t["labels"] + self.offset} for t in targets]
            return self.net(list(images), targets)
        out = self.net(list(images))
        return [{"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] - self.offset} for d in out]

    def get_classifier(self) -> nn.Module:
        """Everything but the backbone body: what transfer learning keeps trainable at full learning rate."""
        return nn.ModuleList([m for name, m in self.net.named_children()
                              if name not in ("backbone", "transform")] + [self.net.backbone.fpn])

    def set_thresholds(self, score: float, nms_iou: float, detections: int) -> None:
        """Post-processing settings (a low score threshold for evaluation, the display one for predictions)."""
        n = self.net
        if hasattr(n, "roi_heads"):
            n.roi_heads.score_thresh, n.roi_heads.nms_thresh, n.roi_heads.detections_per_img = score, nms_iou, \
                detections
        else:
            n.score_thresh, n.nms_thresh, n.detections_per_img = score, nms_iou, detections


def _levels(sizes: tuple, n: int, ratios: tuple) -> AnchorGenerator:
    if len(sizes) != n:
        raise ConfigError(f"detection.anchor_sizes has {len(sizes)} sizes; this detector has {n} pyramid levels: "
                          f"give {n} sizes, e.g. {list(DEFAULT_SIZES)[:n]}, or [] for the default")
    return AnchorGenerator(tuple((int(s),) for s in sizes), (tuple(float(r) for r in ratios),) * n)


def build_detector(family: str, num_classes: int, image_size: int, pretrained: bool = False, weights: str = "",
                   fpn_channels: int = 64, head_convs: int = 2, anchor_sizes: tuple = (),
                   aspect_ratios: tuple = (0.5, 1.0, 2.0), score_thresh: float = 0.01, nms_iou: float = 0.5,
                   detections: int = 100) -> Detector:
    """A ``family`` detector (fcos, retinanet, fasterrcnn, ssdlite) on Lite0 + FPN for S x S inputs; ``pretrained``:
    the bundled ImageNet Lite0 backbone; ``weights``: a local file for the whole detector (one of our runs)."""
    if family not in DEFAULT_SIZES:
        raise ConfigError(f"detector {family!r}: choose one of {', '.join(DEFAULT_SIZES)}")
    body, report = lite0_body(32, pretrained)
    extra = {"fcos": "p6p7", "retinanet": "p6p7", "fasterrcnn": "pool", "ssdlite": "none"}[family]
    backbone = Lite0FPN(body, fpn_channels, extra)
    sizes = tuple(anchor_sizes) or DEFAULT_SIZES[family]
    common = dict(min_size=image_size, max_size=image_size, image_mean=list(LITE0_MEAN_STD[0]),
                  image_std=list(LITE0_MEAN_STD[1]))
    if family == "fcos":
        anchors = _levels(sizes, 5, (1.0,))
        head = FCOSHead(fpn_channels, 1, num_classes, num_convs=head_convs)
        net = FCOS(backbone, num_classes, anchor_generator=anchors, head=head, **common)
        offset = 0
    elif family == "retinanet":
        anchors = _levels(sizes, 5, aspect_ratios)
        net = RetinaNet(backbone, num_classes, anchor_generator=anchors, **common)
        offset = 0
    elif family == "fasterrcnn":
        anchors = _levels(sizes, 4, aspect_ratios)
        pool = MultiScaleRoIAlign(list(LITE0_LEVELS.values()), output_size=7, sampling_ratio=2)
        net = FasterRCNN(backbone, num_classes + 1, rpn_anchor_generator=anchors, box_roi_pool=pool, **common)
        offset = 1
    else:
        anchors = DefaultBoxGenerator([[2, 3]] * 3, min_ratio=0.2, max_ratio=0.95)
        head = SSDLiteHead([fpn_channels] * 3, anchors.num_anchors_per_location(), num_classes + 1, nn.BatchNorm2d)
        net = SSD(backbone, anchors, (image_size, image_size), num_classes + 1, head=head,
                  image_mean=common["image_mean"], image_std=common["image_std"])
        offset = 1
    model = Detector(net, offset, family)
    model.set_thresholds(score_thresh, nms_iou, detections)
    if weights:
        model.load_report = load_weights(model, weights)
        if model.load_report["missing"] or model.load_report["shape_mismatch"]:
            raise ConfigError(f"model.weights={weights} does not fit this {family} detector: "
                              f"{format_report(model.load_report)}")
    elif report is not None:
        model.load_report = report
    model.pretrained_cfg = {"mean": LITE0_MEAN_STD[0], "std": LITE0_MEAN_STD[1]}
    return model


DETECTION_MODELS = {f"{family}_lite0": family for family in DEFAULT_SIZES}
