"""Semi-supervised classification (task=ssl): few labels plus an unlabelled stream, five methods behind ``ssl.method``.

- supervised: the labelled images only, with the same weak augmentation and number of steps (the baseline).
- pseudo_label (Lee 2013): the model's own confident predictions on weakly augmented unlabelled images as targets.
- fixmatch (Sohn et al. 2020): a confident prediction on the weak view is the hard target of the strong view.
- uda (Xie et al. 2020): sharpened soft predictions on the weak view are the target of the strong view (masked by
  confidence), optionally with training-signal annealing of the labelled loss.
- mpl (Pham et al. 2021): a teacher trained with the UDA loss plus the student's feedback (how much the student's
  labelled loss dropped after learning from the teacher's pseudo-labels) and a student that learns only from those
  pseudo-labels, finetuned on the labelled images over the last ``ssl.mpl_finetune`` of the steps.

Weak view = the classification augmentation (flip, crop); strong view = RandAugment + Cutout, then the weak view.
Labelled and unlabelled images arrive as two streams of one batch (images, labels, unlabelled images, their true
labels). The true labels of unlabelled images are used only to log how right the pseudo-labels are (``pl_acc``,
``mask_correct``), never in a loss. The reported model is the final one (its EMA with train.ema_decay), never the
best epoch on a validation split.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.randaugment import BatchRandAugment
from ..metrics.classification import ClassificationMetrics
from ..utils import ConfigError
from .classification import ClassificationTask, build_classification

METHODS = ("supervised", "pseudo_label", "fixmatch", "uda", "mpl")
THRESHOLD = {"supervised": 1.0, "pseudo_label": 0.95, "fixmatch": 0.95, "uda": 0.8, "mpl": 0.95}
TEMPERATURE = {"uda": 0.4, "mpl": 0.7}
TSA = ("none", "linear", "log", "exp")


@dataclass
class SSLParams:
    method: str
    mu: float                  # unlabelled images per labelled one in a step
    threshold: float           # confidence a pseudo-label needs (mask)
    temperature: float         # sharpening of soft targets (uda, mpl)
    lambda_u: float            # weight of the unlabelled loss
    warmup_steps: int          # lambda_u ramps up linearly over these steps
    tsa: str                   # uda: training-signal annealing schedule
    total_steps: int           # train.iterations
    finetune_steps: int        # mpl: the student's final labelled-only steps
    grad_clip: float           # mpl steps its own optimizers: train.grad_clip applies there
    teacher_lr_mult: float     # mpl: teacher lr = optim.lr x this


class TeacherStudent(nn.Module):
    """Meta Pseudo Labels' two networks in one module (one checkpoint, one EMA); calling it runs the student, the
    model that is reported and exported. The teacher is registered first, so tools that look for the last conv layer
    (CAM) find the student's."""

    def __init__(self, teacher: nn.Module, student: nn.Module):
        super().__init__()
        self.teacher, self.student = teacher, student

    def forward(self, x):
        return self.student(x)

    def forward_features(self, x):
        return self.student.forward_features(x)

    @property
    def head(self):
        return self.student.head


def tsa_threshold(schedule: str, progress: float, num_classes: int) -> float:
    """UDA's training-signal annealing: labelled examples whose true-class probability exceeds this are left out of
    the loss; rises from 1/K towards 1 over training (alpha = t/T, 1 - e^(-5 t/T) or e^(5 (t/T - 1)))."""
    progress = min(max(progress, 0.0), 1.0)
    alpha = {"linear": progress, "log": 1 - math.exp(-5 * progress), "exp": math.exp(5 * (progress - 1))}[schedule]
    return alpha * (1 - 1 / num_classes) + 1 / num_classes


