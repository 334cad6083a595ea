"""Name -> builder registries (datasets, models, tasks), with a helpful error for unknown names."""
from __future__ import annotations

from typing import Callable

from .utils import ConfigError, closest


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable] = {}

    def register(self, name: str, fn: Callable | None = None):
        """Use as ``reg.register("name", fn)`` or as a decorator ``@reg.register("name")``."""
        if fn is None:
            return lambda f: self.register(name, f)
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._items[name] = fn
        return fn

    def get(self, name: str) -> Callable:
        if name not in self._items:
            hint = closest(name, self._items)
            msg = f"unknown {self.kind} {name!r}"
            if hint:
                msg += f"; did you mean {hint!r}?"
            msg += f" Valid {self.kind}s: {', '.join(sorted(self._items))}"
            raise ConfigError(msg)
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
