"""DDP scaling on this machine: one epoch of the seed MNIST CNN on full MNIST, one process (all cores as threads)
against `torchrun --nproc_per_node=2` (gloo, one thread per process), same global batch, same recipe.

    .venv/bin/python benchmarks/ddp_scaling.py
Last line: RESULT speedup=<x> one_proc_img_s=<y> two_proc_img_s=<z> acc_one=<a> acc_two=<b>
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import DATA, ROOT, machine_peak, run_efficiency

ARGS = ["data.name=mnist", "data.val_fraction=0", "data.rotation=13", "train.epochs=1", "train.batch_size=100",
        "optim.lr=0.00108", "train.progress=false", "train.tensorboard=false"]


def run(launcher: list[str], out: Path) -> dict:
    env = {**os.environ, "VISIONLAB_DATA": str(DATA), "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([*launcher, "-m", "visionlab", "train", *ARGS, f"out_dir={out}"], env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    return json.loads((Path(r.stdout.strip().splitlines()[-1]) / "summary.json").read_text())


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="vl-ddp-"))
    peak = machine_peak()                  # all cores: what both arms share
    one = run([sys.executable], tmp / "one")
    two = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], tmp / "two")
    r1, r2 = one["timings"]["train_img_per_s"], two["timings"]["train_img_per_s"]
    print(f"1 process x {os.cpu_count()} threads: {r1:.0f} img/s, test acc {one['test/acc']:.4f}; "
          f"{run_efficiency(one, peak)}")
    print(f"2 processes x 1 thread (DDP, gloo):   {r2:.0f} img/s, test acc {two['test/acc']:.4f}; "
          f"{run_efficiency(two, peak)}")
    print(f"RESULT speedup={r2 / r1:.2f} one_proc_img_s={r1:.0f} two_proc_img_s={r2:.0f} "
          f"acc_one={one['test/acc']:.4f} acc_two={two['test/acc']:.4f}")


if __name__ == "__main__":
    main()
