"""THE PIPELINE: train(cfg) -> run directory; evaluate(run_dir) scores it again. Reading a run back (load_run,
predict, generate) is in run/loaded.py, re-exported here: `from visionlab.run import train, load_run, predict`."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .. import config as C
from ..data import build_splits
from ..data.split import bootstrap
from ..data.base import DataInfo
from ..data.loaders import DomainBalancedLoader, StreamLoader, build_loader
from ..engine import (FitContext, build_optimizer, build_scheduler, evaluate as run_eval, evaluated_model, fit,
                      load_checkpoint, resolve_precision, using_model)
from ..engine import distributed
from ..engine.averaging import build_averaging
from ..engine.machine import keep_freed_memory
from ..engine import lock as run_lock
from ..engine.resume import asked_keys, find_resume_dir, restore_run, resume_config
from ..engine.rundir import check_name, new_run_dir, versions, write_env, write_status
from ..models import count_params
from ..tasks import default_image_size
from ..utils import ConfigError, UserError, atomic_write_text, resolve_device, seed_everything, write_json, write_png
from .loaded import (EVAL_KEYS, RUNTIME_KEYS, LoadedRun, add_generated, build_task, eval_overrides, generate,
                     load_run, override_key, predict, predict_batch)

__all__ = ["RunResult", "train", "evaluate", "test_key", "EVAL_KEYS", "RUNTIME_KEYS", "LoadedRun", "load_run",
           "eval_overrides", "predict", "predict_batch", "generate", "add_generated"]


@dataclass
class RunResult:
    run_dir: Path
    summary: dict

    @property
    def score(self) -> float:
        """The task's primary metric on the test split (test/acc for classification, test/miou for segmentation)."""
        return self.summary[test_key(self.summary["primary_metric"])]


def test_key(primary_metric: str) -> str:
    """val/<m> -> test/<m>: the test-split figure of a primary metric."""
    return "test/" + primary_metric.split("/", 1)[-1]


def train(cfg: C.Config | dict | str | Path | None = None, overrides: list[str] | None = None,
          on_epoch_end: list | None = None) -> RunResult:
    """Train one run and return its directory and test summary. ``cfg``: a Config, a dict, a YAML path or None.

    ``on_epoch_end``: callables cb(state, row) run after each epoch (e.g. a sweep's pruner); one may raise to stop.
    The human report (L4, views/report.py) is written by the public ``visionlab.train``, not here."""
    asked = asked_keys(cfg, overrides)
    cfg = C.as_config(cfg, overrides)
    check_name(cfg.name or "default")
    resume_dir = find_resume_dir(cfg)
    changes = {}
    if resume_dir is not None:                 # the run's own config, with the overrides that are safe on resume
        cfg, changes = resume_config(resume_dir, cfg, asked)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    keep_freed_memory()                         # the next step reuses what this one frees (engine/machine.py)
    dist, device = distributed.setup(resolve_device(cfg.train.device))
    precision = resolve_precision(cfg.train.precision, device)
    run_dir, lock = _open_run_dir(cfg, resume_dir) if dist.main else (None, None)
    run_dir = distributed.broadcast(run_dir, dist)
    with _run_status(run_dir, lock):
        if dist.main and resume_dir is None:
            write_env(run_dir, device, precision)
        seed_everything(cfg.seed)

        splits = _build_data(cfg, run_dir if dist.main else None, new_run=resume_dir is None)
        gen = torch.Generator().manual_seed(cfg.seed + 1 + 1000 * dist.rank)   # augmentation; saved in checkpoints
        task = _build_task(cfg, splits, gen, dist, device)
        info = task.info                        # a pretrained backbone brings its own mean/std
        train_loader = _train_loader(splits, task, cfg, info, dist)
        val_loader = _eval_loader(splits.val, cfg, info, task.uses_domains)
        optimizers = {k: build_optimizer(g, cfg.optim) for k, g in task.optimizer_groups(cfg.optim).items()}
        schedulers = {k: build_scheduler(o, cfg.optim, cfg.train.epochs, len(train_loader))
                      for k, o in optimizers.items()}
        task.optimizers = optimizers            # a task that optimizes manually steps them itself
        ctx = FitContext(optimizers, schedulers, cfg.train, run_dir, device, precision, _sidecar(cfg, info),
                         {"augment": gen},
                         ema=build_averaging(task.model, cfg.train, cfg.train.epochs * len(train_loader)),
                         scaler=torch.amp.GradScaler("cuda") if precision == "fp16" else None,
                         on_epoch_end=list(on_epoch_end or []), dist=dist)
        task.scaler = ctx.scaler                # fp16: a task that optimizes manually scales its losses with it
        if dist.main:
            ctx.on_epoch_end.insert(0, _progress_pictures(task, ctx, run_dir))
        state = None
        if resume_dir is not None:
            state = restore_run(task, ctx, cfg, changes)
        task.model = distributed.wrap(task.model, dist, device)
        state = fit(task, train_loader, val_loader, ctx, state)
        task.model = distributed.unwrap(task.model)
        if not dist.main:           # rank 0 evaluates and writes the summary
            distributed.cleanup(dist)
            return RunResult(run_dir, {})

        summary = _test_summary(task, state, splits, cfg, run_dir, device, precision)
        write_json(run_dir / "summary.json", summary)
        write_status(run_dir, "finished")
    distributed.cleanup(dist)
    return RunResult(run_dir, summary)


