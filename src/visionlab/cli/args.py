"""Argument splitting shared by CLI modes: positional arguments, then key=value options checked against a list."""
from __future__ import annotations

from pathlib import Path

from ..utils import ConfigError


def split_options(args: list[str], mode: str, options: tuple[str, ...], usage: str) -> tuple[list[str], dict]:
    """Split ``args`` into positionals and known ``key=value`` options; an unknown key fails naming the valid ones.

    An argument that names an existing file stays positional even when it contains '='."""
    pos, kv = [], {}
    for a in args:
        key = a.split("=", 1)[0]
        if "=" in a and not Path(a).exists():
            if key not in options:
                raise ConfigError(f"unknown option {key!r} for {mode} (options: {', '.join(options)})\n{usage}")
            kv[key] = a.split("=", 1)[1]
        else:
            pos.append(a)
    return pos, kv
