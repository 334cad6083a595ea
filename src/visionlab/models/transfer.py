"""Transfer-learning helpers on any model of the zoo: head vs backbone, layers and stages, freezing schedules."""
from __future__ import annotations

from torch import nn

from ..utils import ConfigError


def head_module(model: nn.Module) -> nn.Module:
    """The classifier that ``reset_classifier`` replaces: ``get_classifier()`` (timm), ``head``, or the last Linear."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        if isinstance(head, nn.Module):
            return head
    for name in ("head", "classifier", "fc"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
            return head
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ConfigError(f"{type(model).__name__}: cannot find a classifier head to keep trainable")
    return last[-1]


def split_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone parameters, head parameters), each in registration order."""
    head_ids = {id(p) for p in head_module(model).parameters()}
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    head = [p for p in model.parameters() if id(p) in head_ids]
    return backbone, head


def backbone_layers(model: nn.Module) -> list[nn.Module]:
    """Modules that own parameters directly (conv, norm, linear...), input side first, head excluded: the "layers"
    that a Keras-style freeze fraction counts."""
    head = head_module(model)
    in_head = {id(m) for m in head.modules()}
    return [m for m in model.modules()
            if id(m) not in in_head and any(True for _ in m.parameters(recurse=False))]


def backbone_stages(model: nn.Module) -> list[list[nn.Module]]:
    """The backbone's stages, input side first, each as its list of layers: top-level children that hold parameters,
    with a child that holds most of the network (a Sequential of blocks, a wrapped torchvision body) opened up."""
    head = head_module(model)
    in_head = {id(m) for m in head.modules()}
    head_params = {id(p) for p in head.parameters()}
    layers = {id(m) for m in backbone_layers(model)}

    def size(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters() if id(p) not in head_params)

    total = max(1, size(model))
    parts = [model]
    while len(parts) < 4:       # open the container holding most weights until there are a few stages
        big = next((c for c in parts if size(c) > 0.5 * total and len(list(c.children())) > 1), None)
        if big is None:
            break
        i = parts.index(big)
        parts[i:i + 1] = [c for c in big.children() if id(c) not in in_head and size(c) > 0]
    stages = []
    for part in parts:
        own = [m for m in part.modules() if id(m) in layers]
        if own:
            stages.append(own)
    return stages


def parse_freeze(spec: str) -> tuple[str, float]:
    """``model.freeze``: "0.5" (fraction of backbone layers) or "stages:2" -> ("fraction", 0.5) / ("stages", 2)."""
    text = str(spec).strip().lower()
    if text.startswith("stages:"):
        try:
            n = int(text.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"model.freeze={spec!r}: expected stages:N with an integer N") from None
        return "stages", float(n)
    try:
        frac = float(text)
    except ValueError:
        raise ConfigError(f"model.freeze={spec!r}: expected a fraction 0..1 (e.g. 0.5) or stages:N") from None
    if not 0.0 <= frac <= 1.0:
        raise ConfigError(f"model.freeze={spec!r}: a fraction must lie in 0..1")
    return "fraction", frac


def frozen_layers(model: nn.Module, spec: str, released: int = 0) -> list[nn.Module]:
    """The backbone layers frozen by ``spec``, after gradual unfreezing has released ``released`` stages from the
    head side (a stage whose layers are partly frozen counts as one)."""
    kind, value = parse_freeze(spec)
    stages = backbone_stages(model)
    if kind == "stages":
        if value > len(stages):
            raise ConfigError(f"model.freeze=stages:{int(value)}: this model has {len(stages)} stages")
        frozen = [m for s in stages[:int(value)] for m in s]
    else:
        layers = backbone_layers(model)
        frozen = layers[:round(value * len(layers))]
    if released and frozen:
        ids = {id(m) for m in frozen}
        touched = [i for i, s in enumerate(stages) if any(id(m) in ids for m in s)]
        for i in sorted(touched, reverse=True)[:released]:
            ids -= {id(m) for m in stages[i]}
        frozen = [m for m in frozen if id(m) in ids]
    return frozen


def apply_freeze(model: nn.Module, frozen: list[nn.Module]) -> None:
    """``requires_grad`` off for the parameters of ``frozen`` layers, on for every other layer (the head included)."""
    ids = {id(m) for m in frozen}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            p.requires_grad_(id(m) not in ids)


def freeze_norm_stats(frozen: list[nn.Module]) -> None:
    """Put frozen norm layers in eval mode after ``model.train()``: their running statistics belong to the pretrained
    weights, and re-estimating them from small target batches is what breaks fine-tuning."""
    for m in frozen:
        if isinstance(m, nn.modules.batchnorm._NormBase):
            m.eval()


class TransferSchedule:
    """The transfer-learning settings every fine-tuning task shares: ``spec`` (model.freeze) frozen from the input
    side, one more stage released at each of ``unfreeze_epochs`` (1-based), and the backbone at lr x ``lr_mult``."""

    def __init__(self, spec: str = "0", unfreeze_epochs: tuple = (), lr_mult: float = 1.0):
        self.spec, self.unfreeze_epochs, self.lr_mult = spec, tuple(unfreeze_epochs), lr_mult
        self.frozen: list[nn.Module] = []

    @classmethod
    def from_config(cls, cfg) -> "TransferSchedule":
        """model.freeze, train.unfreeze_epochs and optim.backbone_lr_mult of a Config."""
        return cls(cfg.model.freeze, tuple(int(e) for e in cfg.train.unfreeze_epochs), cfg.optim.backbone_lr_mult)

    def at_epoch(self, model: nn.Module, epoch: int) -> None:
        """Freeze what 0-based ``epoch`` keeps frozen (a function of the epoch only, so a resume gets it back);
        frozen norm layers stay in eval mode while the model trains."""
        if self.spec in ("0", "0.0", "") and not self.frozen:
            return
        released = sum(e <= epoch + 1 for e in self.unfreeze_epochs)
        self.frozen = frozen_layers(model, self.spec, released)
        apply_freeze(model, self.frozen)
        if model.training:
            freeze_norm_stats(self.frozen)

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        """Backbone and head groups (backbone at lr x lr_mult); weight decay skips norms and biases. Frozen
        parameters stay in the optimizer (they get no gradient, so no update) for gradual unfreezing."""
        backbone, head = split_params(model)
        groups = []
        for params, mult in ((backbone, self.lr_mult), (head, 1.0)):
            extra = {} if mult == 1.0 else {"lr": lr * mult}
            groups.append({"params": [p for p in params if p.ndim > 1], **extra})
            groups.append({"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, **extra})
        return [g for g in groups if g["params"]]
