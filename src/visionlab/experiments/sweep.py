"""Hyperparameter sweeps on optuna: grid, random or TPE trials, median pruning, shared studies for many workers.

Each trial is a real run in <out_dir>/<sweep>/trial-<k>/; the sweep writes sweep.csv, sweep.png and best.yaml."""
from __future__ import annotations

import copy
import os
import random
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from visionlab import config as C
from visionlab.engine.rundir import mask_secrets
from visionlab.experiments import sweep_space as S
from visionlab.experiments.training import train_and_report
from visionlab.utils import ConfigError, UserError

LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)    # trials that use up the budget
WAIT_POLL_S = 2.0


@dataclass
class SweepResult:
    """What a sweep command did: its folder, the trials this process ran, the best trial and written files."""

    sweep_dir: Path
    ran: int
    rows: list = field(default_factory=list)
    best: dict | None = None
    files: list = field(default_factory=list)
    confirm: list | None = None


class _BudgetUsed(Exception):
    """Raised inside a trial created after the shared budget was taken by other workers."""


def log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def worker_identity() -> str:
    """host:pid, recorded on every trial so a shared study shows who ran what."""
    return f"{socket.gethostname()}:{os.getpid()}"


def storage_url(storage: str | None, sweep_dir: Path) -> str:
    """storage=URL, else $VISIONLAB_STORAGE (a whole URL, kept off the command line), else sweep.db in the folder.

    A PostgreSQL password can also stay out of the URL: libpq reads PGPASSWORD (or ~/.pgpass)."""
    return storage or os.environ.get("VISIONLAB_STORAGE") or f"sqlite:///{sweep_dir / 'sweep.db'}"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An optuna RDB storage with heartbeats, so trials of a killed worker turn FAIL and their budget frees up.
    Messages show the URL with its password masked."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)   # heartbeats are stable enough
    if url.startswith(("postgresql://", "postgres://")):
        # name the driver we depend on (psycopg 3): SQLAlchemy's default for plain postgresql:// changed in 2.1
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    try:
        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
            except Exception as e:
                # workers starting together race to create the schema; the loser finds it made on a retry
                if type(e).__name__ not in ("IntegrityError", "ProgrammingError") or attempt == 4:
                    raise
                time.sleep(0.5 + random.random())
    except ImportError as e:
        raise UserError(f"storage={mask_secrets(url)}: the database driver is missing ({e}); install it with "
                        "`pip install 'psycopg[binary]'` (or `pip install -e .[search]`)") from None
    except Exception as e:       # sqlalchemy's connection and URL errors
        if type(e).__module__.startswith(("sqlalchemy", "psycopg")) or isinstance(e, ValueError):
            first = mask_secrets(str(e).splitlines()[0] if str(e) else "")
            raise UserError(f"storage={mask_secrets(url)}: cannot open the study database ({type(e).__name__}: "
                            f"{first}); check the URL and that the server is running") from None
        raise


def _base_config(config, overrides: list[str]) -> dict:
    for item in overrides:
        if item.split("=", 1)[0].strip() in ("name", "resume"):
            raise ConfigError(f"{item!r}: the sweep names its trials trial-<k> after SPACE.yaml's name: "
                              "(set name: there) and cannot resume a single run; drop this override")
    return C.to_dict(C.load_config(config, overrides))


class _Objective:
    """One trial: suggest parameters, train a real run, report each epoch's metric to the pruner."""

    def __init__(self, space: S.Space, base: dict, sweep_dir: Path, budget: int | None, identity: str):
        self.space, self.base, self.sweep_dir, self.budget, self.identity = space, base, sweep_dir, budget, identity
        self.skipped = False

    def __call__(self, trial: optuna.Trial) -> float:
        if self.budget is not None and _rank(trial) >= self.budget:
            # another worker took the last slot between our budget check and our trial's creation
            self.skipped = True
            trial.set_user_attr("skipped", "budget used up")
            trial.study.stop()
            raise _BudgetUsed()
        cfg = copy.deepcopy(self.base)
        for p in self.space.params:
            C.set_key(cfg, p.key, p.suggest(trial))
        cfg.update(out_dir=str(self.sweep_dir), name=f"trial-{trial.number}")   # trial.number: unique per study
        trial.set_user_attr("worker", self.identity)
        trial.set_user_attr("run_dir", str(self.sweep_dir / cfg["name"]))
        trial.set_user_attr("config", C.to_dict(C.from_dict(cfg)))   # best.yaml comes from here, on any machine
        values: list[float] = []
        result = train_and_report(cfg, None, [self._pruning_callback(trial, values)], report=self.space.report)
        trial.set_user_attr("run_dir", str(result.run_dir))
        return max(values) if self.space.direction == "maximize" else min(values)

    def _pruning_callback(self, trial: optuna.Trial, values: list):
        metric = self.space.metric

        def on_epoch_end(state, row: dict) -> None:
            value = row.get(metric)
            if value is None:
                raise UserError(f"metric {metric!r} is not in the epoch log (has: {', '.join(sorted(row))}); set "
                                "metric: in SPACE.yaml, and keep data.val_fraction > 0 for a validation split")
            values.append(float(value))
            trial.report(float(value), int(row["epoch"]))
            if self.space.prune is not None and trial.should_prune():
                raise optuna.TrialPruned(f"{metric}={value:.4f} at epoch {row['epoch']}")
        return on_epoch_end


