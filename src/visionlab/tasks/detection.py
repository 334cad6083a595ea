"""Object detection (task=detection): a torchvision detector on the Lite0 feature pyramid (models/detection.py),
trained on letterboxed box datasets (data/detection.py), scored by COCO-standard mAP (metrics/detection.py).

Batches are (uint8 images [B, S, S, C], boxes [B, M, 5] with class -1 padding rows). Evaluation keeps every
detection above ``detection.eval_score_threshold`` (at most ``detection.max_detections`` per image) for AP, and uses
``detection.score_threshold`` for what people see (predictions, the confusion matrix, the gallery). The gallery keeps
the test images with the lowest F1 at IoU 0.5 at the display threshold.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from ..data.box_transforms import BatchBoxAugment, to_float, unpad
from ..metrics.detection import DetectionMetrics, image_f1
from ..models.transfer import TransferSchedule
from ..utils import ConfigError
from .base import Prediction, Task


@dataclass
class DetectionParams:
    eval_score_threshold: float = 0.01
    score_threshold: float = 0.3
    nms_iou: float = 0.5
    max_detections: int = 100
    max_examples: int = 8


class DetectionTask(Task):
    target = "boxes"
    primary_metric = ("val/map", "max")

    def __init__(self, model: nn.Module, info, params: DetectionParams, train_tf: BatchBoxAugment,
                 transfer: TransferSchedule):
        super().__init__(model, info, tuple(info.image_size))
        self.p, self.train_tf, self.transfer = params, train_tf, transfer
        self.metrics = DetectionMetrics(info.classes, params.eval_score_threshold, params.score_threshold,
                                        params.max_detections)
        self._examples: list | None = None
        self._seen = 0

    def _net(self) -> nn.Module:
        return getattr(self.model, "module", self.model)

    # ---- training
    def on_train_epoch_start(self, epoch: int) -> None:
        self.transfer.at_epoch(self._net(), epoch)

    def param_groups(self, optim_cfg) -> list[dict]:
        return self.transfer.param_groups(self._net(), optim_cfg.lr)

    def training_step(self, batch) -> dict:
        images, boxes = batch
        x, targets = self.train_tf(images, boxes)
        losses = self.model(x, targets)
        loss = sum(v.float() for v in losses.values())
        return {"loss": loss, **{k.removeprefix("loss_"): v.detach().float() for k, v in losses.items()},
                "boxes": torch.tensor(float(sum(len(t["labels"]) for t in targets)) / max(1, len(targets)))}

    # ---- evaluation
    def detect(self, images: torch.Tensor, score: float) -> list[dict]:
        """Detections (boxes in canvas pixels, scores, 0-based labels) of uint8 NHWC canvases above ``score``."""
        net = self._net()
        net.set_thresholds(score, self.p.nms_iou, self.p.max_detections)
        out = self.model(to_float(images))
        return [{k: v.float() if k != "labels" else v for k, v in d.items()} for d in out]

    @torch.no_grad()
    def validation_step(self, batch) -> None:
        images, boxes = batch
        preds, targets = self.detect(images, self.p.eval_score_threshold), unpad(boxes)
        self.metrics.update(preds, targets)
        if self._examples is not None:
            self._keep_worst(images, boxes, preds)
        self._seen += len(images)

    def _keep_worst(self, images, boxes, preds) -> None:
        """Keep the ``max_examples`` images with the lowest F1 at IoU 0.5 at the display threshold."""
        for i, (d, t) in enumerate(zip(preds, unpad(boxes))):
            keep = d["scores"] >= self.p.score_threshold
            d = {k: v[keep].cpu() for k, v in d.items()}
            f1 = image_f1(d["boxes"], d["labels"], d["scores"], t["boxes"], t["labels"])
            pred = torch.cat([d["boxes"], d["labels"][:, None].float(), d["scores"][:, None]], 1).numpy()
            self._examples.append((f1, self._seen + i, images[i].cpu().numpy(), boxes[i].cpu().numpy(), pred))
        self._examples.sort(key=lambda e: e[0])
        del self._examples[self.p.max_examples:]

    def compute_metrics(self) -> dict:
        """AP numbers (logged as val/... and test/...); the per-class table, PR curves, the box confusion matrix
        ("box_confusion", so the classification report's matrix does not claim it) and the evaluation's counts and
        thresholds ("evaluation") go to summary.json only."""
        out = self.metrics.compute()
        protocol = ("n_images", "n_gt", "n_detections", "eval_score_threshold", "display_score_threshold",
                    "max_detections")
        out["evaluation"] = {k: out.pop(k) for k in protocol}
        out["box_confusion"] = out.pop("confusion")
        return out

    def reset_metrics(self, collect_examples: bool = False) -> None:
        self.metrics.reset()
        self._examples = [] if collect_examples else None
        self._seen = 0

    def examples(self) -> dict | None:
        if not self._examples:
            return None
        f1, index, images, true, pred = zip(*self._examples)
        width = max(1, max(len(p) for p in pred))
        padded = np.full((len(pred), width, 6), -1.0, np.float32)
        for k, p in enumerate(pred):
            padded[k, :len(p)] = p
        return {"images": np.stack(images), "true": np.stack(true).astype(np.float32), "pred": padded,
                "conf": np.asarray(f1, dtype=np.float32), "index": np.asarray(index, dtype=np.int64)}

    # ---- using the model
    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        return to_float(images)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        """Detections at the display threshold, in the (letterboxed) input's pixels."""
        return Prediction("boxes", boxes=[{k: v.cpu() for k, v in d.items()}
                                          for d in self.detect(images, self.p.score_threshold)])

    def _export_min_score(self) -> float:
        """The lowest score the exported graph keeps: the evaluation threshold, or the display one when lower."""
        return min(self.p.eval_score_threshold, self.p.score_threshold)

    def export_metadata(self) -> dict:
        """The export keeps scores down to ``min_score`` (for mAP); people should be shown those >= score_threshold."""
        p = self.p
        return {"score_threshold": p.score_threshold, "min_score": self._export_min_score(),
                "nms_iou": p.nms_iou, "max_detections": p.max_detections, "boxes": "x0, y0, x1, y1 in canvas pixels",
                "labels": "0-based class index into classes"}

    def export_module(self) -> nn.Module:
        """uint8 [1, S, S, C] letterboxed canvas -> (boxes float [N, 4] canvas pixels, scores [N], labels int64 [N]
        0-based), NMS and the top ``max_detections`` inside (deploy.export.DetectorExport). It keeps every score >=
        the evaluation threshold (or the display one when lower), so an export's mAP is the run's; what people see is
        its output at ``detection.score_threshold``."""
        from ..deploy.export import wrap_detector

        return wrap_detector(self._net(), to_float, self._export_min_score(), self.p.nms_iou, self.p.max_detections)

    def flops_per_image(self) -> int:
        from ..models import count_flops

        return count_flops(self._net(), torch.zeros(1, 3, *self.input_size))


def build_detection(cfg, info, generator: torch.Generator) -> DetectionTask:
    """The detector, its joint image/box augmentation and the evaluation settings for a detection run."""
    from ..models.detection import DETECTION_MODELS, build_detector

    m, d = cfg.model, cfg.detection
    if info.target != "boxes":
        raise ConfigError(f"task=detection needs images with boxes; data.name={cfg.data.name} has "
                          f"{'masks' if info.target == 'mask' else 'class labels'}: choose neu_det_boxes, coco128 or "
                          "box_folder (data.root=FOLDER with VOC, YOLO or COCO labels)")
    if m.name not in DETECTION_MODELS:
        raise ConfigError(f"model.name={m.name} is not a detector; choose one of {', '.join(sorted(DETECTION_MODELS))}")
    if info.image_size[0] != info.image_size[1]:
        raise ConfigError(f"detection needs square letterboxed images, got {tuple(info.image_size)}")
    if d.scale_min > d.scale_max:
        raise ConfigError(f"detection.scale_min={d.scale_min} > detection.scale_max={d.scale_max}")
    model = build_detector(DETECTION_MODELS[m.name], info.num_classes, int(info.image_size[0]),
                           pretrained=m.pretrained, weights=m.weights, fpn_channels=d.fpn_channels,
                           head_convs=d.head_convs, anchor_sizes=tuple(d.anchor_sizes),
                           aspect_ratios=tuple(d.aspect_ratios), score_thresh=d.eval_score_threshold,
                           nms_iou=d.nms_iou, detections=d.max_detections)
    info = replace(info, mean=tuple(model.pretrained_cfg["mean"]), std=tuple(model.pretrained_cfg["std"]))
    train_tf = BatchBoxAugment(True, d.hflip, d.vflip, (d.scale_min, d.scale_max), d.jitter)
    params = DetectionParams(d.eval_score_threshold, d.score_threshold, d.nms_iou, d.max_detections, d.max_examples)
    return DetectionTask(model, info, params, train_tf, TransferSchedule.from_config(cfg))
