"""Run directories: a fresh, uniquely named folder per run, with env.json written before anything can fail,
status.json (running, finished, failed) and resumes.jsonl (one line per resume)."""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

from ..utils import ConfigError, read_json, write_json
from .machine import cpu_info, keep_freed_memory

# the password of a URL's user info: scheme://user:PASSWORD@host
# (greedy up to the last @ of the word: a password with a raw @ is hidden whole, at worst with part of the host)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)\S*(?=@)")


def check_name(name: str, what: str = "name") -> str:
    """Refuse a run or experiment name that would leave the output folder (a path separator or ..)."""
    seps = {"/", "\\", os.sep, os.altsep} - {None}
    if any(s in name for s in seps) or name == "." or ".." in name:
        raise ConfigError(f"{what}={name!r}: a name is one folder inside out_dir, without '/', '\\' or '..'; "
                          f"pick a plain name such as {what}=my_run (set out_dir= to choose where runs go)")
    return name


def mask_secrets(text: str) -> str:
    """``text`` with the password of any URL in it shown as ***: postgresql://user:***@host/db."""
    return _URL_PASSWORD.sub(lambda m: m.group("head") + "***", str(text))


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


def _package_version() -> str:
    """The installed visionlab version (read from the package metadata: the engine never imports the package root)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("visionlab")
    except PackageNotFoundError:
        return "unknown"


def versions() -> dict:
    import numpy
    import torchvision

    return {"visionlab": _package_version(), "python": platform.python_version(), "torch": torch.__version__,
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
        "versions": versions(), "git_sha": git_sha(), "argv": [mask_secrets(a) for a in sys.argv], "cwd": os.getcwd(),
        "device": str(device), "precision": precision, "threads": torch.get_num_threads(),
        "cpu": cpu_info(), "malloc": keep_freed_memory(), "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
    })


def write_status(run_dir: Path, status: str, reason: str | None = None) -> None:
    """status.json: running (at the start), finished (summary written) or failed (with the reason)."""
    write_json(run_dir / "status.json", {"status": status, "reason": reason, "pid": os.getpid(),
                                         "time": _now()})


def read_status(run_dir: str | Path) -> dict | None:
    """A run's status.json ({"status", "reason", ...}), or None for runs made before it existed.

    "running" with nobody holding the run's lock means its process died without a word (SIGKILL, power loss):
    that reads as failed, with that reason."""
    from .lock import holder

    path = Path(run_dir) / "status.json"
    try:
        st = read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(st, dict):
        return None
    if st.get("status") == "running" and holder(run_dir) is None:
        st = {**st, "status": "failed", "reason": "killed (status running, but no process holds the run any more)"}
    return st


def unfinished(run_dir: str | Path) -> str | None:
    """Why a run cannot be used as a finished run ("failed: ...", "still running (pid N)"), or None when it finished
    (or predates status.json). Reports, ensembles and the app call this before reading a run."""
    st = read_status(run_dir)
    if st is None or st.get("status") == "finished":
        return None
    if st.get("status") == "running":
        return f"still running (pid {st.get('pid')})"
    return f"{st.get('status')}: {st.get('reason') or 'no reason recorded'}"


def append_resume(run_dir: Path, record: dict) -> None:
    """One line per resume in resumes.jsonl (env.json keeps describing the run's start)."""
    line = {"time": _now(), "argv": [mask_secrets(a) for a in sys.argv], **record,
            "versions": versions(), "git_sha": git_sha()}
    with open(run_dir / "resumes.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(line, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
