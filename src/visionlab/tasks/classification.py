"""Image classification: cross-entropy (label smoothing, CutMix/MixUp targets), top-k, ECE, error examples."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..deploy.export import wrap_uint8
from ..data.transforms import BatchAugment, ProgressiveSchedule, mix_batch
from ..metrics.classification import ClassificationMetrics
from ..models.transfer import TransferSchedule
from ..utils import ConfigError
from .base import Prediction, Task


@dataclass
class ClassificationParams:
    num_classes: int
    label_smoothing: float = 0.0     # cross-entropy label smoothing
    cutmix: float = 0.0              # CutMix Beta alpha; 0 = off
    mixup: float = 0.0               # MixUp Beta alpha; 0 = off
    mix_prob: float = 1.0            # chance that a batch is mixed when either is on
    tta_flip: bool = False           # evaluate on the mean logits of each image and its mirror
    tta_translate: int = 0           # and on copies shifted by this many pixels (airbench's level-2 TTA)
    max_examples: int = 64           # misclassified test images kept for the report gallery


class ClassificationTask(Task):
    primary_metric = ("val/acc", "max")

    def __init__(self, model, info, input_size: tuple[int, int], params: ClassificationParams,
                 train_tf: BatchAugment, eval_tf: BatchAugment, transfer: TransferSchedule,
                 progressive: ProgressiveSchedule | None = None):
        super().__init__(model, info, input_size)
        self.p = params
        self.transfer = transfer
        self.train_tf, self.eval_tf = train_tf, eval_tf
        self.progressive = progressive
        # full-strength augmentation; progressive resizing scales these down in early stages
        self._full_reg = (train_tf.rotation, train_tf.crop_padding, params.cutmix, params.mixup)
        self.metrics = ClassificationMetrics(params.num_classes)
        self._examples: list | None = None
        self._seen = 0
        self.on_train_epoch_start(0)      # freeze now, before an optimizer or DDP sees the parameters

    def on_train_epoch_start(self, epoch: int) -> None:
        """Set what depends only on the (0-based) epoch, so a resumed run gets it back exactly: the frozen layers
        after gradual unfreezing, the model's own epoch settings (``set_epoch``: airbench94's whitening bias), and
        the progressive image size with its augmentation strength."""
        net = getattr(self.model, "module", self.model)       # under DDP, the wrapped model
        self.transfer.at_epoch(net, epoch)
        if hasattr(net, "set_epoch"):
            net.set_epoch(epoch)
        if self.progressive is not None:
            size, reg = self.progressive.at(epoch)
            rotation, padding, cutmix, mixup = self._full_reg
            self.train_tf.size = size
            self.train_tf.rotation, self.train_tf.crop_padding = rotation * reg, int(round(padding * reg))
            self.p.cutmix, self.p.mixup = cutmix * reg, mixup * reg

    def param_groups(self, optim_cfg) -> list[dict]:
        return self.transfer.param_groups(getattr(self.model, "module", self.model), optim_cfg.lr)

    def training_step(self, batch) -> dict:
        images, labels = batch
        if self.global_step == 0:          # a fresh run's first batch (a resumed run has its fitted weights back)
            self._init_from_data(images)
        x = self.train_tf(images)
        x, targets = mix_batch(x, labels, self.p.num_classes, self.p.cutmix, self.p.mixup, self.p.mix_prob,
                               self.train_tf.generator)
        logits = self.model(x)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.p.label_smoothing)
        acc = (logits.argmax(1) == targets.argmax(1)).float().mean()
        return {"loss": loss, "acc": acc}

    def _init_from_data(self, images: torch.Tensor) -> None:
        """A model with a data-dependent initialisation (``init_from_data``: airbench94's whitening filters) gets
        it from these un-augmented training images, in fp32."""
        net = getattr(self.model, "module", self.model)
        if hasattr(net, "init_from_data"):
            with torch.autocast(images.device.type, enabled=False):
                net.init_from_data(self.eval_tf(images))

    @torch.no_grad()
    def validation_step(self, batch) -> None:
        images, labels = batch
        self._record(images, labels, self.eval_logits(self.eval_tf(images)))

    def eval_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Float logits of a normalised batch as evaluation scores them: with ``tta_flip``, the mean over the
        image and its horizontal mirror; with ``tta_translate`` = t, half that plus a quarter each of the same for
        the image shifted t pixels up-left and t down-right (reflect-padded), as airbench's level-2 TTA."""
        logits = self._view_logits(x)
        t = self.p.tta_translate
        if t:
            h, w = x.shape[-2:]
            padded = F.pad(x, (t,) * 4, mode="reflect")
            shifted = [padded[..., :h, :w], padded[..., 2 * t:, 2 * t:]]
            logits = logits / 2 + sum(self._view_logits(v.contiguous(memory_format=torch.channels_last))
                                      for v in shifted) / 4
        return logits

    def _view_logits(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x).float()
        if self.p.tta_flip:
            logits = (logits + self.model(x.flip(-1)).float()) / 2
        return logits

    def _record(self, images, labels, logits) -> None:
        """Add one evaluation batch's float logits to the metrics (and the error gallery when collecting)."""
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

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        return self.eval_tf(images)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        return Prediction("classes", probs=self.model(self.eval_tf(images)).float().softmax(1))

    def export_module(self) -> nn.Module:
        return wrap_uint8(self.model, self.eval_tf)


def build_classification(cfg, info, generator: torch.Generator) -> ClassificationTask:
    """The model, its batch transforms and the loss settings for a classification run (``info``: a DataInfo).

    Transfer learning lives here: pretrained preprocessing (mean, std, input size), freezing, discriminative
    learning rates and progressive resizing. The task's ``info`` carries the normalization actually used."""
    from ..models import SEGMENTATION_MODELS, build_model, resolve_stem

    if info.num_classes < 2:
        raise ConfigError(f"data.name={cfg.data.name}: {info.num_classes} class ({', '.join(info.classes)}); "
                          "classification needs at least 2 classes (one class scores 100 % without learning): "
                          "choose a dataset with two or more classes")
    m, d, t = cfg.model, cfg.data, cfg.train
    if m.name in SEGMENTATION_MODELS or info.target != "label":
        raise ConfigError(f"task=classification with model.name={m.name} and data.name={d.name}: a segmentation "
                          "model or mask dataset needs task=segmentation")
    size = info.image_size[0]
    side = m.input_size or min(info.image_size)
    if t.tta_translate >= side:
        raise ConfigError(f"train.tta_translate={t.tta_translate}: the shifted test-time views reflect-pad the "
                          f"{side}-pixel images, so the shift must be under {side} pixels; airbench uses 1")
    # resolved once and stored in the sidecar, so load_run (which rebuilds without pretrained) gets the same network
    m.stem = resolve_stem(m.stem, m.input_size or size, m.pretrained)
    model = build_model(m.name, info.num_classes, info.channels, pretrained=m.pretrained, weights=m.weights,
                        image_size=m.input_size or size, stem=m.stem, drop_path=m.drop_path, spec=m.spec,
                        max_params=m.max_params, download=m.download)
    info = _pretrained_preprocessing(model, info, cfg)
    input_size = m.input_size or size
    # with data.alternate_flip the loader mirrors the images (by epoch), so the augmentation does not
    train_tf = BatchAugment(info.mean, info.std, train=True, rotation=d.rotation, crop_padding=d.crop_padding,
                            hflip=d.hflip and not d.alternate_flip, normalize=d.normalize, generator=generator,
                            size=m.input_size, crop_pad_mode=d.crop_pad_mode, color_jitter=d.color_jitter)
    eval_tf = BatchAugment(info.mean, info.std, train=False, normalize=d.normalize, size=m.input_size)
    params = ClassificationParams(num_classes=info.num_classes, label_smoothing=t.label_smoothing,
                                  cutmix=d.cutmix, mixup=d.mixup, mix_prob=d.mix_prob, tta_flip=t.tta_flip,
                                  tta_translate=t.tta_translate)
    progressive = None
    if t.progressive_stages:
        progressive = ProgressiveSchedule(t.progressive_stages, t.epochs, input_size, t.progressive_min_size,
                                          t.progressive_min_reg)
    return ClassificationTask(model, info, (input_size, input_size), params, train_tf, eval_tf,
                              TransferSchedule.from_config(cfg), progressive)


def default_image_size(cfg) -> int | None:
    """The square size for a dataset whose images differ in size (data.image_size=0): model.input_size when set,
    else the input size of the architecture's pretrained weights where torchvision or timm define one (read from
    their metadata, nothing downloaded); None leaves it to the data default (224)."""
    from ..models import MODELS, is_timm_name, timm_preprocessing
    from ..models.pretrained import torchvision_preprocessing
    from ..models.torchvision_zoo import torchvision_names

    name = cfg.model.name
    if cfg.model.input_size:
        return cfg.model.input_size
    if name in torchvision_names():
        return torchvision_preprocessing(name)["input_size"]
    if name not in MODELS and is_timm_name(name):
        return timm_preprocessing(name)["input_size"]
    return None


def _pretrained_preprocessing(model, info, cfg):
    """Pretrained weights come with their own normalization; warn when small images meet an ImageNet backbone."""
    pcfg = getattr(model, "pretrained_cfg", None) or {}
    if not cfg.model.pretrained or not pcfg:
        return info
    if len(pcfg.get("mean", ())) == info.channels:
        info = replace(info, mean=tuple(pcfg["mean"]), std=tuple(pcfg["std"]))
    want = int(pcfg.get("input_size") or 0)
    have = cfg.model.input_size or info.image_size[0]
    if want and have < want // 2:
        warnings.warn(f"{cfg.model.name} was pretrained on {want} px images but gets {have} px ones; its features "
                      f"work far better at their own scale: set model.input_size={want} (each batch is resized; "
                      f"costs about {(want / have) ** 2:.0f}x the compute)", stacklevel=2)
    return info
