"""The training loop: task-agnostic. Mixed precision, clipping, EMA, checkpoints, early stopping, logging."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .checkpoint import save_checkpoint
from .distributed import Dist, gather, sum_dict, unwrap
from .logging import EpochLogger, progress
from .precision import autocast


@dataclass
class FitState:
    """Where training stands; saved (as JSON) in every last.* checkpoint so a killed run resumes exactly."""

    epoch: int = 0                   # epoch in progress (0-based)
    batch: int = 0                   # next batch within that epoch
    step: int = 0                    # optimizer steps taken
    best: float | None = None        # best value of the primary metric
    best_epoch: int = -1
    bad_epochs: int = 0              # epochs since the best, for early stopping
    train_s: float = 0.0             # seconds spent in training batches
    step_s: float = 0.0              # of which inside the model step (forward, backward, optimizer), not the data
    running: dict = field(default_factory=dict)   # sums over the current epoch so far
    history: list = field(default_factory=list)   # one row per finished epoch
    finished: bool = False


@dataclass
class FitContext:
    """Everything fit() needs besides the task and data."""

    optimizers: dict                 # name -> torch.optim.Optimizer ("main" unless the task declares several)
    schedulers: dict                 # name -> LR scheduler, stepped once per optimizer step
    cfg: object                      # TrainConfig
    run_dir: Path
    device: torch.device
    precision: str                   # fp32 | bf16 | fp16
    sidecar: dict                    # classes, preprocessing, config, versions: travels with each checkpoint
    generators: dict                 # name -> torch.Generator whose state must survive a resume
    ema: torch.nn.Module | None = None
    scaler: torch.amp.GradScaler | None = None
    # called as cb(state, row) on rank 0 after each epoch's checkpoint and logs; may raise to stop (a pruned trial)
    on_epoch_end: list = field(default_factory=list)
    dist: Dist = field(default_factory=Dist)


def _to(batch, device):
    return [t.to(device, non_blocking=True) if torch.is_tensor(t) else t for t in batch]


@contextmanager
def using_model(task, model):
    """``task.model`` is ``model`` (in eval mode) inside the block, the original again afterwards."""
    original = task.model
    task.model = model
    model.eval()
    try:
        yield
    finally:
        task.model = original


def evaluated_model(task, ctx: FitContext):
    """The model that validation, the best checkpoint and pictures of progress use: the EMA when there is one."""
    return ctx.ema.module if ctx.ema is not None else unwrap(task.model)


def evaluate(task, loader, device, precision: str, collect_examples: bool = False, model=None) -> dict:
    """Run ``task.validation_step`` over ``loader`` (optionally with another model, e.g. the EMA) -> metrics.
    ``compute_metrics`` runs with that model too and under the same precision: a generative task samples there."""
    with using_model(task, model if model is not None else task.model), torch.no_grad(), \
            autocast(device, precision):
        task.reset_metrics(collect_examples=collect_examples)
        for batch in loader:
            task.validation_step(_to(batch, device))
        return task.compute_metrics()


def _rng_states(ctx: FitContext) -> dict:
    rng = {"torch": torch.get_rng_state()}
    rng.update({f"gen_{k}": g.get_state() for k, g in ctx.generators.items()})
    if ctx.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(ctx.device)
    return rng


def train_state(task, ctx: FitContext, state: FitState) -> dict:
    """Everything besides the weights that an exact resume needs; RNG states of every rank (a collective call)."""
    per_rank = gather(_rng_states(ctx), ctx.dist)
    rng = {f"r{r}.{k}": v for r, states in enumerate(per_rank) for k, v in states.items()}
    fit = asdict(state)
    if state.running:       # mid-epoch: store the sums over all ranks (rank 0 carries them on after a resume)
        fit["running"] = {**sum_dict(_counts(state.running), ctx.dist), **_clocks(state.running)}
    return {"optimizers": {k: o.state_dict() for k, o in ctx.optimizers.items()},
            "schedulers": {k: sc.state_dict() for k, sc in ctx.schedulers.items()}, "rng": rng,
            "ema": ctx.ema.state_dict() if ctx.ema is not None else None, "fit": fit, "world": ctx.dist.world,
            "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else None}


def restore(task, ctx: FitContext, ts: dict) -> FitState:
    """Restore optimizer, scheduler, EMA, loss-scaler and RNG states from a checkpoint's train_state; return the
    position."""
    optimizers = ts.get("optimizers") or {"main": ts["optimizer"]}       # runs saved before several optimizers
    schedulers = ts.get("schedulers") or {"main": ts["scheduler"]}
    for name, opt in ctx.optimizers.items():
        opt.load_state_dict(optimizers[name])
        ctx.schedulers[name].load_state_dict(schedulers[name])
    if ctx.ema is not None and ts.get("ema"):
        ctx.ema.load_state_dict(ts["ema"])
    if ctx.scaler is not None and ts.get("scaler"):     # fp16: the loss scale it had reached
        ctx.scaler.load_state_dict(ts["scaler"])
    if ts.get("world", 1) != ctx.dist.world:
        from ..utils import UserError

        raise UserError(f"this run was trained on {ts.get('world', 1)} process(es); resume it with the same number "
                        f"(torchrun --nproc_per_node={ts.get('world', 1)}), not {ctx.dist.world}")
    rng = {k.split(".", 1)[1]: v for k, v in ts["rng"].items() if k.startswith(f"r{ctx.dist.rank}.")}
    torch.set_rng_state(rng["torch"])
    for k, g in ctx.generators.items():
        g.set_state(rng[f"gen_{k}"])
    if ctx.device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], ctx.device)
    state = FitState(**ts["fit"])
    if state.running and not ctx.dist.main:     # rank 0 holds the epoch's sums so far; the others restart at 0
        state.running = {k: (v if k in CLOCKS else 0.0) for k, v in state.running.items()}
    return state


def _save_last(task, ctx: FitContext, state: FitState) -> None:
    ts = train_state(task, ctx, state)             # every rank takes part in gathering the RNG states
    if ctx.dist.main:
        save_checkpoint(ctx.run_dir / "checkpoints" / "last.safetensors", unwrap(task.model).state_dict(),
                        {**ctx.sidecar, "epoch": state.epoch, "step": state.step}, ts)


def _save_best(task, ctx: FitContext, state: FitState) -> None:
    if not ctx.dist.main:
        return
    save_checkpoint(ctx.run_dir / "checkpoints" / "best.safetensors", evaluated_model(task, ctx).state_dict(),
                    {**ctx.sidecar, "epoch": state.best_epoch, "best": state.best})


def _train_step(task, ctx: FitContext, batch) -> dict:
    """One batch: the task's step under autocast; unless the task optimizes manually (it then stepped its own
    optimizers), backward, clipping and the step of the single optimizer here. Schedules and EMA follow."""
    if task.manual_optimization:
        with autocast(ctx.device, ctx.precision):
            out = task.training_step(batch)
        if ctx.scaler is not None:          # the task stepped through it (Task.step_optimizer): one update a batch
            ctx.scaler.update()
    else:
        optimizer = next(iter(ctx.optimizers.values()))
        with autocast(ctx.device, ctx.precision):
            out = task.training_step(batch)
        loss = out["loss"]
        optimizer.zero_grad(set_to_none=True)
        if ctx.scaler is not None:
            ctx.scaler.scale(loss).backward()
            ctx.scaler.unscale_(optimizer)
        else:
            loss.backward()
        if ctx.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(task.model.parameters(), ctx.cfg.grad_clip)
        if ctx.scaler is not None:
            ctx.scaler.step(optimizer)
            ctx.scaler.update()
        else:
            optimizer.step()
    for scheduler in ctx.schedulers.values():
        scheduler.step()
    if ctx.ema is not None:
        ctx.ema.update_parameters(unwrap(task.model))
    return out


COUNT = "n:"        # run["n:<key>"]: images of the steps that returned <key> (a phase may log keys others do not)
TIMING_KEYS = ("epoch_s", "step_s", "img_per_s")    # the history columns that differ between identical runs
CLOCKS = ("seconds", "step_seconds")     # rank 0's clocks in an epoch's running totals; the rest sum over ranks


def _counts(run: dict) -> dict:
    return {k: v for k, v in run.items() if k not in CLOCKS}


def _clocks(run: dict) -> dict:
    return {k: v for k, v in run.items() if k in CLOCKS}


def _add_scalars(run: dict, out: dict, n: int) -> None:
    """Sum every scalar the step returned (weighted by the batch size) into the epoch's running totals, with the
    number of images behind each key, so a key logged by only some steps is averaged over those steps."""
    for k, v in out.items():
        if torch.is_tensor(v):
            if v.numel() != 1:
                continue
            v = v.detach().item()
        if isinstance(v, (int, float)):
            run[k] = run.get(k, 0.0) + float(v) * n
            run[COUNT + k] = run.get(COUNT + k, 0.0) + n


def _means(run: dict) -> dict:
    """train/<key> averages of an epoch's running totals (runs saved before per-key counts divide by all images)."""
    skip = {"n", *CLOCKS}
    return {f"train/{k}": v / max(run.get(COUNT + k, run["n"]), 1) for k, v in run.items()
            if k not in skip and not k.startswith(COUNT)}


