"""CAM (Zhou et al. 2016) and Grad-CAM (Selvaraju et al. 2017) over any nn.Module: heatmaps in [0, 1] at input size.

Pure functions over a model and an input batch; hooks live only for the duration of one call.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import SwinTransformer, VisionTransformer

from ..utils import UserError, closest

METHODS = ("gradcam", "cam")
Reshape = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class CamResult:
    """heatmaps: float [B, H, W] in [0, 1]; scores: pre-softmax class scores [B, K]; target: explained class [B]."""

    heatmaps: torch.Tensor
    scores: torch.Tensor
    target: torch.Tensor
    layer: str
    method: str

    @property
    def probs(self) -> torch.Tensor:
        return self.scores.softmax(1)


# ---------------------------------------------------------------- reshape transforms (activations -> NCHW)

def nchw(act: torch.Tensor) -> torch.Tensor:
    """The identity for convolutional feature maps [B, C, h, w]."""
    return act


def nhwc_to_nchw(act: torch.Tensor) -> torch.Tensor:
    """Channels-last token maps [B, h, w, C] (torchvision Swin ``features``) -> [B, C, h, w]."""
    return act.permute(0, 3, 1, 2)


def tokens_to_nchw(act: torch.Tensor) -> torch.Tensor:
    """Token sequences [B, T, C] (ViT) -> [B, C, s, s]; a leading class token (T = 1 + s*s) is dropped."""
    b, t, c = act.shape
    for extra in (1, 0):
        s = math.isqrt(t - extra)
        if s * s == t - extra and s > 0:
            return act[:, extra:].transpose(1, 2).reshape(b, c, s, s)
    raise UserError(f"cannot reshape {t} tokens to a square grid (expected 1 + s*s or s*s); pass reshape=")


# ---------------------------------------------------------------- choosing the target layer

def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _transformer_target(model: nn.Module) -> tuple[str, Reshape] | None:
    for prefix, m in model.named_modules():
        if isinstance(m, SwinTransformer):
            return _join(prefix, "features"), nhwc_to_nchw
        if isinstance(m, VisionTransformer):
            # the encoder's output feeds the head through the class token only, so patch tokens get no gradient
            # there; the input of the last block's first LayerNorm still mixes them into the class token
            last = list(m.encoder.layers.named_children())[-1][0]
            return _join(prefix, f"encoder.layers.{last}.ln_1"), tokens_to_nchw
    return None


def find_target_layer(model: nn.Module, example: torch.Tensor) -> tuple[str, Reshape]:
    """The layer to explain and its reshape: for CNNs the shallowest ancestor of the last Conv2d (outside the
    head) whose output is still a 4-D feature map, i.e. the last conv block before global pooling; for torchvision
    Swin its ``features`` (NHWC), for ViT the last encoder block's ``ln_1`` (tokens). ``example``: one input batch."""
    found = _transformer_target(model)
    if found is not None:
        return found
    head = getattr(model, "head", None)
    head_ids = {id(m) for m in head.modules()} if isinstance(head, nn.Module) else set()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and id(m) not in head_ids]
    if not convs:
        raise UserError("the model has no Conv2d layer to explain; pass layer=NAME (see model.named_modules())")
    parts = convs[-1].split(".")
    candidates = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    shapes: dict[str, torch.Size] = {}

    def record(name, out):
        if torch.is_tensor(out):
            shapes[name] = out.shape

    with _hooks(model, {c: record for c in candidates}), torch.no_grad(), _eval(model):
        model(example[:1].float())
    for c in candidates:
        if c in shapes and len(shapes[c]) == 4:
            return c, nchw
    return convs[-1], nchw


def default_reshape(model: nn.Module, layer: str, ndim: int) -> Reshape:
    """The reshape for an activation of ``ndim`` dims at ``layer``: tokens for 3-D, NHWC inside a Swin, else NCHW."""
    if ndim == 3:
        return tokens_to_nchw
    if ndim != 4:
        raise UserError(f"layer {layer!r} gives {ndim}-D activations; pick a layer with a spatial map (4-D) or "
                        "tokens (3-D)")
    for prefix, m in model.named_modules():
        if isinstance(m, SwinTransformer) and (layer + ".").startswith(_join(prefix, "features") + "."):
            return nhwc_to_nchw
    return nchw


# ---------------------------------------------------------------- hooks, modes, scores

