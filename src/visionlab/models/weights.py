"""Load pretrained weights from a local file (safetensors or a torch state dict), with a clear key report."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..utils import UserError


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
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise UserError(f"{p}: expected a state dict (name -> tensor)")
    return sd


def load_weights(model: nn.Module, path: str | Path) -> dict:
    """Copy matching tensors into ``model``; mismatched shapes (e.g. a new classifier) are skipped and reported."""
    src = read_state_dict(path)
    own = model.state_dict()
    # accept weights saved from the bare torchvision model (no "body." prefix) or with a "module." DDP prefix
    mapped = {}
    for k, v in src.items():
        k = k.removeprefix("module.")
        for cand in (k, "body." + k):
            if cand in own:
                mapped[cand] = v
                break
        else:
            mapped[k] = v
    loadable = {k: v for k, v in mapped.items() if k in own and own[k].shape == v.shape}
    shape_mismatch = sorted(k for k in mapped if k in own and own[k].shape != mapped[k].shape)
    unexpected = sorted(k for k in mapped if k not in own)
    missing = sorted(k for k in own if k not in loadable)
    if not loadable:
        raise UserError(f"{path}: no tensor matches the model's parameters; is it the right architecture?")
    model.load_state_dict(loadable, strict=False)
    return {"loaded": len(loadable), "missing": missing, "unexpected": unexpected, "shape_mismatch": shape_mismatch}
