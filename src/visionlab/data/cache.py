"""Decoded-dataset cache: uint8 arrays as raw .npy files (no pickle) in a folder keyed by the source's identity.

Key = hash of (format version, source file identities, preprocessing); any changed file gives a new key.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

CACHE_VERSION = 1
MEMORY_LIMIT = 2 * 1024**3       # in_memory=auto decodes into RAM below this many bytes


def cache_dir(cfg) -> Path:
    """data.cache_dir, else $VISIONLAB_CACHE, else ~/.cache/visionlab."""
    if getattr(cfg, "cache_dir", ""):
        return Path(cfg.cache_dir).expanduser()
    env = os.environ.get("VISIONLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "visionlab"


def want_memory(cfg, nbytes: int) -> bool:
    """Whether to decode into memory: in_memory true, or auto and the decoded arrays stay under 2 GiB."""
    mode = str(cfg.in_memory).lower()
    if mode in ("true", "1", "yes"):
        return True
    if mode in ("false", "0", "no"):
        return False
    if mode != "auto":
        from ..utils import ConfigError
        raise ConfigError(f"data.in_memory={cfg.in_memory!r}: expected auto, true or false")
    return nbytes < MEMORY_LIMIT


def make_key(*parts) -> str:
    """A stable hex digest of JSON-able parts plus the cache format version."""
    h = hashlib.sha1(json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str).encode())
    return h.hexdigest()


def file_identity(paths) -> list:
    """[(name, size, mtime_ns)] for each file: cheap identity of small source files (IDX, pickles, CSV)."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((os.path.basename(p), st.st_size, st.st_mtime_ns))
    return out


def _entry(cfg, name: str, slot: str, key: str) -> Path:
    return cache_dir(cfg) / f"{name}-{slot[:8]}-{key[:20]}"


def load(cfg, name: str, slot: str, key: str):
    """(arrays, meta) from the cache, or None on a miss (or an unreadable entry)."""
    d = _entry(cfg, name, slot, key)
    meta_path = d / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        arrays = {k: np.load(d / f"{k}.npy", allow_pickle=False) for k in meta["arrays"]}
    except (OSError, ValueError, KeyError) as e:
        warnings.warn(f"ignoring unreadable cache {d}: {e}")
        return None
    return arrays, meta["meta"]


def save(cfg, name: str, slot: str, key: str, arrays: dict, meta: dict) -> Path | None:
    """Write an entry atomically (temp folder + rename) and drop older entries of the same slot."""
    root = cache_dir(cfg)
    final = _entry(cfg, name, slot, key)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{final.name}-"))
        for k, a in arrays.items():
            with open(tmp / f"{k}.npy", "wb") as f:
                np.save(f, np.ascontiguousarray(a), allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
        (tmp / "meta.json").write_text(json.dumps({"key": key, "arrays": list(arrays), "meta": meta}))
        try:
            os.rename(tmp, final)
        except OSError:                   # another process won the race: its entry is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        warnings.warn(f"could not write dataset cache in {root}: {e} (set data.cache_dir or VISIONLAB_CACHE)")
        return None
    for old in root.glob(f"{name}-{slot[:8]}-*"):
        if old != final and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return final


def cached(cfg, name: str, slot: str, key: str, build: Callable[[], tuple[dict, dict]]):
    """Return (arrays, meta, hit): from the cache when the key matches, else ``build()`` and store it."""
    got = load(cfg, name, slot, key)
    if got is not None:
        return got[0], got[1], True
    arrays, meta = build()
    save(cfg, name, slot, key, arrays, meta)
    return arrays, meta, False


def cached_source(cfg, name: str, files, build: Callable[[], tuple[dict, dict]]) -> tuple[dict, dict]:
    """(arrays, meta) decoded from small source files (IDX, pickles, CSV), cached unless in_memory=false."""
    if str(cfg.in_memory).lower() in ("false", "0", "no"):
        return build()
    files = [Path(f) for f in files]
    slot = make_key(name, str(files[0].resolve().parent))
    key = make_key(name, file_identity(files))
    arrays, meta, _ = cached(cfg, name, slot, key, build)
    return arrays, meta