@contextmanager
def _hooks(model: nn.Module, fns: dict[str, Callable]):
    """Forward hooks ``fn(name, output)`` on named modules, always removed on exit."""
    modules = dict(model.named_modules())
    missing = [n for n in fns if n not in modules]
    if missing:
        hint = closest(missing[0], [n for n in modules if n])
        raise UserError(f"no layer named {missing[0]!r} in the model" + (f"; did you mean {hint!r}?" if hint else ""))
    handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n, fn=fn: fn(n, out)) for n, fn in fns.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _eval(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _uses_contract(model: nn.Module) -> bool:
    return hasattr(model, "forward_features") and isinstance(getattr(model, "head", None), nn.Module)


def _features_and_scores(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    if _uses_contract(model):
        feats = model.forward_features(x)
        out = model.head(feats)
    else:
        feats, out = None, model(x)
    return feats, (torch.flatten(out, 1) if out.dim() > 2 else out)


def class_scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pre-softmax class scores: ``head(forward_features(x))`` for models of the shared contract (whose
    ``forward_head`` may end in log-softmax, which saturates gradients), else ``model(x)``."""
    return _features_and_scores(model, x)[1]


def _forward(model: nn.Module, x: torch.Tensor, layer: str):
    """(scores, activation at ``layer``, features or None) with a graph from the activation to the scores."""
    store: dict = {}

    def keep(_name, out):
        if torch.is_tensor(out):
            store["act"] = out
            return out.clone()         # later in-place ops (densenet's relu_) must not change what we read
        return None

    with _hooks(model, {layer: keep}):
        x = x.detach().float().requires_grad_(True)      # a graph even when every parameter is frozen
        feats, scores = _features_and_scores(model, x)
    if "act" not in store:
        raise UserError(f"layer {layer!r} gave no tensor in the forward pass; pick another layer")
    return scores, store["act"], feats


# ---------------------------------------------------------------- the two methods

def _targets(scores: torch.Tensor, target) -> torch.Tensor:
    if target is None:
        return scores.argmax(1)
    t = torch.as_tensor(target, dtype=torch.long, device=scores.device).flatten()
    t = t.expand(scores.shape[0]) if t.numel() == 1 else t
    if t.numel() != scores.shape[0] or int(t.min()) < 0 or int(t.max()) >= scores.shape[1]:
        raise UserError(f"target must be one class index in [0, {scores.shape[1]}) or one per image")
    return t


def normalize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, h, w] -> bilinear upsampling to ``size`` -> per-map min-max scaling to [0, 1] (a flat map -> zeros)."""
    up = F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    lo = up.flatten(1).min(1).values.view(-1, 1, 1)
    hi = up.flatten(1).max(1).values.view(-1, 1, 1)
    span = hi - lo
    flat = span <= 1e-6 * torch.maximum(hi.abs(), lo.abs())        # relative: tiny-but-real maps still count
    return torch.where(flat, torch.zeros_like(up), (up - lo) / torch.where(flat, torch.ones_like(span), span))


def grad_cam(model: nn.Module, x: torch.Tensor, target=None, layer: str | None = None,
             reshape: Reshape | None = None) -> CamResult:
    """Grad-CAM: ReLU(sum_c mean_ij(d score / d A_c) * A_c) at ``layer`` (auto-picked when None), in [0, 1] at the
    input size. ``target``: class index (one or per image); None explains each image's predicted class."""
    if layer is None:
        layer, auto = find_target_layer(model, x)
        reshape = reshape or auto
    with _eval(model), torch.autocast(x.device.type, enabled=False), torch.enable_grad():
        scores, act, _ = _forward(model, x, layer)
        reshape = reshape or default_reshape(model, layer, act.dim())
        tgt = _targets(scores, target)
        picked = scores.gather(1, tgt[:, None]).sum()     # images are independent in eval mode
        (grad,) = torch.autograd.grad(picked, act)
        a, g = reshape(act.detach()), reshape(grad)
        maps = F.relu((g.mean((2, 3), keepdim=True) * a).sum(1))
    return CamResult(normalize_maps(maps, x.shape[-2:]), scores.detach(), tgt, layer, "gradcam")


def cam(model: nn.Module, x: torch.Tensor, target=None, layer: str | None = None,
        reshape: Reshape | None = None) -> CamResult:
    """CAM: ReLU(sum_c w[class, c] * A_c) for models whose head is global-average-pool + ``model.head`` (Linear);
    checks that ``forward_features`` is the spatial mean of the ``layer`` map and says so when it is not."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear) or not hasattr(model, "forward_features"):
        raise UserError("CAM needs a model with forward_features and a Linear `head`; use method=gradcam")
    if layer is None:
        layer, auto = find_target_layer(model, x)
        reshape = reshape or auto
    with _eval(model), torch.autocast(x.device.type, enabled=False), torch.no_grad():
        scores, act, feats = _forward(model, x, layer)
        a = (reshape or default_reshape(model, layer, act.dim()))(act)
        pooled = a.mean((2, 3))
        if pooled.shape != feats.shape or not torch.allclose(pooled, feats, rtol=1e-4, atol=1e-5):
            raise UserError(f"CAM needs global-average-pool + linear after layer {layer!r}, but the model's "
                            "features are not the spatial mean of that map; use method=gradcam")
        tgt = _targets(scores, target)
        w = head.weight.float()[tgt]                      # [B, C]: each image's class row
        maps = F.relu((w[:, :, None, None] * a).sum(1))
    return CamResult(normalize_maps(maps, x.shape[-2:]), scores, tgt, layer, "cam")


def explain(model: nn.Module, x: torch.Tensor, method: str = "gradcam", target=None, layer: str | None = None,
            reshape: Reshape | None = None) -> CamResult:
    """Heatmaps for a batch ``x`` (a normalized float NCHW input) by ``method``: "gradcam" or "cam"."""
    if method not in METHODS:
        raise UserError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return (grad_cam if method == "gradcam" else cam)(model, x, target, layer, reshape)


def overlay(image: np.ndarray, heatmap, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """uint8 RGB [H, W, 3]: ``image`` (uint8 HWC, 1 or 3 channels) blended with a colour-mapped heatmap in [0, 1]."""
    from matplotlib import colormaps

    img = np.asarray(image, dtype=np.float32)
    img = np.repeat(img, 3, axis=2) if img.ndim == 3 and img.shape[2] == 1 else img
    img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
    heat = torch.as_tensor(np.asarray(heatmap.detach().cpu() if torch.is_tensor(heatmap) else heatmap,
                                      dtype=np.float32))
    if tuple(heat.shape) != img.shape[:2]:      # the model saw a resized batch (model.input_size): back to the image
        heat = F.interpolate(heat[None, None], size=img.shape[:2], mode="bilinear", align_corners=False,
                             antialias=heat.shape[-1] > img.shape[1])[0, 0]
    heat = heat.numpy()
    colour = colormaps[cmap](np.clip(heat, 0, 1))[..., :3] * 255.0
    return np.clip((1 - alpha) * img + alpha * colour, 0, 255).astype(np.uint8)
