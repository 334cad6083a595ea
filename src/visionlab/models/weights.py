"""Load pretrained weights from a local file or state dict: key mapping by name (prefixes) or, failing that, by
order, with a clear missing / unexpected / shape-mismatch report."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..utils import UserError

# wrapper prefixes: our TorchvisionClassifier/TimmClassifier keep the library model under ``body.``; other
# codebases save under ``model.``/``module.`` (DDP)
WRAPPER_PREFIXES = ("body.", "model.", "module.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or a torch file read with weights_only=True (never unpickles code)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"weights file not found: {p} (set model.weights=PATH to a local .safetensors or .pth file)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the file is not a safe state dict
        raise UserError(f"{p}: not a readable weights file ({e}); save weights with safetensors") from e
    for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{p}: expected a state dict (name -> tensor)")
    return sd


def _strip(key: str) -> str:
    """The key without any stack of wrapper prefixes (``module.body.x`` -> ``x``)."""
    changed = True
    while changed:
        changed = False
        for p in WRAPPER_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def map_by_name(src: dict, own: dict, aliases: dict | None = None) -> tuple[dict, list[str]]:
    """Match source keys to model keys exactly, or after stripping/adding a wrapper prefix on either side;
    ``aliases`` maps bare source names to model names (a wrapper's renamed head)."""
    own_by_bare = {}
    for k in own:
        own_by_bare.setdefault(_strip(k), k)
    for k, v in (aliases or {}).items():
        if v in own:
            own_by_bare[k] = v
    mapped, unexpected = {}, []
    for k, v in src.items():
        target = k if k in own else own_by_bare.get(_strip(k))
        if target is None or target in mapped:
            unexpected.append(k)
        else:
            mapped[target] = v
    return mapped, unexpected


def map_by_order(src: dict, own: dict) -> dict | None:
    """Pair the i-th source tensor with the i-th model tensor, when both have the same number of tensors and every
    shape matches in order, except a trailing run (a classifier for another number of classes). None otherwise."""
    if len(src) != len(own):
        return None
    pairs = list(zip(own.items(), src.values()))
    n_match = 0
    while n_match < len(pairs) and pairs[n_match][0][1].shape == pairs[n_match][1].shape:
        n_match += 1
    tail = pairs[n_match:]
    # a head is at most weight+bias (+ a norm): anything longer means the architectures differ
    if len(tail) > 4 or n_match == 0:
        return None
    return {k: v for (k, _), v in pairs}


def match_state_dict(src: dict, model: nn.Module) -> tuple[dict, dict]:
    """(tensors to load, report) for ``src`` into ``model``; names first, then order as a last resort."""
    own = model.state_dict()
    mapped, unexpected = map_by_name(src, own, getattr(model, "key_aliases", None))
    how = "names"
    # names failing for most tensors while counts agree: a port with renamed keys (e.g. the PyPI Lite0 file)
    if len(mapped) < len(own) // 2:
        by_order = map_by_order(src, own)
        if by_order is not None:
            mapped, unexpected, how = by_order, [], "order"
    loadable = {k: v for k, v in mapped.items() if own[k].shape == v.shape}
    shape_mismatch = sorted(f"{k}: file {tuple(mapped[k].shape)} vs model {tuple(own[k].shape)}"
                            for k in mapped if k not in loadable)
    report = {"loaded": len(loadable), "mapping": how,
              "missing": sorted(k for k in own if k not in mapped),
              "unexpected": sorted(unexpected),
              "shape_mismatch": shape_mismatch}
    return loadable, report


def load_state_dict_into(model: nn.Module, src: dict, name: str = "state dict") -> dict:
    """Copy matching tensors of ``src`` into ``model`` and return the report (see ``match_state_dict``)."""
    loadable, report = match_state_dict(src, model)
    if not loadable:
        raise UserError(f"{name}: no tensor matches the model's parameters ({len(src)} in the file, e.g. "
                        f"{list(src)[:3]}); is it the right architecture for model.name?")
    # most of the file unused AND most of the model untouched: a different network that shares a few names
    if len(loadable) < len(src) / 2 and len(loadable) < len(model.state_dict()) / 2:
        raise UserError(f"{name}: only {len(loadable)} of {len(src)} tensors fit the model ({format_report(report)}); "
                        f"is it the right architecture for model.name?")
    model.load_state_dict(loadable, strict=False)
    return report


def load_weights(model: nn.Module, path: str | Path) -> dict:
    """Load a local weights file into ``model``; mismatched shapes (e.g. a new classifier) are skipped and reported.
    Mapping by order needs a torch file: safetensors stores tensors sorted by dtype and name, not in model order."""
    name = str(path)
    if name.endswith(".safetensors"):
        name += " (safetensors keeps no tensor order, so only names can match)"
    return load_state_dict_into(model, read_state_dict(path), name)


def format_report(report: dict, limit: int = 6) -> str:
    """One readable paragraph for logs: counts and the first few names of each kind of problem."""
    parts = [f"loaded {report['loaded']} tensors (matched by {report['mapping']})"]
    for kind in ("missing", "unexpected", "shape_mismatch"):
        items = report[kind]
        if items:
            more = f" ... (+{len(items) - limit})" if len(items) > limit else ""
            parts.append(f"{kind.replace('_', ' ')} {len(items)}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts)


def adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Give the first Conv2d ``in_channels`` inputs, keeping pretrained RGB filters: grayscale sums them, other
    counts repeat them scaled by 3/in_channels (timm's rule) so activations keep their scale."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None or conv.in_channels == in_channels:
        return
    w = conv.weight.detach()
    if in_channels == 1:
        new_w = w.sum(1, keepdim=True)
    else:
        reps = -(-in_channels // w.shape[1])
        new_w = w.repeat(1, reps, 1, 1)[:, :in_channels] * (w.shape[1] / in_channels)
    # edit in place: the conv may be a subclass (timm's Conv2dSame) whose padding rule must survive
    conv.weight = nn.Parameter(new_w.contiguous())
    conv.in_channels = in_channels
