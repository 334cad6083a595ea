"""The Task contract: the only door between the pipeline (run/, engine, views, CLI, app) and a task family.

A task declares what it needs and does the science (targets, loss, metrics, predictions); the engine does the
engineering (precision, clipping, checkpoints, resume, logs, DDP). Nothing outside ``tasks/`` knows a task's details:
the rest of the package asks only what is declared here (no ``getattr`` for anything else). How each family maps on:

- classification: target "label"; val/acc; one optimizer; predictions = class probabilities.
- segmentation: target "mask" (ignore index 255); val/miou from one accumulated confusion matrix; predictions = masks.
- detection: target "boxes" + a collate (``collate``); val/map; predictions = boxes, scores, labels.
- generative models: target "none" ("label" for conditional models); a GAN sets ``manual_optimization`` and returns
  two optimizer groups ("generator", "discriminator") and steps them itself in ``training_step`` through
  ``self.optimizers``; ``predict`` samples images (``Prediction.kind == "images"``).
- semi-supervised: ``streams`` adds "unlabeled" (the task reads it from the batch the loader zips); EMA evaluation.
- domain generalization: target "label"; ``uses_domains`` makes the sample's domain travel in the batch as a third
  field (training: mixing or a domain head; evaluation: per-domain metrics).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

TRAIN_FLOPS_PER_FORWARD = 3     # a training step costs about 3 forwards (backward: gradients of inputs and weights)

@dataclass
class Prediction:
    """Typed predictions for a batch; ``kind`` says which fields are set (views, CLI and app pick their renderer by it).

    classes: ``probs`` [B, C].  masks: ``masks`` int64 [B, H, W] (+ ``probs`` [B, C, H, W]).
    boxes: ``boxes`` a list per image of {"boxes", "scores", "labels"}.  images: ``images`` uint8 [B, H, W, C]."""

    kind: str
    probs: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    boxes: list | None = None
    images: torch.Tensor | None = None


class Task:
    """Subclasses set the class attributes and implement the steps. Batches arrive on the task's device as the
    tuple the loader yields: ``(images uint8 NHWC, target)``, target as ``target`` says."""

    target: str = "label"                       # what a sample's target is: label | mask | boxes | none
    primary_metric: tuple[str, str] = ("val/acc", "max")   # a logged key and its direction (max | min)
    manual_optimization: bool = False           # True: training_step steps self.optimizers itself (e.g. a GAN)
    generates: bool = False                     # True: ``generate`` samples new images (the app's Generate tab)
    conditional: bool = False                   # with ``generates``: ``generate(label=...)`` picks a class
    sampling_steps: int | None = None           # with ``generates``: the default ``steps`` (None: it takes none)
    # training streams -> batch size as a multiple of train.batch_size: "train" (labelled), and "unlabeled" for
    # semi-supervised learning (the batch then carries images, labels, unlabelled images, their hidden labels)
    streams: dict = {"train": 1}
    selects_best: bool = True                   # False: the final (EMA) model is the one reported, not the best
    uses_domains: bool = False                  # True: batches are (images, labels, domain index) (domain datasets)
    # True while the pipeline scores a run for the record (the test summary, `visionlab eval`); False for the
    # per-epoch validation, which a task may make cheaper (FID on fewer generated images)
    full_evaluation: bool = False
    global_step: int = 0                        # set by the engine before each training_step: optimizer steps so far

    def __init__(self, model: nn.Module, info, input_size: tuple[int, int]):
        self.model = model                      # the module evaluated, checkpointed as "best" and exported
        self.info = info                        # DataInfo actually used (a pretrained backbone brings its mean/std)
        self.input_size = input_size            # (H, W) the model sees, for FLOP counts and exports
        self.optimizers: dict = {}              # set by the pipeline: name -> optimizer (manual optimization)
        self.scaler = None                      # set by the pipeline under fp16: the run's GradScaler

    # ---- building
    def optimizer_groups(self, optim_cfg) -> dict[str, list[dict]]:
        """Parameter groups per optimizer name; one optimizer ("main") unless the task optimizes manually."""
        return {"main": self.param_groups(optim_cfg)}

    def param_groups(self, optim_cfg) -> list[dict]:
        """Parameter groups for the optimizer; weight decay skips norms and biases (1-D tensors)."""
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    # ---- training
    def training_step(self, batch) -> dict:
        """Return {"loss": scalar tensor, **other scalars}; every key is logged as train/<key>. Under manual
        optimization the task has stepped its optimizers already and "loss" is only logged."""
        raise NotImplementedError

    def step_optimizer(self, name: str, loss: torch.Tensor, params=None, clip: float = 0.0) -> None:
        """Manual optimization: backward ``loss`` and step optimizer ``name`` (clipping ``params`` to norm ``clip``
        when > 0), through the run's fp16 loss scaler when there is one; the engine updates the scale once per
        batch, after the task's step."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(opt)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        if self.scaler is None:
            opt.step()
        else:
            self.scaler.step(opt)

    def on_train_epoch_start(self, epoch: int) -> None:
        """Called after ``model.train()`` at the start (and resume) of each 0-based epoch; a function of the epoch
        only, so a resumed run is set up exactly like an uninterrupted one."""

    # ---- evaluation
    def validation_step(self, batch) -> None:
        """Update the task's metric accumulators with one evaluation batch (model in eval mode, no grad)."""
        raise NotImplementedError

    def compute_metrics(self) -> dict:
        """Metrics accumulated since ``reset_metrics``: a flat dict; numbers are logged as val/<key> and test/<key>,
        lists (per-class tables, confusion matrices) go to summary.json under their own key."""
        raise NotImplementedError

    def reset_metrics(self, collect_examples: bool = False) -> None:
        """Forget accumulated metrics; with ``collect_examples`` keep what ``examples`` returns (gallery material)."""
        raise NotImplementedError

    def examples(self) -> dict | None:
        """Arrays kept since reset_metrics(collect_examples=True), written to the run as ``errors.npz``: at least
        "images" (uint8 NHWC), "true", "pred", "conf" (a score per example) and "index" (position in the split)."""
        return None

    # ---- using the model
    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC images -> the model's input (normalised float NCHW), as evaluation prepares it."""
        raise NotImplementedError

    def predict(self, images: torch.Tensor) -> Prediction:
        """uint8 NHWC images -> typed predictions."""
        raise NotImplementedError

    def generate(self, n: int, seed: int, label=None, steps: int | None = None) -> torch.Tensor:
        """``n`` new uint8 [n, H, W, C] images, reproducible from ``seed`` (tasks with ``generates``); ``label``: a
        class name or index (``conditional`` tasks); ``steps``: sampling steps (tasks with ``sampling_steps``)."""
        raise NotImplementedError

    def flops_per_image(self) -> int:
        """Forward FLOPs of the model for one image (summary.json; generative tasks: one network call per sample)."""
        from ..models import flops_per_image

        return flops_per_image(self.model, self.info.channels, self.input_size)

    def train_flops_per_image(self) -> int:
        """FLOPs of one training step per image: the forward and a backward of about twice its cost (gradients of
        inputs and weights), 3x ``flops_per_image``; a task whose step runs other networks or several passes says
        its own (the fraction-of-peak figures of the benchmarks divide by it)."""
        return TRAIN_FLOPS_PER_FORWARD * self.flops_per_image()

    def epoch_images(self) -> dict:
        """name -> uint8 [H, W, C] pictures of progress, written after every epoch as samples/<name>-epochNNN.png
        (called with ``model`` set to the evaluated model, the EMA when there is one)."""
        return {}

    def export_metadata(self) -> dict:
        """str -> str facts a user of the exported file needs beyond the class names and the input (which the
        export adds), e.g. a detector's display threshold. Written into model.onnx's metadata."""
        return {}

    def export_module(self) -> nn.Module:
        """A module mapping uint8 NHWC images to the task's raw output tensor (classification logits, segmentation
        logits), preprocessing inside: what ONNX / TorchScript export."""
        raise NotImplementedError
