"""Per-epoch logs: metrics.csv (rewritten from the history, so it always matches the checkpoint), TensorBoard, progress."""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from tqdm import tqdm

from ..utils import atomic_write_text

FIRST, LAST = ("epoch", "step", "lr"), ("epoch_s", "img_per_s")


def columns(history: list[dict]) -> list[str]:
    """Every key logged in any row (nothing dropped): epoch, step, lr, then train/* and val/* in the order they
    first appear, then the timing columns."""
    seen: dict[str, None] = {}
    for row in history:
        seen.update(dict.fromkeys(k for k in row if k not in FIRST + LAST))
    return [*FIRST, *seen, *LAST]


class EpochLogger:
    def __init__(self, run_dir: Path, tensorboard: bool, purge_step: int = 0):
        self.run_dir = Path(run_dir)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge_step or None)
            except ImportError:       # tensorboard is optional
                self.tb = None

    def log(self, history: list[dict], show: bool = False) -> None:
        buf = io.StringIO()
        cols = columns(history)
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for row in history:
            w.writerow({k: _fmt(row.get(k, "")) for k in cols})
        atomic_write_text(self.run_dir / "metrics.csv", buf.getvalue())
        if show and history:
            row = history[-1]
            parts = [f"{k} {v:.4f}" for k, v in row.items()
                     if k.startswith(("train/", "val/")) and isinstance(v, (int, float))][:6]
            print(f"epoch {row['epoch']}: " + "  ".join(parts) + f"  {row.get('img_per_s', 0):.0f} img/s",
                  file=sys.stderr, flush=True)
        if self.tb is not None and history:
            row = history[-1]
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def progress(loader, state, cfg, enabled: bool = True):
    return tqdm(loader, total=len(loader), initial=state.batch, desc=f"epoch {state.epoch + 1}/{cfg.epochs}",
                leave=False, disable=not (cfg.progress and enabled), file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