class SemiSupervisedTask(ClassificationTask):
    selects_best = False               # papers report the final (EMA) model; the test split never chooses

    def __init__(self, base: ClassificationTask, params: SSLParams, strong: BatchRandAugment, model: nn.Module):
        super().__init__(model, base.info, base.input_size, base.p, base.train_tf, base.eval_tf, base.transfer,
                         base.progressive)
        self.s, self.strong = params, strong
        self.streams = {"train": 1} if params.method == "supervised" else {"train": 1, "unlabeled": params.mu}
        self.manual_optimization = params.method == "mpl"
        self.teacher_metrics = ClassificationMetrics(base.p.num_classes) if params.method == "mpl" else None

    # ---- building
    def optimizer_groups(self, optim_cfg) -> dict[str, list[dict]]:
        if self.s.method != "mpl":
            return super().optimizer_groups(optim_cfg)
        student = self.transfer.param_groups(self.model.student, optim_cfg.lr)
        teacher_lr = optim_cfg.lr * self.s.teacher_lr_mult
        teacher = [{"lr": teacher_lr, **g} for g in self.transfer.param_groups(self.model.teacher, teacher_lr)]
        return {"student": student, "teacher": teacher}

    # ---- training
    def _unsup_weight(self) -> float:
        if not self.s.warmup_steps:
            return self.s.lambda_u
        return self.s.lambda_u * min(1.0, (self.global_step + 1) / self.s.warmup_steps)

    def _views(self, xl, xu, strong: bool) -> list[torch.Tensor]:
        views = [self.train_tf(xl), self.train_tf(xu)]
        if strong:
            views.append(self.train_tf(self.strong(xu)))
        return views

    def training_step(self, batch) -> dict:
        xl, yl, *rest = batch
        if self.s.method == "supervised":
            logits = self.model(self.train_tf(xl))
            return {"loss": F.cross_entropy(logits.float(), yl), "acc": (logits.argmax(1) == yl).float().mean()}
        xu, yu = rest
        if self.s.method == "mpl":
            return self._mpl_step(xl, yl, xu, yu)
        views = self._views(xl, xu, strong=self.s.method != "pseudo_label")
        logits = self.model(torch.cat(views)).float()
        parts = logits.split([len(v) for v in views])
        ll, lu_weak = parts[0], parts[1]
        probs = lu_weak.detach().softmax(1)
        conf, pseudo = probs.max(1)
        mask = (conf >= self.s.threshold).float()
        if self.s.method == "pseudo_label":
            loss_u = (F.cross_entropy(lu_weak, pseudo, reduction="none") * mask).mean()
        elif self.s.method == "fixmatch":
            loss_u = (F.cross_entropy(parts[2], pseudo, reduction="none") * mask).mean()
        else:                                               # uda: sharpened soft targets
            target = (lu_weak.detach() / self.s.temperature).softmax(1)
            loss_u = (-(target * parts[2].log_softmax(1)).sum(1) * mask).mean()
        loss_l = self._labelled_loss(ll, yl)
        loss = loss_l + self._unsup_weight() * loss_u
        return {"loss": loss, "loss_l": loss_l.detach(), "loss_u": loss_u.detach(),
                **self._pseudo_stats(pseudo, mask, yu), "acc": (ll.argmax(1) == yl).float().mean()}

    def _labelled_loss(self, logits, y) -> torch.Tensor:
        ce = F.cross_entropy(logits, y, reduction="none")
        if self.s.method != "uda" or self.s.tsa == "none":
            return ce.mean()
        eta = tsa_threshold(self.s.tsa, self.global_step / max(self.s.total_steps, 1), logits.shape[1])
        keep = (logits.detach().softmax(1).gather(1, y[:, None]).squeeze(1) <= eta).float()
        return (ce * keep).sum() / keep.sum().clamp(min=1)

    @staticmethod
    def _pseudo_stats(pseudo, mask, y_true) -> dict:
        """Diagnosis only: the mask rate and how often pseudo-labels match the hidden true labels."""
        right = (pseudo == y_true).float()
        return {"mask": mask.mean(), "pl_acc": right.mean(), "mask_correct": (right * mask).mean()}

    def _mpl_step(self, xl, yl, xu, yu) -> dict:
        net = getattr(self.model, "module", self.model)           # under DDP, the wrapped TeacherStudent
        teacher, student = net.teacher, net.student
        if self.global_step >= self.s.total_steps - self.s.finetune_steps:
            logits = student(self.train_tf(xl)).float()              # the final finetune on the labels alone
            loss = F.cross_entropy(logits, yl)
            self.step_optimizer("student", loss, student.parameters(), self.s.grad_clip)
            return {"loss": loss.detach(), "s_loss_l": loss.detach(), "acc": (logits.argmax(1) == yl).float().mean()}
        xl_w, xu_w, xu_s = self._views(xl, xu, strong=True)
        t_logits = teacher(torch.cat([xl_w, xu_w, xu_s])).float()
        tl, tu_w, tu_s = t_logits.split([len(xl_w), len(xu_w), len(xu_s)])
        soft = (tu_w.detach() / self.s.temperature).softmax(1)
        conf, pseudo = soft.max(1)
        mask = (conf >= self.s.threshold).float()
        t_loss_l = F.cross_entropy(tl, yl)
        t_loss_u = (-(soft * tu_s.log_softmax(1)).sum(1) * mask).mean()
        t_loss_uda = t_loss_l + self._unsup_weight() * t_loss_u

        s_logits = student(torch.cat([xl_w, xu_s])).float()
        sl, su_s = s_logits.split([len(xl_w), len(xu_s)])
        s_loss_l_old = F.cross_entropy(sl.detach(), yl)
        s_loss = F.cross_entropy(su_s, pseudo)
        self.step_optimizer("student", s_loss, student.parameters(), self.s.grad_clip)
        with torch.no_grad():
            s_loss_l_new = F.cross_entropy(student(xl_w).float(), yl)
        # the student's feedback: a first-order estimate of how the step on the teacher's pseudo-labels changed the
        # student's labelled loss (> 0: it helped), weighting the teacher's cross-entropy on those same labels
        h = (s_loss_l_old - s_loss_l_new).detach()
        t_loss_mpl = h * F.cross_entropy(tu_s, pseudo)
        t_loss = t_loss_uda + t_loss_mpl
        self.step_optimizer("teacher", t_loss, teacher.parameters(), self.s.grad_clip)
        return {"loss": (s_loss + t_loss).detach(), "s_loss": s_loss.detach(), "s_loss_l": s_loss_l_new,
                "t_loss_uda": t_loss_uda.detach(), "t_loss_mpl": t_loss_mpl.detach(), "mpl_h": h,
                **self._pseudo_stats(pseudo, mask, yu), "acc": (sl.argmax(1) == yl).float().mean()}

    # ---- evaluation: the student (through the model's forward); MPL logs the teacher's accuracy too
    @torch.no_grad()
    def validation_step(self, batch) -> None:
        super().validation_step(batch)
        if self.teacher_metrics is not None:
            images, labels = batch
            self.teacher_metrics.update(self.model.teacher(self.eval_tf(images)).float(), labels)

    def compute_metrics(self) -> dict:
        out = super().compute_metrics()
        if self.teacher_metrics is not None:
            out["teacher_acc"] = self.teacher_metrics.compute()["acc"]
        return out

    def reset_metrics(self, collect_examples: bool = False) -> None:
        super().reset_metrics(collect_examples)
        if getattr(self, "teacher_metrics", None) is not None:
            self.teacher_metrics.reset()


