"""Small shared helpers: user-facing errors, atomic file writes, seeding, device choice."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import tempfile
from pathlib import Path

import numpy as np
import torch


class UserError(Exception):
    """A mistake the user can fix; the CLI prints the message (no traceback) and exits non-zero."""

    exit_code = 1


class ConfigError(UserError):
    """A bad config key or value; exit code 2 like argparse."""

    exit_code = 2


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make renames in ``folder`` durable: on POSIX a rename lives in the folder's own metadata."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:                              # e.g. Windows cannot open a folder; nothing more to do there
        return
    try:
        os.fsync(fd)
    except OSError:                              # some filesystems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def _temp_beside(path: Path) -> str:
    """A new, unique, empty file in ``path``'s folder (same filesystem, so os.replace is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    return tmp


def _sync_file(tmp: str) -> None:
    fd = os.open(tmp, os.O_RDWR)                  # writable: Windows' fsync (_commit) needs it
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o644)                         # mkstemp makes 0600; run files are meant to be shared


def atomic_write_many(files: dict) -> None:
    """Write {path: bytes} so that each path holds its old or its new content, never a torn file. Every content
    goes to a temp file first (a full disk fails here, before any path changes), then the temps replace their
    paths in the order given: put the file that others describe (weights before their sidecar) first."""
    temps: dict[Path, str] = {}
    try:
        for path, data in files.items():
            path = Path(path)
            temps[path] = tmp = _temp_beside(path)
            with open(tmp, "wb") as f:
                f.write(data)
            _sync_file(tmp)
        for path, tmp in temps.items():
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps.values():
            Path(tmp).unlink(missing_ok=True)
        raise
    for folder in {p.parent for p in temps}:
        fsync_dir(folder)


def png_bytes(image) -> bytes:
    """uint8 HxW or HxWxC (C = 1, 3 or 4) -> PNG file bytes (one channel written as grey)."""
    import io

    from PIL import Image

    arr = np.asarray(image, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr).save(buf, format="PNG")
    return buf.getvalue()


def write_png(path: str | os.PathLike, image) -> None:
    """``image`` (see png_bytes) as a PNG file at ``path``, atomically, creating its folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, png_bytes(image))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either the old or the new content, never a torn file."""
    atomic_write_many({path: data})


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a unique temp path beside ``path`` for writers that take a file name (torch.jit.save,
    torch.onnx.export, ONNX Runtime's quantizer); when the block succeeds the temp is fsynced and renamed onto
    ``path``, else removed. ``path`` keeps its previous content until the new one is complete."""
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        yield Path(tmp)
        commit_temp(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def commit_temp(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """A finished temp file (beside ``path``) fsynced and renamed onto ``path``, then the folder fsynced: the last
    step of every atomic write here, also for writers that fill a file over many calls (the stream's video)."""
    _sync_file(str(tmp))
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike):
    """A binary file object whose content replaces ``path`` atomically when the block succeeds (np.save,
    np.savez: a file object also keeps the name exactly as given, without an added .npz)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f


def write_npz(path: str | os.PathLike, **arrays) -> Path:
    """``np.savez`` of ``arrays`` to exactly ``path``, atomically; returns the path."""
    with atomic_open(path) as f:
        np.savez(f, **arrays)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_text(obj) -> str:
    """``obj`` as indented JSON text (numpy scalars and arrays, paths allowed), as every JSON file here is written."""
    return json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"


def write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json_text(obj))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def read_json(path: str | os.PathLike):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"train.device: unknown device {name!r} (use auto, cpu, cuda, cuda:0 or mps)") from e


def closest(name: str, choices) -> str | None:
    import difflib

    m = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return m[0] if m else None


def _cpuinfo_lines() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return f.readlines()
    except OSError:
        return []


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else platform.processor()."""
    for line in _cpuinfo_lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str] | None:
    """The first CPU's feature flags from /proc/cpuinfo ("flags" on x86, "Features" on Arm); None when unknown."""
    for line in _cpuinfo_lines():
        key = line.split(":", 1)[0].strip()
        if key in ("flags", "Features"):
            return set(line.split(":", 1)[1].split())
    return None
