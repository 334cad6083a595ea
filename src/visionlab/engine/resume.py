"""Resuming a run: which folder, which config (the run's own, with the overrides that are safe on resume), and the
checkpoint's weights and loop state put back. Knows configs and run folders, never a task's details."""
from __future__ import annotations

from pathlib import Path

from .. import config as C
from ..utils import ConfigError, UserError, atomic_write_text
from .checkpoint import load_checkpoint
from .loop import FitContext, restore
from .rundir import append_resume, latest_run_dir


def find_resume_dir(cfg: C.Config) -> Path | None:
    """The run folder ``resume=`` names (``true``: the newest run of this name), or None without resume."""
    if not cfg.resume or cfg.resume.lower() in ("false", "no", "0"):
        return None
    if cfg.resume.lower() in ("true", "yes", "1"):
        found = latest_run_dir(cfg.out_dir, cfg.name or "default")
        if found is None:
            raise UserError(f"resume=true: no run named {cfg.name or 'default'!r} with a last checkpoint in "
                            f"{cfg.out_dir}/; pass resume=RUN_DIR")
        return found            # may be running: the run's lock refuses it with the holder's pid
    path = Path(cfg.resume)
    if not (path / "checkpoints" / "last.safetensors").is_file():
        raise UserError(f"resume={path}: no checkpoints/last.safetensors there; was the run started? "
                        "(start it without resume, or pass the run directory printed by `visionlab train`)")
    return path


# Keys a resume may change: how long and how visibly it trains, and where/how the same data is read.
# Everything else (model, data, optimizer, schedule shape, seed) would make the run a different run.
SAFE_ON_RESUME = ("train.epochs", "train.early_stop", "train.threads", "train.progress", "train.tensorboard",
                  "train.checkpoint_every", "data.num_workers", "data.root", "data.cache_dir")
RESUME_LOOKUP = ("resume", "name", "out_dir")       # only find the run to resume


def flat_keys(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + str(k): v})
    return out


def asked_keys(cfg, overrides) -> set[str] | None:
    """The config keys the caller chose (None: all of them, for a Config object); the embedded default job's
    values are not a choice, so ``train resume=RUN`` alone changes nothing."""
    if isinstance(cfg, C.Config):
        return None
    keys = set(flat_keys(C.parse_overrides(list(overrides or []))))
    if isinstance(cfg, dict):
        keys |= set(flat_keys(cfg))
    elif cfg is not None:
        raw = C.read_yaml(cfg, "config file not found: {path} (see configs/ for examples)")
        keys |= set(flat_keys(raw)) if isinstance(raw, dict) else set()
    return keys


def resume_config(resume_dir: Path, cfg: C.Config, asked: set[str] | None) -> tuple[C.Config, dict]:
    """The run's saved config with the asked changes that are safe on resume, and {key: [old, new]};
    ConfigError (exit 2) naming every other key that differs."""
    saved = C.to_dict(C.load_config(resume_dir / "config.yaml"))
    old, new = flat_keys(saved), flat_keys(C.to_dict(cfg))
    keys = sorted(k for k in (new if asked is None else asked)
                  if k not in RESUME_LOOKUP and k in new and old.get(k) != new[k])
    unsafe = [k for k in keys if k not in SAFE_ON_RESUME]
    if unsafe:
        shown = ", ".join(f"{k} ({old.get(k)!r} in the run, {new[k]!r} asked)" for k in unsafe)
        raise ConfigError(f"resume={resume_dir}: cannot change {shown} when resuming; a resume may change only "
                          f"{', '.join(SAFE_ON_RESUME)}. Drop those overrides, or start a new run without resume=")
    for k in keys:
        C.set_key(saved, k, new[k])
    return C.from_dict(saved), {k: [old.get(k), new[k]] for k in keys}


def restore_run(task, ctx: FitContext, cfg: C.Config, changes: dict):
    """Load the last checkpoint into the task and loop; on rank 0 record the resume (config.yaml, resumes.jsonl)."""
    run_dir = ctx.run_dir
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.safetensors", with_train_state=True)
    task.model.load_state_dict(ckpt["weights"])
    state = restore(task, ctx, ckpt["train_state"])
    if "train.early_stop" in changes:         # a new patience decides afresh whether the run had stopped early
        state.finished = bool(cfg.train.early_stop) and state.bad_epochs >= cfg.train.early_stop
    if ctx.dist.main:
        if changes:                           # the run folder keeps describing what was trained
            atomic_write_text(run_dir / "config.yaml", C.dump_yaml(cfg))
        append_resume(run_dir, {"epoch": state.epoch, "batch": state.batch, "overrides": changes,
                                "device": str(ctx.device), "precision": ctx.precision})
        shown = "".join(f", {k}: {a} -> {b}" for k, (a, b) in changes.items())
        print(f"resuming {run_dir} at epoch {state.epoch + 1}, batch {state.batch}{shown}", flush=True)
    return state
