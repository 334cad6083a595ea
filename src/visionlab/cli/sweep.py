"""`visionlab sweep CONFIG SPACE.yaml [key=value ...]`: parse the mode options, run the sweep, print where it went."""
from __future__ import annotations

import sys

from ..utils import ConfigError, UserError

USAGE = ("usage: visionlab sweep CONFIG.yaml SPACE.yaml [trials=N] [timeout=SECONDS] [storage=URL] [worker=true] "
         "[confirm=K n=5] [key=value ...]\n(storage= defaults to $VISIONLAB_STORAGE, else RUNS/<name>/sweep.db; keep a "
         "PostgreSQL password off the command line with PGPASSWORD or ~/.pgpass)")
MODE_OPTIONS = ("trials", "timeout", "storage", "worker", "confirm", "n")


def _number(kv: dict, key: str, kind, default=None):
    if key not in kv:
        return default
    try:
        value = kind(kv[key])
    except ValueError:
        raise ConfigError(f"{key}: expected {kind.__name__} >= 0, got {kv[key]!r}") from None
    if value < 0:
        raise ConfigError(f"{key}: expected {kind.__name__} >= 0, got {kv[key]!r}")
    return value


def _bool(kv: dict, key: str) -> bool:
    raw = kv.get(key, "false").lower()
    if raw not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{key}: expected true or false, got {kv[key]!r}")
    return raw in ("true", "1", "yes")


def parse_args(args: list[str]) -> tuple[str, str, dict, list[str]]:
    """-> (CONFIG, SPACE, mode options, config overrides in their original order)."""
    pos = [a for a in args if "=" not in a]
    if len(pos) != 2 or not all(p.endswith((".yaml", ".yml")) for p in pos) or args[:2] != pos:
        raise UserError(USAGE + "\n(CONFIG and SPACE are YAML files, given first; e.g. visionlab sweep "
                                "configs/sweep_seed_protocol.yaml configs/sweep_seed_lr_grid.yaml)")
    kv, overrides = {}, []
    for a in args[2:]:
        key = a.split("=", 1)[0]
        if key in MODE_OPTIONS:
            kv[key] = a.split("=", 1)[1]
        else:
            overrides.append(a)
    return pos[0], pos[1], kv, overrides


def cmd_sweep(args: list[str]) -> int:
    """Run (or join, with worker=true) a sweep; prints one line per trial, the best trial and the sweep folder."""
    from ..experiments.sweep import run_sweep

    config, space, kv, overrides = parse_args(args)
    confirm = _number(kv, "confirm", int, 0)
    seeds = _number(kv, "n", int, 5)
    if confirm and seeds < 2:
        raise ConfigError(f"n={seeds}: confirming over seeds needs n >= 2 for a spread and a CI (n=5 is a good start)")
    worker = _bool(kv, "worker")
    if worker and confirm:
        raise ConfigError("confirm= is for the command that writes the report; drop it from worker=true")
    try:
        result = run_sweep(config, space, overrides, trials=_number(kv, "trials", int),
                           timeout=_number(kv, "timeout", float), storage=kv.get("storage") or None,
                           worker=worker, confirm=confirm, seeds=seeds)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue the study", file=sys.stderr)
        return 130
    if result.best:
        params = " ".join(f"{k}={result.best[k]}" for k in result.best if k not in
                          ("number", "state", "value", "duration_s", "worker", "run_dir"))
        print(f"best: trial {result.best['number']} value={result.best['value']:.4f} {params}")
    for f in result.files:
        print(f)
    print(result.sweep_dir)
    return 0

