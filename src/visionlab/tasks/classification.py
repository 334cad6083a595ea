"""Image classification: cross-entropy (label smoothing, CutMix/MixUp targets), top-k, ECE, error examples."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.transforms import BatchAugment, mix_batch
from ..metrics.classification import ClassificationMetrics
from .base import Task


@dataclass
class ClassificationParams:
    num_classes: int
    label_smoothing: float = 0.0     # cross-entropy label smoothing
    cutmix: float = 0.0              # CutMix Beta alpha; 0 = off
    mixup: float = 0.0               # MixUp Beta alpha; 0 = off
    mix_prob: float = 1.0            # chance that a batch is mixed when either is on
    max_examples: int = 64           # misclassified test images kept for the report gallery


class ClassificationTask(Task):
    primary_metric = ("val/acc", "max")

    def __init__(self, model, params: ClassificationParams, train_tf: BatchAugment, eval_tf: BatchAugment):
        super().__init__(model)
        self.p = params
        self.train_tf, self.eval_tf = train_tf, eval_tf
        self.metrics = ClassificationMetrics(params.num_classes)
        self._examples: list | None = None
        self._seen = 0

    def training_step(self, batch) -> dict:
        images, labels = batch
        x = self.train_tf(images)
        x, targets = mix_batch(x, labels, self.p.num_classes, self.p.cutmix, self.p.mixup, self.p.mix_prob,
                               self.train_tf.generator)
        logits = self.model(x)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.p.label_smoothing)
        acc = (logits.argmax(1) == targets.argmax(1)).float().mean()
        return {"loss": loss, "acc": acc}

    @torch.no_grad()
    def validation_step(self, batch) -> None:
        images, labels = batch
        logits = self.model(self.eval_tf(images)).float()
        self.metrics.update(logits, labels)
        if self._examples is not None:
            self._keep_errors(images, labels, logits)
        self._seen += len(labels)

    def _keep_errors(self, images, labels, logits) -> None:
        room = self.p.max_examples - sum(len(e[1]) for e in self._examples)
        if room <= 0:
            return
        probs = logits.softmax(1)
        conf, pred = probs.max(1)
        wrong = (pred != labels).nonzero().flatten()[:room]
        if len(wrong):
            self._examples.append((images[wrong].cpu().numpy(), labels[wrong].cpu().numpy(),
                                   pred[wrong].cpu().numpy(), conf[wrong].cpu().numpy(),
                                   (wrong.cpu() + self._seen).numpy()))

    def compute_metrics(self) -> dict:
        return self.metrics.compute()

    def reset_metrics(self, collect_examples: bool = False) -> None:
        self.metrics.reset()
        self._examples = [] if collect_examples else None
        self._seen = 0                    # samples evaluated so far: the position of each kept example

    def examples(self) -> dict | None:
        """Misclassified images kept since reset_metrics(collect_examples=True), as arrays for errors.npz."""
        if not self._examples:
            return None
        imgs, true, pred, conf, index = (np.concatenate(parts) for parts in zip(*self._examples))
        return {"images": imgs, "true": true.astype(np.int64), "pred": pred.astype(np.int64),
                "conf": conf.astype(np.float32), "index": index.astype(np.int64)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.eval_tf(images)).float().softmax(1)


def build_classification(cfg, info, generator: torch.Generator) -> ClassificationTask:
    """The model, its batch transforms and the loss settings for a classification run (``info``: a DataInfo)."""
    from ..models import build_model

    model = build_model(cfg.model.name, info.num_classes, info.channels, pretrained=cfg.model.pretrained,
                        weights=cfg.model.weights, image_size=info.image_size[0])
    d = cfg.data
    train_tf = BatchAugment(info.mean, info.std, train=True, rotation=d.rotation, crop_padding=d.crop_padding,
                            hflip=d.hflip, normalize=d.normalize, generator=generator)
    eval_tf = BatchAugment(info.mean, info.std, train=False, normalize=d.normalize)
    params = ClassificationParams(num_classes=info.num_classes, label_smoothing=cfg.train.label_smoothing,
                                  cutmix=d.cutmix, mixup=d.mixup, mix_prob=d.mix_prob)
    return ClassificationTask(model, params, train_tf, eval_tf)