def _run_epoch(task, train_loader, ctx: FitContext, state: FitState) -> None:
    task.model.train()
    task.on_train_epoch_start(state.epoch)      # epoch-dependent settings (unfreezing, progressive size)
    train_loader.set_position(state.epoch, state.batch)
    run = state.running or {"n": 0, "seconds": 0.0}
    run.setdefault("step_seconds", 0.0)          # time inside the step; the rest of "seconds" is the data path
    bar = progress(train_loader, state, ctx.cfg, enabled=ctx.dist.main)
    t0 = time.perf_counter()
    for batch in bar:
        batch = _to(batch, ctx.device)
        t_step = time.perf_counter()
        n = len(batch[0])                       # images come first in every task's batch
        task.global_step = state.step           # schedules inside a task (warm-ups, annealing) read it
        out = _train_step(task, ctx, batch)
        run["n"] += n
        _add_scalars(run, out, n)               # .item() waits for the device: the step's kernels are counted
        run["step_seconds"] += time.perf_counter() - t_step
        state.batch += 1
        state.step += 1
        if state.batch % 25 == 0:
            secs = run["seconds"] + time.perf_counter() - t0
            shown = {k: f"{run[k] / run['n']:.4f}" for k in list(out)[:3] if k in run}
            bar.set_postfix(**shown, img_s=f"{run['n'] / max(secs, 1e-9):.0f}", refresh=False)
        if ctx.cfg.checkpoint_every and state.step % ctx.cfg.checkpoint_every == 0:
            state.running = {**run, "seconds": run["seconds"] + time.perf_counter() - t0}
            _save_last(task, ctx, state)
    bar.close()
    run["seconds"] += time.perf_counter() - t0
    state.running = run