def _magnitude(value: str) -> int | str:
    if value == "random":
        return value
    try:
        bin_ = int(value)
    except ValueError:
        bin_ = -1
    if not 0 <= bin_ <= 30:
        raise ConfigError(f"ssl.ra_magnitude={value!r}: a RandAugment bin 0-30 (torchvision's default 9) or random")
    return bin_


def build_ssl(cfg, info, generator: torch.Generator) -> SemiSupervisedTask:
    """The classification network (and for mpl a second, independently initialised teacher), weak and strong
    augmentation, and the method's settings from the ``ssl`` section."""
    s, t = cfg.ssl, cfg.train
    if s.method not in METHODS:
        raise ConfigError(f"ssl.method={s.method!r}: choose one of {', '.join(METHODS)}")
    if s.tsa not in TSA:
        raise ConfigError(f"ssl.tsa={s.tsa!r}: choose one of {', '.join(TSA)}")
    if not t.iterations:
        raise ConfigError("task=ssl counts training in steps: set train.iterations=N and train.eval_every=M (e.g. "
                          "train.iterations=2000 train.eval_every=200)")
    if t.early_stop:
        raise ConfigError("task=ssl reports the final (EMA) model, so it never stops early on a validation score: "
                          "drop train.early_stop")
    base = build_classification(cfg, info, generator)
    model = base.model
    if s.method == "mpl":
        model = TeacherStudent(build_classification(cfg, info, generator).model, base.model)
    params = SSLParams(method=s.method, mu=s.mu,
                       threshold=THRESHOLD[s.method] if s.threshold < 0 else s.threshold,
                       temperature=TEMPERATURE.get(s.method, 1.0) if s.temperature < 0 else s.temperature,
                       lambda_u=s.lambda_u, warmup_steps=int(round(s.unsup_warmup * t.iterations)), tsa=s.tsa,
                       total_steps=t.iterations,
                       finetune_steps=int(round(s.mpl_finetune * t.iterations)) if s.method == "mpl" else 0,
                       grad_clip=t.grad_clip, teacher_lr_mult=s.mpl_teacher_lr_mult)
    strong = BatchRandAugment(num_ops=s.ra_ops, magnitude=_magnitude(s.ra_magnitude), cutout=s.cutout,
                              generator=generator)
    return SemiSupervisedTask(base, params, strong, model)