def _rank(trial: optuna.Trial) -> int:
    """How many budget-using trials of the study were created before this one (trial numbers are sequential)."""
    return sum(t.number < trial.number for t in trial.study.get_trials(deepcopy=False, states=LIVE))


def _count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def _trial_line(space: S.Space):
    def callback(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        if t.user_attrs.get("skipped"):
            return
        value = f"{t.value:.4f}" if t.value is not None else "-"
        secs = t.duration.total_seconds() if t.duration else 0.0
        params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        log_stderr(f"trial {t.number} {t.state.name} {space.metric}={value} ({secs:.1f} s) {params}")
    return callback


def run_trials(study: optuna.Study, objective: _Objective, timeout: float | None, wait: bool) -> int:
    """Start trials one at a time until the shared budget or this process's time is used up; returns how many ran.

    The budget counts the study's COMPLETE, PRUNED and RUNNING trials, whoever ran them; with ``wait`` the
    command then waits for other workers' running trials (a dead worker's trial fails by heartbeat)."""
    deadline = time.monotonic() + timeout if timeout else None
    ran, callbacks, waited = 0, [_trial_line(objective.space)], False
    while True:
        used = _count(study, *LIVE)
        if (objective.budget is None or used < objective.budget) and (deadline is None or time.monotonic() < deadline):
            study.optimize(objective, n_trials=1, catch=(_BudgetUsed,), callbacks=callbacks)
            if objective.skipped:
                objective.skipped = False
                continue
            ran += 1
            continue
        running = _count(study, TrialState.RUNNING)
        if not (wait and running):
            return ran
        if not waited:
            log_stderr(f"waiting for {running} running trial(s) of other workers")
            waited = True
        time.sleep(WAIT_POLL_S)
        optuna.storages.fail_stale_trials(study)


def open_study(space: S.Space, storage: str, identity: str, worker: bool) -> optuna.Study:
    """Create the study or join it (``load_if_exists``): a re-run continues it, workers share it."""
    seed = S.worker_seed(space.seed, identity) if worker else space.seed
    study = optuna.create_study(study_name=space.name, storage=open_storage(storage), load_if_exists=True,
                                sampler=S.build_sampler(space, seed), pruner=S.build_pruner(space),
                                direction=space.direction)
    if study.direction.name.lower() != space.direction:
        raise UserError(f"study {space.name!r} in {mask_secrets(storage)} was created with direction "
                        f"{study.direction.name.lower()}; use that direction or another name:")
    study.set_user_attr("metric", space.metric)
    return study


def run_sweep(config, space_path, overrides: list[str] | None = None, *, trials: int | None = None,
              timeout: float | None = None, storage: str | None = None, worker: bool = False, confirm: int = 0,
              seeds: int = 5, log=log_stderr) -> SweepResult:
    """Search CONFIG's hyperparameters over SPACE.yaml; trials are real runs in <out_dir>/<name>/trial-<k>/.

    ``storage``: an optuna database URL (default $VISIONLAB_STORAGE, else sqlite in the sweep folder; shown with its
    password masked); ``worker``: only run trials of the shared study (no report); ``confirm``: rerun the top
    ``confirm`` configs over ``seeds`` seeds."""
    from visionlab.experiments import sweep_report as R

    optuna.logging.set_verbosity(optuna.logging.ERROR)     # our own one line per trial instead
    space = S.load_space(space_path, trials, timeout)
    base = _base_config(config, list(overrides or []))
    S.resolve_objective(space, base["task"])
    S.check_params(space, base)
    sweep_dir = Path(base["out_dir"]) / space.name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    storage = storage_url(storage, sweep_dir)
    identity = worker_identity()
    study = open_study(space, storage, identity, worker)
    objective = _Objective(space, base, sweep_dir, space.budget(), identity)
    log(f"sweep {space.name}: {space.strategy}, budget {space.budget() or 'none'} trials"
        f"{f', timeout {space.timeout:g} s' if space.timeout else ''}, {_count(study, *LIVE)} in the study; "
        f"{mask_secrets(storage)}")
    ran = run_trials(study, objective, space.timeout, wait=not worker)
    result = SweepResult(sweep_dir, ran)
    if worker:
        log(f"worker {identity}: ran {ran} trial(s); write the report with the same command without worker=true")
        return result
    result.rows, result.best, result.files = R.write_outputs(study, space, sweep_dir, base["out_dir"])
    if confirm:
        result.confirm = R.confirm_top(study, space, sweep_dir, confirm, seeds, log)
        result.files += [sweep_dir / "confirm.json", sweep_dir / "confirm.md"]
    return result
