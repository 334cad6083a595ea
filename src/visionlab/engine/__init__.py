"""Task-agnostic engine: the loop, optimizers and schedules, checkpoints, precision, logs, run directories."""
from .checkpoint import load_checkpoint, save_checkpoint
from .loop import FitContext, FitState, evaluate, evaluated_model, fit, restore, using_model
from .optim import build_optimizer, build_scheduler
from .precision import autocast, resolve_precision

__all__ = ["fit", "evaluate", "evaluated_model", "using_model", "restore", "FitContext", "FitState",
           "build_optimizer", "build_scheduler", "save_checkpoint", "load_checkpoint", "autocast", "resolve_precision"]