def _build_data(cfg: C.Config, run_dir: Path | None, new_run: bool):
    """The run's splits, with generated or bootstrapped training data where the config asks; the main process
    (``run_dir`` given) writes the data reports, and a new run's config.yaml again when the data chose the size."""
    size_asked = cfg.data.image_size
    splits = build_splits(cfg.data, default_size=default_image_size(cfg))
    if run_dir is not None and new_run and cfg.data.image_size != size_asked:
        atomic_write_text(run_dir / "config.yaml", C.dump_yaml(cfg))     # the size the data chose
    if cfg.data.synthetic:                  # generative augmentation: samples of a conditional model
        splits.train = add_generated(splits.train, splits.info(), cfg)
    if cfg.data.bootstrap:                  # a bagging member: n draws with replacement from the train split
        splits.train = bootstrap(splits.train, cfg.seed)
    if run_dir is not None:
        _write_data_reports(splits, run_dir)
    return splits


def _build_task(cfg: C.Config, splits, gen: torch.Generator, dist, device):
    """The configured task on ``device`` (loaded.build_task), refused under data parallelism when it steps its own
    optimizers."""
    task = build_task(cfg, splits.info(), gen, device)
    if dist.enabled and task.manual_optimization:
        # the task steps its own optimizers on the unwrapped networks, which DDP would not synchronise
        raise ConfigError(f"task={cfg.task} steps several optimizers itself (dcgan, ssl.method=mpl), which "
                          "data parallelism does not support yet: train it in one process (without torchrun)")
    return task


def evaluate(run_dir: str | Path, split: str = "test", overrides: list[str] | None = None, tag: str = "") -> dict:
    """Re-evaluate the best checkpoint of a run on one split; writes eval_<split>.json and returns the metrics.

    ``overrides`` (EVAL_KEYS and the task's own section) evaluate under other settings, e.g. at the native resolution:
    ``["data.image_size=0", "segmentation.tta_scales=[0.6667]"]`` runs the model at 2/3 scale and scores its upsampled
    logits against the native masks. The figures then go to eval_<split>-<tag>.json as <split>-<tag>/<metric>, with
    the overrides recorded, so the report shows them beside the training-time test column."""
    if split not in ("train", "val", "test"):
        raise UserError(f"split must be train, val or test, got {split!r}")
    if tag and not tag.replace("-", "").replace("_", "").isalnum():
        raise UserError(f"tag={tag!r}: use letters, digits, - and _ (it names eval_{split}-<tag>.json)")
    run = load_run(run_dir, overrides=overrides)
    if run.cfg.train.threads:
        torch.set_num_threads(run.cfg.train.threads)
    keep_freed_memory()                         # big eval batches reuse their memory, as in training
    splits = build_splits(run.cfg.data)
    part = {"train": splits.train, "val": splits.val, "test": splits.test}[split]
    if part is None:
        raise UserError(f"{run.run_dir} has no {split} split (data.val_fraction was 0?)")
    info = run.info
    if overrides:           # decoding follows the data being evaluated; classes and normalisation stay the run's
        new = splits.info()
        info = replace(info, image_size=new.image_size, preprocess=new.preprocess)
    metrics = _evaluate_split(run.task, run.run_dir, part, run.cfg, info, run.device, run.precision,
                              keep_errors=False)
    changed = [o for o in overrides or [] if override_key(o) not in RUNTIME_KEYS]
    name = f"{split}-{tag or 'custom'}" if changed or tag else split
    out = {f"{name}/{k}": v for k, v in metrics.items()}
    if changed:
        out["overrides"] = changed
    write_json(run.run_dir / f"eval_{name}.json", out)
    return out


