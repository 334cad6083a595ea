"""Checkpoints: one safetensors file per checkpoint (weights + optional training state), written atomically.

A checkpoint is a single file so that it is either wholly old or wholly new: the model weights, the optimizer's
tensors and the RNG states are tensors; everything else (sidecar, positions, scheduler) is JSON in the metadata.
A readable ``<name>.json`` sidecar is written beside it; both are complete in temp files before either replaces
its old version, and the weights go first, so a sidecar never describes weights that are not on disk yet.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save

from ..utils import UserError, atomic_write_many, json_text

_META_KEY = "visionlab"


def _flatten_optimizer(sd: dict, prefix: str = "optim") -> tuple[dict[str, torch.Tensor], dict]:
    tensors, state_meta = {}, {}
    for idx, st in sd["state"].items():
        entry = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{prefix}/{idx}/{k}"] = v.detach().cpu().contiguous()
            else:
                entry[k] = v
        state_meta[str(idx)] = entry
    return tensors, {"param_groups": sd["param_groups"], "state": state_meta}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict, prefix: str = "optim") -> dict:
    state: dict = {int(i): dict(v) for i, v in meta["state"].items()}
    for key, t in tensors.items():
        if key.startswith(prefix + "/"):
            idx, name = key[len(prefix) + 1:].split("/", 1)
            state.setdefault(int(idx), {})[name] = t
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str | Path, weights: dict[str, torch.Tensor], sidecar: dict,
                    train_state: dict | None = None) -> None:
    """Write ``path`` (.safetensors) and its ``.json`` sidecar atomically, as a pair: on a full disk (or any
    failure) both keep their previous content, so the previous ``last`` stays resumable.

    ``train_state`` may hold "optimizer" (a state_dict) or "optimizers" (name -> state_dict, for tasks with several),
    "rng" (name -> ByteTensor), "ema" (a state_dict) and any JSON-serialisable entries (positions, schedulers,
    history).
    """
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in weights.items()}
    meta = {"sidecar": sidecar}
    if train_state is not None:
        ts = dict(train_state)
        if "optimizer" in ts:
            opt_tensors, meta["optimizer"] = _flatten_optimizer(ts.pop("optimizer"))
            tensors.update(opt_tensors)
        if "optimizers" in ts:
            meta["optimizers"] = {}
            for name, sd in ts.pop("optimizers").items():
                opt_tensors, meta["optimizers"][name] = _flatten_optimizer(sd, f"optims/{name}")
                tensors.update(opt_tensors)
        for name, t in ts.pop("rng", {}).items():
            tensors[f"rng/{name}"] = t.cpu().contiguous()
        for k, v in (ts.pop("ema", None) or {}).items():
            tensors[f"ema/{k}"] = v.detach().cpu().contiguous()
        meta["train_state"] = ts
    blob = save(tensors, metadata={_META_KEY: json.dumps(meta)})
    path = Path(path)
    atomic_write_many({path: blob, path.with_suffix(".json"): json_text(sidecar).encode("utf-8")})


def load_checkpoint(path: str | Path, with_train_state: bool = False) -> dict:
    """Return {"weights", "sidecar"} and, when asked and present, "train_state" with "optimizer", "rng", "ema"."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()[_META_KEY])
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - a torn or foreign file: say which one
        raise UserError(f"{path}: unreadable checkpoint ({e})") from e
    out = {"weights": {k[6:]: v for k, v in tensors.items() if k.startswith("model/")},
           "sidecar": meta["sidecar"]}
    if with_train_state and "train_state" in meta:
        ts = dict(meta["train_state"])
        if "optimizer" in meta:
            ts["optimizer"] = _unflatten_optimizer(tensors, meta["optimizer"])
        if "optimizers" in meta:
            ts["optimizers"] = {name: _unflatten_optimizer(tensors, m, f"optims/{name}")
                                for name, m in meta["optimizers"].items()}
        ts["rng"] = {k[4:]: v for k, v in tensors.items() if k.startswith("rng/")}
        ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema/")}
        ts["ema"] = ema or None
        out["train_state"] = ts
    return out
