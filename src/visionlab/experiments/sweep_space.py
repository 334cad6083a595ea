"""SPACE.yaml of `visionlab sweep`: search space, strategy, budget, metric and pruning, checked before any trial.

The format is documented in configs/sweep_seed_lr_grid.yaml; optuna samplers and pruners are built from it here."""
from __future__ import annotations

import copy
import itertools
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from visionlab import config as C
from visionlab.engine.rundir import check_name
from visionlab.utils import ConfigError, closest

STRATEGIES = ("grid", "random", "tpe")
TOP_KEYS = ("name", "strategy", "trials", "timeout", "seed", "metric", "direction", "prune", "report", "params")
PARAM_KEYS = ("type", "low", "high", "log", "step", "values")
PRUNE_KEYS = ("n_startup_trials", "n_warmup_steps", "interval_steps")


@dataclass
class Param:
    """One searched config key: a list of ``values`` (categorical, the only kind grid takes) or a float/int range."""

    key: str
    values: list | None = None
    type: str = "float"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def suggest(self, trial: optuna.Trial):
        """The value of this key for ``trial`` (optuna records it under the dotted config key)."""
        if self.values is not None:
            return trial.suggest_categorical(self.key, self.values)
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    @property
    def log_axis(self) -> bool:
        """Plot on a log x-axis: log ranges, and value lists of positive numbers spanning >= 2 decades."""
        if self.values is None:
            return self.log
        nums = [v for v in self.values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return len(nums) == len(self.values) and min(nums) > 0 and max(nums) / min(nums) >= 100


@dataclass
class Space:
    """A parsed SPACE.yaml."""

    name: str
    strategy: str
    params: list[Param]
    trials: int | None = None
    timeout: float | None = None
    seed: int = 0
    metric: str | None = None       # None: the task's primary metric (val/acc, val/miou, ...); see resolve_objective
    direction: str | None = None    # None: the primary metric's mode (max -> maximize), minimize for a loss
    prune: dict | None = field(default_factory=dict)      # MedianPruner kwargs; None turns pruning off
    report: bool = True                                   # report.html per trial, as `visionlab train` writes

    def grid(self) -> dict[str, list]:
        return {p.key: list(p.values) for p in self.params}

    def grid_size(self) -> int:
        return math.prod(len(p.values) for p in self.params)

    def grid_points(self) -> list[dict]:
        """Every combination of the grid, as {key: value} dicts."""
        keys = [p.key for p in self.params]
        return [dict(zip(keys, combo)) for combo in itertools.product(*(p.values for p in self.params))]

    def budget(self) -> int | None:
        """Finished trials to reach (None: only the time budget); a grid never runs past its size."""
        if self.strategy == "grid":
            return min(self.trials or self.grid_size(), self.grid_size())
        return self.trials


def _fail(path, msg: str):
    raise ConfigError(f"{path}: {msg}")


def _check_keys(path, where: str, given, valid) -> None:
    for k in given:
        if k not in valid:
            hint = closest(str(k), list(valid))
            _fail(path, f"unknown key {k!r} in {where}" + (f"; did you mean {hint!r}?" if hint else "") +
                  f" (valid: {', '.join(valid)})")


def _param(path, key: str, spec) -> Param:
    if not isinstance(spec, dict):
        _fail(path, f"params.{key}: expected a mapping like {{values: [...]}} or {{type: float, low: 1e-4, "
                    f"high: 0.1, log: true}}, got {spec!r}")
    _check_keys(path, f"params.{key}", spec, PARAM_KEYS)
    if "values" in spec:
        vals = spec["values"]
        if not isinstance(vals, list) or not vals:
            _fail(path, f"params.{key}.values: expected a non-empty list")
        return Param(key, values=vals)
    typ = spec.get("type", "float")
    if typ not in ("float", "int"):
        _fail(path, f"params.{key}.type: expected float or int (or give values: [...]), got {typ!r}")
    try:
        low, high = float(spec["low"]), float(spec["high"])
        step = float(spec["step"]) if spec.get("step") is not None else None
    except (KeyError, TypeError, ValueError):
        _fail(path, f"params.{key}: a {typ} range needs numeric low: and high: (or give values: [...])")
    log = bool(spec.get("log", False))
    if not low < high or (log and low <= 0):
        _fail(path, f"params.{key}: need low < high" + (" and low > 0 for log: true" if log else ""))
    return Param(key, type=typ, low=low, high=high, log=log, step=step)


def _name(path, name: str) -> str:
    try:
        return check_name(name)        # the sweep folder <out_dir>/<name>: never outside out_dir
    except ConfigError as e:
        _fail(path, str(e))


def _prune(path, value) -> dict | None:
    if value in (None, False):
        return None
    if value is True:
        return {}
    if not isinstance(value, dict):
        _fail(path, f"prune: expected true, false or {{n_startup_trials: 5, n_warmup_steps: 0}}, got {value!r}")
    _check_keys(path, "prune", value, PRUNE_KEYS)
    return {k: int(v) for k, v in value.items()}


def load_space(path: str | Path, trials: int | None = None, timeout: float | None = None) -> Space:
    """Read and check SPACE.yaml; ``trials``/``timeout`` (from the command line) replace the file's budget."""
    path = Path(path)
    raw = C.read_yaml(path, "search space not found: {path} (see configs/sweep_seed_lr_grid.yaml for the format)")
    if not isinstance(raw, dict):
        _fail(path, "expected a mapping with strategy:, params:, ... at the top level")
    _check_keys(path, "the search space", raw, TOP_KEYS)
    strategy = raw.get("strategy", "random")
    if strategy not in STRATEGIES:
        _fail(path, f"strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    params = raw.get("params") or {}
    if not isinstance(params, dict) or not params:
        _fail(path, "params: give at least one config key to search, e.g. params: {optim.lr: {values: [0.01, 0.1]}}")
    space = Space(name=_name(path, str(raw.get("name") or path.stem)), strategy=strategy,
                  params=[_param(path, str(k), v) for k, v in params.items()],
                  trials=trials if trials is not None else raw.get("trials"),
                  timeout=timeout if timeout is not None else raw.get("timeout"), seed=int(raw.get("seed", 0)),
                  metric=_opt_str(raw.get("metric")), direction=_opt_str(raw.get("direction")),
                  prune=_prune(path, raw.get("prune", True)), report=bool(raw.get("report", True)))
    _check_space(path, space)
    return space


def _opt_str(value) -> str | None:
    return None if value is None else str(value)


def _check_space(path, space: Space) -> None:
    if space.direction is not None and space.direction not in ("maximize", "minimize"):
        _fail(path, f"direction: expected maximize or minimize, got {space.direction!r}")
    if space.metric is not None and not space.metric.startswith("val/"):
        # the test split estimates the chosen config honestly only if it never took part in choosing it
        _fail(path, f"metric: {space.metric!r} is not a per-epoch validation metric; use val/acc, val/loss, ...")
    if space.strategy == "grid":
        ranged = [p.key for p in space.params if p.values is None]
        if ranged:
            _fail(path, f"strategy: grid needs values: [...] for every parameter; {', '.join(ranged)} "
                        f"{'is a range' if len(ranged) == 1 else 'are ranges'} (use random or tpe for ranges)")
    for name, value in (("trials", space.trials), ("timeout", space.timeout)):
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0):
            _fail(path, f"{name}: expected a number >= 0, got {value!r}")
    if space.strategy != "grid" and not space.trials and not space.timeout:
        _fail(path, "no budget: set trials: N and/or timeout: SECONDS (or pass trials=N / timeout=S)")


def resolve_objective(space: Space, task: str) -> Space:
    """Fill in what SPACE.yaml left out: metric = the task's primary metric (val/acc for classification,
    val/miou for segmentation), direction = its mode (a loss or another min metric: minimize)."""
    from visionlab.experiments import primary as P

    if space.metric is None or space.direction is None:
        primary = P.of_task(task)
        space.metric = space.metric or primary.metric
        space.direction = space.direction or ("maximize" if P.mode_of(space.metric, primary) == "max" else "minimize")
    return space


def check_params(space: Space, base: dict) -> None:
    """Fail before any trial when a searched key is not a config key or a value has the wrong type."""
    for p in space.params:
        samples = p.values if p.values is not None else [p.low, p.high]
        for v in samples:
            v = int(v) if p.type == "int" and p.values is None else v
            d = copy.deepcopy(base)
            C.set_key(d, p.key, v)
            C.from_dict(d)          # raises ConfigError: unknown key (did you mean) or wrong type


def worker_seed(seed: int, identity: str) -> int:
    """Workers sharing a study must not draw the same random parameters: mix the worker's identity in."""
    return (seed + zlib.crc32(identity.encode())) % 2**31


def build_sampler(space: Space, seed: int) -> optuna.samplers.BaseSampler:
    """GridSampler, RandomSampler or TPESampler, all seeded."""
    if space.strategy == "grid":
        # the grid is shuffled by the seed; trial k takes grid point k, so workers never run one point twice
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if space.strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def build_pruner(space: Space) -> optuna.pruners.BasePruner:
    """MedianPruner (optuna's defaults unless prune: sets them), or no pruning."""
    if space.prune is None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(**space.prune)
