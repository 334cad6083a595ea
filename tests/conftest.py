"""Shared fixtures: where the real data lies, a scratch run folder, and a CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from visionlab.engine.loop import TIMING_KEYS

if os.environ.get("PYTEST_XDIST_WORKER"):     # pytest -n N: one thread per worker (two OpenMP threads per process
    os.environ.setdefault("OMP_NUM_THREADS", "1")   # on two shared cores run many times slower); subprocesses inherit it

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("VISIONLAB_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "mnist").is_dir():
        pytest.fail(f"real data not found at {DATA}; set VISIONLAB_DATA to the shared data folder")
    return DATA


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None,
            prefix: list[str] | None = None, python: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m visionlab ARGS` in a subprocess, as a user would. ``prefix`` wraps the command (unshare);
    ``python`` replaces the interpreter (a torchrun launcher)."""
    full_env = {**os.environ, "VISIONLAB_DATA": str(DATA), **(env or {})}
    cmd = (prefix or []) + (python or [sys.executable]) + ["-m", "visionlab", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.fixture
def cli():
    return run_cli


def metrics_rows(run_dir: Path) -> list[dict]:
    """metrics.csv rows without the timing columns: what two equivalent runs must share exactly."""
    import csv

    with (Path(run_dir) / "metrics.csv").open() as f:
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in csv.DictReader(f)]


def last_checkpoint_step(run_dir: Path) -> int:
    """The optimizer step of the run's last checkpoint (its JSON sidecar), -1 while there is none."""
    import json

    try:
        return json.loads((Path(run_dir) / "checkpoints" / "last.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return -1


def kill_at_checkpoint(args: list[str], out: Path, name: str, min_step: int, python: list[str] | None = None,
                       timeout: float = 300) -> Path:
    """Start `visionlab train ARGS out_dir=OUT name=NAME` and SIGKILL it, with any workers it started (torchrun), as
    soon as its last checkpoint reaches ``min_step``; the run directory it left behind."""
    import signal
    import time

    env = {**os.environ, "VISIONLAB_DATA": str(DATA)}
    proc = subprocess.Popen([*(python or [sys.executable]), "-m", "visionlab", "train", *args, f"out_dir={out}",
                             f"name={name}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    run_dir = Path(out) / name
    deadline = time.time() + timeout
    while last_checkpoint_step(run_dir) < min_step and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    try:
        os.killpg(proc.pid, signal.SIGKILL)          # the process group: torchrun and its workers at once
    except ProcessLookupError:                       # it had already ended: the step check below says so
        pass
    proc.wait()
    return run_dir


def shared_run(tmp_path_factory, name: str, *args: str, timeout: int = 900) -> Path:
    """`visionlab train ARGS name=NAME`, trained once per test session: with pytest -n N the workers share one run
    (the first trains it under a file lock, the others wait and reuse it)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent                          # the folder every worker's basetemp lives in
    out, run = root / f"shared_{name}", root / f"shared_{name}" / name
    with FileLock(str(root / f"shared_{name}.lock")):
        if not (run / "summary.json").is_file():
            r = run_cli("train", *args, f"out_dir={out}", f"name={name}", timeout=timeout)
            assert r.returncode == 0, r.stderr[-3000:]
            assert Path(r.stdout.strip().splitlines()[-1]) == run
    return run


@pytest.fixture(scope="session")
def neu_det_run(data_dir, tmp_path_factory) -> Path:
    """A tiny FCOS on real NEU-DET boxes (40 images per split, one epoch, ~1 min on one thread), shared by the detection
    deploy and app tests. Display threshold 0.05, so the barely trained detector still shows boxes; what those tests
    check is that every path (export, stream, app) gives the same answers as predict."""
    return shared_run(tmp_path_factory, "neudet_fcos", "task=detection", "data.name=neu_det_boxes",
                      "model.name=fcos_lite0", "model.pretrained=true", "data.limit=40", "train.epochs=1",
                      "train.batch_size=8", "train.eval_batch_size=8", "detection.score_threshold=0.05",
                      "train.precision=fp32", "train.threads=1", "train.progress=false", "train.tensorboard=false")


@pytest.fixture(scope="session")
def trashnet_run(data_dir, tmp_path_factory) -> Path:
    """A small classifier (ResNet-18) trained on real TrashNet photos (64 px, 2 epochs), shared by the app, export and
    stream tests. Its accuracy is low; what those tests check is that every path gives the same answers."""
    return shared_run(tmp_path_factory, "trash", "data.name=trashnet", "data.image_size=64", "data.pad_square=true",
                      "data.limit=600", "model.name=resnet18", "train.epochs=2", "train.batch_size=50",
                      "optim.lr=0.003", "train.progress=false", "train.tensorboard=false")
