"""Per-epoch logs: metrics.csv (rewritten from the history, so it always matches the checkpoint), TensorBoard, progress."""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from tqdm import tqdm

from ..utils import atomic_write_text

CSV_COLUMNS = ["epoch", "step", "lr", "train/loss", "train/acc", "val/loss", "val/acc", "epoch_s", "img_per_s"]


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
        w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for row in history:
            w.writerow({k: _fmt(row.get(k, "")) for k in CSV_COLUMNS})
        atomic_write_text(self.run_dir / "metrics.csv", buf.getvalue())
        if show and history:
            row = history[-1]
            parts = [f"{k} {row[k]:.4f}" for k in ("train/loss", "train/acc", "val/loss", "val/acc") if k in row]
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
