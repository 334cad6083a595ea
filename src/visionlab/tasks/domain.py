"""Domain generalization (task=dg): a classifier trained on source domains and scored on held-out ones.

Methods (``dg.method``): erm (pooled source domains), mixstyle (feature-statistics mixing at chosen layers during
training, models/mixstyle.py), domain_head (the seed's joint class + domain prediction with a weighted domain loss),
dann (the same head behind gradient reversal). The batch carries each image's domain (``uses_domains``), so every
evaluation also reports accuracy per domain (``acc@<domain>``), the class mAP (macro one-vs-rest average precision
of the class scores) and, with a domain head, the domain mAP. Model selection stays the classification one: the
best epoch on the validation split, which holds source-domain images only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_average_precision

from ..data.transforms import mix_batch
from ..models.mixstyle import DomainHeadModel, MixStyle, auto_layers
from ..utils import ConfigError
from .classification import ClassificationTask, build_classification

METHODS = ("erm", "mixstyle", "domain_head", "dann")


@dataclass
class DGParams:
    method: str
    domain_weight: float
    domains: list


class DomainGeneralizationTask(ClassificationTask):
    uses_domains = True

    def __init__(self, base: ClassificationTask, params: DGParams, model, mixstyle: MixStyle | None):
        super().__init__(model, base.info, base.input_size, base.p, base.train_tf, base.eval_tf, base.transfer,
                         base.progressive)
        self.d, self.mixstyle = params, mixstyle

    def training_step(self, batch) -> dict:
        images, labels, domains = batch
        x = self.train_tf(images)
        x, targets = mix_batch(x, labels, self.p.num_classes, self.p.cutmix, self.p.mixup, self.p.mix_prob,
                               self.train_tf.generator)
        if self.mixstyle is not None:
            self.mixstyle.domains, self.mixstyle.active = domains, True
        try:
            if self.d.method in ("domain_head", "dann"):
                net = getattr(self.model, "module", self.model)
                logits, dom_logits = net.both(x)
            else:
                logits, dom_logits = self.model(x), None
        finally:
            if self.mixstyle is not None:
                self.mixstyle.active = False
        loss_cls = F.cross_entropy(logits.float(), targets, label_smoothing=self.p.label_smoothing)
        out = {"loss": loss_cls, "acc": (logits.argmax(1) == targets.argmax(1)).float().mean()}
        if dom_logits is not None:
            loss_dom = F.cross_entropy(dom_logits.float(), domains)
            out.update(loss=loss_cls + self.d.domain_weight * loss_dom, loss_cls=loss_cls.detach(),
                       loss_domain=loss_dom.detach(), domain_acc=(dom_logits.argmax(1) == domains).float().mean())
        return out

    # ---- evaluation: the classification metrics plus per-domain accuracy, class mAP and domain mAP
    @torch.no_grad()
    def validation_step(self, batch) -> None:
        images, labels, domains = batch
        x = self.eval_tf(images)
        if isinstance(self.model, DomainHeadModel):
            logits, dom_logits = self.model.both(x)
            self._dom_scores.append(dom_logits.float().softmax(1).cpu())
        else:
            logits = self.model(x)
        logits = logits.float()
        self._record(images, labels, logits)
        self._scores.append(logits.softmax(1).cpu())
        self._labels.append(labels.cpu())
        self._domains.append(domains.cpu())

    def reset_metrics(self, collect_examples: bool = False) -> None:
        super().reset_metrics(collect_examples)
        self._scores, self._labels, self._domains, self._dom_scores = [], [], [], []

    def compute_metrics(self) -> dict:
        out = super().compute_metrics()
        if not self._scores:
            return out
        scores, labels, domains = torch.cat(self._scores), torch.cat(self._labels), torch.cat(self._domains)
        out["class_map"] = float(multiclass_average_precision(scores, labels, self.p.num_classes, average="macro"))
        pred = scores.argmax(1)
        rows = []
        for d in domains.unique().tolist():
            m = domains == d
            name = self.d.domains[d] if d < len(self.d.domains) else str(d)
            acc = float((pred[m] == labels[m]).float().mean())
            out[f"acc@{name}"] = acc
            per_class = [float((pred[m & (labels == c)] == c).float().mean()) if (m & (labels == c)).any() else None
                         for c in range(self.p.num_classes)]
            rows.append({"domain": name, "n": int(m.sum()), "acc": acc, "per_class_acc": per_class})
        out["per_domain"] = rows
        if self._dom_scores and len(domains.unique()) > 1:
            dom = torch.cat(self._dom_scores)
            out["domain_map"] = float(multiclass_average_precision(dom, domains, dom.shape[1], average="macro"))
        return out


def build_dg(cfg, info, generator: torch.Generator) -> DomainGeneralizationTask:
    """The zoo classifier (``model.*``, the freeze keys for frozen early stages), and the method's pieces."""
    g = cfg.dg
    if g.method not in METHODS:
        raise ConfigError(f"dg.method={g.method!r}: choose one of {', '.join(METHODS)}")
    if not info.domains:
        raise ConfigError(f"task=dg reads each image's domain: use a domain dataset (data.name=pacs or domain_folder "
                          f"with <root>/<domain>/<class>/*.jpg), not data.name={cfg.data.name}")
    base = build_classification(cfg, info, generator)
    model, mixstyle = base.model, None
    if g.method == "mixstyle":
        layers = list(g.mixstyle_layers) or auto_layers(model)
        if not layers:
            raise ConfigError(f"dg.mixstyle_layers: no default places in model.name={cfg.model.name}; name the "
                              "modules to mix after, e.g. dg.mixstyle_layers=[layer1,layer2] (see "
                              "model.named_modules())")
        try:
            mixstyle = MixStyle(g.mixstyle_p, g.mixstyle_alpha, g.mixstyle_mix, generator)
            mixstyle.attach(model, layers)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"dg.mixstyle_layers={layers} / dg.mixstyle_mix={g.mixstyle_mix!r}: {e} is not valid "
                              "(module names from model.named_modules(); mix random or crossdomain)") from None
    elif g.method in ("domain_head", "dann"):
        with torch.no_grad():
            was = model.training
            model.eval()
            feats = model.forward_features(torch.zeros(1, info.channels, *base.input_size))
            model.train(was)
        model = DomainHeadModel(model, feats.shape[1], len(info.domains), adversarial=g.method == "dann",
                                reverse_scale=g.reverse_scale)
    return DomainGeneralizationTask(base, DGParams(g.method, g.domain_weight, list(info.domains)), model, mixstyle)