# ---- helpers -----------------------------------------------------------------------------------------------------


def _test_summary(task, state, splits, cfg: C.Config, run_dir: Path, device, precision: str) -> dict:
    """Evaluate the best checkpoint on the test split; the summary.json of the run. Numbers become test/<key>,
    lists (per-class tables, confusion matrices) stay under their own key."""
    info, (metric, mode) = task.info, task.primary_metric
    summary = {"task": cfg.task, "primary_metric": metric, "mode": mode, "dataset": cfg.data.name,
               "model": cfg.model.name, "classes": info.classes, "params": count_params(task.model),
               "flops_per_image": task.flops_per_image(), "train_flops_per_image": task.train_flops_per_image(),
               "best_epoch": state.best_epoch, "epochs_run": state.epoch, f"best/{metric}": state.best,
               "device": str(device), "precision": precision, "data_source": splits.source,
               "train_size": len(splits.train), "val_size": len(splits.val) if splits.val else 0,
               "test_size": len(splits.test), "unlabeled_size": len(splits.unlabeled) if splits.unlabeled else 0}
    t0 = time.perf_counter()
    metrics = _evaluate_split(task, run_dir, splits.test, cfg, info, device, precision, keep_errors=True)
    rates = [r["img_per_s"] for r in state.history]
    summary.update({f"test/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    summary.update({k: v for k, v in metrics.items() if not isinstance(v, (int, float))})
    summary.update({"split": "test",
                    "timings": {"train_s": state.train_s, "step_s": state.step_s,
                                # the data path's share: loading, augmentation, logging, checkpoints
                                "outside_step_fraction": (1 - state.step_s / state.train_s) if state.train_s else None,
                                "eval_s": time.perf_counter() - t0,
                                "train_img_per_s": float(np.mean(rates)) if rates else None}})
    return summary


def _open_run_dir(cfg: C.Config, resume_dir: Path | None) -> tuple[Path, run_lock.RunLock]:
    """The resumed run's folder, or a fresh one with the resolved config written before anything can fail;
    locked for this process (UserError naming the holder's pid when another one runs it)."""
    if resume_dir is not None:
        return resume_dir, run_lock.acquire(resume_dir)
    run_dir = new_run_dir(cfg.out_dir, cfg.name or "default")
    lock = run_lock.acquire(run_dir)
    atomic_write_text(run_dir / "config.yaml", C.dump_yaml(cfg))
    return run_dir, lock


@contextmanager
def _run_status(run_dir: Path | None, lock: run_lock.RunLock | None):
    """status.json running for the body, failed with the reason when it raises; the lock is released at the end.
    Only rank 0 (the one holding the lock) writes."""
    if lock is None:
        yield
        return
    try:
        write_status(run_dir, "running")
        yield
    except KeyboardInterrupt:
        write_status(run_dir, "failed", "interrupted")
        raise
    except BaseException as e:
        write_status(run_dir, "failed", str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}")
        raise
    finally:
        lock.release()


def _sidecar(cfg: C.Config, info: DataInfo) -> dict:
    return {"task": cfg.task, "model": cfg.model.name, "classes": info.classes, "data": asdict(info),
            "config": C.to_dict(cfg), "versions": versions()}


def _train_loader(splits, task, cfg: C.Config, info: DataInfo, dist):
    """Epochs over the train split, or (train.iterations, or a task with several streams) fixed-size batches from
    each of the task's streams: "train" (the labelled images) and "unlabeled" (the few-label protocol's rest)."""
    t = cfg.train
    if "unlabeled" in task.streams and splits.unlabeled is None:
        raise ConfigError(f"task={cfg.task} learns from unlabelled images: choose the labelled few with "
                          "data.labels_per_class=N, data.labels_total=N or data.labeled_indices=RUN_DIR (the rest "
                          "of the train split becomes the unlabelled stream)")
    if cfg.data.alternate_flip and (cfg.task != "classification" or not cfg.data.hflip or t.iterations):
        raise ConfigError(f"data.alternate_flip=true with task={cfg.task}, data.hflip={cfg.data.hflip}, "
                          f"train.iterations={t.iterations}: alternating flips are for task=classification with "
                          "data.hflip=true, counted in epochs (the loader mirrors the images by epoch; masks and "
                          "boxes would not follow)")
    if cfg.data.domain_balanced:
        if not task.uses_domains or t.iterations or list(task.streams) != ["train"]:
            raise ConfigError(f"data.domain_balanced=true needs a task that reads domains (task=dg), counted in "
                              f"epochs; task={cfg.task} " + ("with train.iterations" if t.iterations else "does not"))
        return DomainBalancedLoader(splits.train, t.batch_size, cfg.seed, dist.rank, dist.world)
    if list(task.streams) == ["train"] and not t.iterations:
        try:
            return build_loader(splits.train, t.batch_size, True, cfg.seed, info.preprocess, cfg.data.num_workers,
                                dist.rank, dist.world, task.uses_domains, cfg.data.alternate_flip)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if not t.iterations:
        raise ConfigError(f"task={cfg.task} counts training in steps: set train.iterations=N (and train.eval_every=M "
                          "steps between evaluations)")
    sets = {"train": splits.train, "unlabeled": splits.unlabeled}
    try:
        return StreamLoader([(sets[name], max(1, round(t.batch_size * ratio))) for name, ratio in task.streams.items()],
                            t.eval_every, cfg.seed, dist.rank, dist.world)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _eval_loader(split, cfg: C.Config, info: DataInfo, with_domains: bool = False):
    if split is None:
        return None
    return build_loader(split, cfg.train.eval_batch_size, False, cfg.seed, info.preprocess, cfg.data.num_workers,
                        with_domains=with_domains)


def _evaluate_split(task, run_dir, split, cfg, info, device, precision, keep_errors: bool) -> dict:
    if keep_errors:
        best = load_checkpoint(Path(run_dir) / "checkpoints" / "best.safetensors")
        task.model.load_state_dict(best["weights"])
    task.full_evaluation = True             # the figures for the record (e.g. FID on fid.samples images)
    try:
        metrics = run_eval(task, _eval_loader(split, cfg, info, task.uses_domains), device, precision,
                           collect_examples=keep_errors)
    finally:
        task.full_evaluation = False
    if keep_errors:
        _write_errors(task, split, run_dir)
    return metrics


def _progress_pictures(task, ctx: FitContext, run_dir: Path):
    """An epoch-end callback writing the task's pictures of progress (``epoch_images``) from the evaluated model
    (the EMA when there is one) to samples/<name>-epochNNN.png."""
    def write(state, row) -> None:
        with using_model(task, evaluated_model(task, ctx)), torch.no_grad():
            pictures = task.epoch_images()
        for name, image in pictures.items():
            write_png(run_dir / "samples" / f"{name}-epoch{state.epoch:03d}.png", image)
    return write


def _write_errors(task, split, run_dir) -> None:
    ex = task.examples()
    if ex is None:
        return
    from ..utils import write_npz         # atomic: a full disk keeps the previous errors.npz readable

    names = [split.names[i] if split.names else f"test[{i}]" for i in ex["index"]]
    write_npz(Path(run_dir) / "errors.npz", **ex, names=np.array(names, dtype=str))


def _write_data_reports(splits, run_dir: Path) -> None:
    from ..data.check import write_data_report
    from ..data.fewlabel import INDEX_FILE, write_indices
    from ..data.split import write_manifest

    write_data_report(splits, run_dir)
    if splits.labeled_index is not None:
        write_indices(run_dir / INDEX_FILE, splits.train, splits.labeled_index)
    if splits.manifest:
        write_manifest(splits.manifest, run_dir / "split_manifest.csv")
