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
os.environ["VISIONLAB_DATA"] = str(DATA)      # the in-process CLI (run_cli) reads it as a subprocess would


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "mnist").is_dir():
        pytest.fail(f"real data not found at {DATA}; set VISIONLAB_DATA to the shared data folder")
    return DATA


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None,
            prefix: list[str] | None = None, python: list[str] | None = None,
            fresh: bool = False) -> subprocess.CompletedProcess:
    """Run `visionlab ARGS` as a user would and return its exit code, stdout and stderr.

    By default in this process, through the CLI's own ``main()`` (what `python -m visionlab` runs), with sys.argv,
    stdout, stderr, warnings and torch's thread count as a fresh process would see them: that saves a torch +
    torchvision import (seconds on a slow CPU) per call. In a subprocess when the call needs one: ``prefix`` wraps
    the command (unshare), ``python`` replaces the interpreter (a torchrun launcher), another ``cwd`` or ``env``, or
    ``fresh=True`` (process-level behaviour: what a new interpreter imports, signals, a crash's exit code)."""
    if prefix or python or cwd or env or fresh:
        full_env = {**os.environ, "VISIONLAB_DATA": str(DATA), **(env or {})}
        cmd = (prefix or []) + (python or [sys.executable]) + ["-m", "visionlab", *args]
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)
    return _run_in_process(list(args))


def _run_in_process(args: list[str]) -> subprocess.CompletedProcess:
    import contextlib
    import io
    import traceback
    import warnings

    import torch

    from visionlab.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv, threads = sys.argv, torch.get_num_threads()
    sys.argv = [str(ROOT / "src" / "visionlab" / "__main__.py"), *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("default")          # shown once per call, on the captured stderr, as in a process
            warnings.showwarning = lambda msg, cat, fn, ln, file=None, line=None: sys.stderr.write(
                warnings.formatwarning(msg, cat, fn, ln, line))
            try:
                code = main(args)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:                         # noqa: BLE001  what the interpreter does with an uncaught error
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)                # train.threads=N must not leak into the next test
    return subprocess.CompletedProcess(["visionlab", *args], code, out.getvalue(), err.getvalue())


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


def full_and_resumed(config, args: list[str], out: Path) -> tuple[dict, dict]:
    """Train ``config`` + ``args`` into OUT/full in one go, and into OUT/half stopped after its first epoch (an
    interruption) then resumed; the two last checkpoints' tensors (name -> tensor), which an exact resume makes equal."""
    from safetensors.torch import load_file

    from visionlab.run import train

    full = train(config, [*args, f"out_dir={out}", "name=full"]).run_dir

    def interrupt(state, row):
        raise KeyboardInterrupt("stopped after the first epoch")

    with pytest.raises(KeyboardInterrupt):
        train(config, [*args, f"out_dir={out}", "name=half"], on_epoch_end=[interrupt])
    train(config, [*args, f"out_dir={out}", "name=half", f"resume={out / 'half'}"])
    return tuple(load_file(str(d / "checkpoints" / "last.safetensors")) for d in (full, out / "half"))


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
