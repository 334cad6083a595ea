"""Semantic segmentation: per-pixel cross-entropy (ignore index, class weights, optional Dice and auxiliary head),
mIoU from one accumulated confusion matrix, multi-scale / flip test-time evaluation, worst-image examples."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.mask_transforms import IGNORE, BatchSegAugment
from ..deploy.export import wrap_uint8
from ..metrics.segmentation import SegmentationMetrics
from ..models.transfer import TransferSchedule
from ..utils import ConfigError
from .base import Prediction, Task


@dataclass
class SegmentationParams:
    num_classes: int
    class_weights: tuple = ()        # per-class cross-entropy weights; empty = uniform
    dice: float = 0.0                # weight of the soft Dice term added to the cross-entropy
    aux_weight: float = 0.4          # weight of the auxiliary head's loss (torchvision reference: 0.5; DeepLab: 0.4)
    tta_scales: tuple = (1.0,)       # test-time scales whose softmax outputs are averaged
    tta_flip: bool = False           # also average horizontally flipped inputs
    max_examples: int = 8            # worst test images kept for the overlay gallery


class SegmentationTask(Task):
    target = "mask"
    primary_metric = ("val/miou", "max")

    def __init__(self, model, info, params: SegmentationParams, train_tf: BatchSegAugment, eval_tf: BatchSegAugment,
                 transfer: TransferSchedule):
        super().__init__(model, info, tuple(info.image_size))
        self.p = params
        self.train_tf, self.eval_tf = train_tf, eval_tf
        self.transfer = transfer
        self.metrics = SegmentationMetrics(params.num_classes, IGNORE)
        self._ce_weight = torch.tensor(params.class_weights, dtype=torch.float32) if params.class_weights else None
        self._examples: list | None = None
        self._seen = 0
        self.on_train_epoch_start(0)      # freeze now, before an optimizer or DDP sees the parameters

    # ---- training
    def on_train_epoch_start(self, epoch: int) -> None:
        self.transfer.at_epoch(getattr(self.model, "module", self.model), epoch)

    def param_groups(self, optim_cfg) -> list[dict]:
        return self.transfer.param_groups(getattr(self.model, "module", self.model), optim_cfg.lr)

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = None if self._ce_weight is None else self._ce_weight.to(logits.device)
        loss = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORE)
        if self.p.dice > 0:
            loss = loss + self.p.dice * soft_dice_loss(logits.float(), target, IGNORE)
        return loss

    def training_step(self, batch) -> dict:
        images, masks = batch
        x, y = self.train_tf(images, masks)
        out = self.model(x)
        loss = self._loss(out["out"], y)
        scalars = {}
        if "aux" in out:
            aux = self._loss(out["aux"], y)
            scalars["aux_loss"] = aux.detach()
            loss = loss + self.p.aux_weight * aux
        keep = y != IGNORE
        acc = (out["out"].argmax(1)[keep] == y[keep]).float().mean() if keep.any() else torch.zeros(())
        return {"loss": loss, "pixel_acc": acc.detach(), **scalars}

    # ---- evaluation
    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax averaged over the test-time scales (and flips), at the input resolution."""
        size = x.shape[-2:]
        total = None
        for s in self.p.tta_scales:
            xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            views = [(xs, False)] + ([(xs.flip(-1), True)] if self.p.tta_flip else [])
            for v, flipped in views:
                logits = self.model(v)["out"].float()
                if flipped:
                    logits = logits.flip(-1)
                if logits.shape[-2:] != size:
                    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
                p = logits.softmax(1)
                total = p if total is None else total + p
        return total

    @torch.no_grad()
    def validation_step(self, batch) -> None:
        images, masks = batch
        x, y = self.eval_tf(images, masks)
        probs = self._probs(x)
        pred = probs.argmax(1)
        self.metrics.update(pred, y)
        if self._examples is not None:
            self._keep_worst(images, y, pred)

    def _keep_worst(self, images, y, pred) -> None:
        """Keep the ``max_examples`` images with the lowest pixel accuracy seen so far (worst first in the gallery)."""
        for i in range(len(images)):
            keep = y[i] != IGNORE
            score = float((pred[i][keep] == y[i][keep]).float().mean()) if keep.any() else 1.0
            self._examples.append((score, self._seen + i, images[i].cpu().numpy(),
                                   y[i].to(torch.uint8).cpu().numpy(), pred[i].to(torch.uint8).cpu().numpy()))
        self._examples.sort(key=lambda e: e[0])
        del self._examples[self.p.max_examples:]
        self._seen += len(images)

    def compute_metrics(self) -> dict:
        out = self.metrics.compute()
        out.pop("n")                      # pixels counted: a property of the split, not of the model
        return out

    def reset_metrics(self, collect_examples: bool = False) -> None:
        self.metrics.reset()
        self._examples = [] if collect_examples else None
        self._seen = 0

    def examples(self) -> dict | None:
        if not self._examples:
            return None
        score, index, images, true, pred = zip(*self._examples)
        return {"images": np.stack(images), "true": np.stack(true), "pred": np.stack(pred),
                "conf": np.asarray(score, dtype=np.float32), "index": np.asarray(index, dtype=np.int64)}

    # ---- using the model
    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        return self.eval_tf.normalize(images)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        probs = self._probs(self.eval_tf.normalize(images))
        return Prediction("masks", probs=probs, masks=probs.argmax(1))

    def export_module(self) -> nn.Module:
        """uint8 NHWC -> per-pixel logits [B, C, H, W] (single scale, no flip: test-time augmentation stays in Python)."""
        return wrap_uint8(self.model, self.eval_tf.normalize, output="out")


