"""Task-agnostic engine: the loop, optimizers and schedules, checkpoints, precision, logs, run directories."""
from .checkpoint import load_checkpoint, save_checkpoint
from .loop import FitContext, FitState, evaluate, fit, restore
from .optim import build_optimizer, build_scheduler
from .precision import autocast, resolve_precision

__all__ = ["fit", "evaluate", "restore", "FitContext", "FitState", "build_optimizer", "build_scheduler",
           "save_checkpoint", "load_checkpoint", "autocast", "resolve_precision"]
