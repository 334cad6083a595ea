"""Run directories: a fresh, uniquely named folder per run, with env.json written before anything can fail."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from ..utils import write_json


def new_run_dir(out_dir: str | Path, name: str) -> Path:
    """runs/<name>, or runs/<name>-2, -3, ... when taken (never overwrites a previous run)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        path = out / (name if k == 1 else f"{name}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"too many runs named {name} in {out}")


def latest_run_dir(out_dir: str | Path, name: str) -> Path | None:
    """The most recently modified run of this name that has a last checkpoint."""
    out = Path(out_dir)
    cands = [p for p in out.glob(f"{name}*") if (p / "checkpoints" / "last.safetensors").is_file()
             and (p.name == name or p.name[len(name):].lstrip("-").isdigit())]
    return max(cands, key=lambda p: p.stat().st_mtime) if cands else None


def versions() -> dict:
    import numpy
    import torchvision

    from .. import __version__

    return {"visionlab": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": numpy.__version__}


def git_sha() -> str | None:
    try:
        root = Path(__file__).resolve().parents[3]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_env(run_dir: Path, device: torch.device, precision: str) -> None:
    write_json(run_dir / "env.json", {
        "versions": versions(), "git_sha": git_sha(), "argv": sys.argv, "cwd": os.getcwd(),
        "device": str(device), "precision": precision, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
    })