def fit(task, train_loader, val_loader, ctx: FitContext, state: FitState | None = None) -> FitState:
    """Train ``task.model`` for ``cfg.epochs`` epochs from ``state`` (a fresh start when None)."""
    state = state or FitState()
    metric, mode = task.primary_metric
    main = ctx.dist.main
    logger = EpochLogger(ctx.run_dir, ctx.cfg.tensorboard and main, purge_step=state.epoch) if main else None
    while state.epoch < ctx.cfg.epochs and not state.finished:
        _run_epoch(task, train_loader, ctx, state)
        # rank 0's clocks; sums of samples and losses over all ranks
        run = {**sum_dict(_counts(state.running), ctx.dist), **_clocks(state.running)}
        lr = next(iter(ctx.optimizers.values())).param_groups[0]["lr"]
        row = {"epoch": state.epoch + 1, "step": state.step, "lr": lr}
        row.update(_means(run))
        if val_loader is not None:        # every rank evaluates the whole split: same model, same numbers
            vm = evaluate(task, val_loader, ctx.device, ctx.precision, model=evaluated_model(task, ctx))
            row.update({f"val/{k}": v for k, v in vm.items() if isinstance(v, (int, float))})
        row.update({"epoch_s": run["seconds"], "step_s": run["step_seconds"],
                    "img_per_s": run["n"] / max(run["seconds"], 1e-9)})
        state.train_s += run["seconds"]
        state.step_s += run["step_seconds"]
        state.history.append(row)
        value = row.get(metric)
        improved = (not task.selects_best or value is None or state.best is None
                    or (value > state.best if mode == "max" else value < state.best))
        if improved:       # no validation split, or a task reporting its final model: the newest epoch counts
            state.best, state.best_epoch, state.bad_epochs = value, state.epoch + 1, 0
        else:
            state.bad_epochs += 1
        state.epoch, state.batch, state.running = state.epoch + 1, 0, {}
        if ctx.cfg.early_stop and state.bad_epochs >= ctx.cfg.early_stop:
            state.finished = True
        if improved:
            _save_best(task, ctx, state)
        _save_last(task, ctx, state)          # the checkpoint first, then the logs derived from it
        if main:
            logger.log(state.history, show=ctx.cfg.progress)
            for cb in ctx.on_epoch_end:
                cb(state, row)
    if main:
        logger.close()
    return state