def build_segmentation(cfg, info, generator: torch.Generator) -> SegmentationTask:
    """The model, its joint image/mask transforms and the loss settings for a segmentation run."""
    from ..models import SEGMENTATION_MODELS, build_model

    m, s = cfg.model, cfg.segmentation
    if info.target != "mask":
        raise ConfigError(f"task=segmentation needs images with masks; data.name={cfg.data.name} has class labels: "
                          "choose camvid, coco128_seg or mask_folder (data.root=FOLDER with images/ and masks/)")
    if m.name not in SEGMENTATION_MODELS:
        raise ConfigError(f"model.name={m.name} is not a segmentation model; choose one of "
                          f"{', '.join(sorted(SEGMENTATION_MODELS))}")
    if s.class_weights and len(s.class_weights) != info.num_classes:
        raise ConfigError(f"segmentation.class_weights has {len(s.class_weights)} values for {info.num_classes} "
                          f"classes ({', '.join(info.classes)}): give one weight per class")
    model = build_model(m.name, info.num_classes, info.channels, pretrained=m.pretrained, weights=m.weights,
                        max_params=m.max_params, download=m.download, output_stride=m.output_stride,
                        aux_loss=m.aux_loss)
    pcfg = getattr(model, "pretrained_cfg", None) or {}
    if m.pretrained and len(pcfg.get("mean", ())) == info.channels:      # the backbone's own normalisation
        info = replace(info, mean=tuple(pcfg["mean"]), std=tuple(pcfg["std"]))
    crop = tuple(int(v) for v in s.crop_size) or None
    train_tf = BatchSegAugment(info.mean, info.std, train=True, crop_size=crop, scale=(s.scale_min, s.scale_max),
                               hflip=s.hflip, jitter=s.jitter, normalize=cfg.data.normalize, generator=generator)
    eval_tf = BatchSegAugment(info.mean, info.std, train=False, normalize=cfg.data.normalize)
    params = SegmentationParams(info.num_classes, tuple(float(w) for w in s.class_weights), s.dice, s.aux_weight,
                                tuple(float(v) for v in s.tta_scales), s.tta_flip, s.max_examples)
    return SegmentationTask(model, info, params, train_tf, eval_tf, TransferSchedule.from_config(cfg))


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, eps: float = 1.0) -> torch.Tensor:
    """1 - mean over classes of the soft Dice coefficient (Milletari et al. 2016), ignored pixels left out."""
    c = logits.shape[1]
    keep = (target != ignore_index).unsqueeze(1).float()
    probs = logits.softmax(1) * keep
    onehot = F.one_hot(target.clamp(max=c - 1), c).permute(0, 3, 1, 2).float() * keep
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1.0 - ((2 * inter + eps) / (denom + eps)).mean()
