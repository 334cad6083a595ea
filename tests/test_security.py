"""Hardening (issue 9): names never leave out_dir, URL passwords are masked, one process per run folder (a lock
naming its holder's pid), and every run folder says whether it is running, finished or failed (status.json)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from visionlab import cli
from visionlab import config as C
from visionlab import run as R
from visionlab.engine import lock
from visionlab.engine.rundir import mask_secrets, read_status
from visionlab.experiments import seeds

from conftest import run_cli

TINY = ["data.limit=200", "train.epochs=1", "train.threads=1", "train.progress=false", "train.tensorboard=false"]


# ---------------------------------------------------------------- item 5: names stay inside out_dir

@pytest.mark.parametrize("mode", ["train", "seeds", "compare", "sweep"])
def test_names_with_a_path_are_refused_before_anything_is_written(tmp_path, mode, capsys):
    out = tmp_path / "work" / "runs"
    (tmp_path / "base.yaml").write_text("train: {epochs: 1}\n")
    (tmp_path / "cmp.yaml").write_text(json.dumps({"name": "../../escaped", "config": "base.yaml",
                                                   "variants": {"a": [], "b": ["optim.lr=0.01"]}}))
    (tmp_path / "space.yaml").write_text("name: ../../escaped\nstrategy: grid\nparams:\n"
                                         "  optim.lr: {values: [0.01]}\n")
    args = {"train": ["train", *TINY, "name=../../escaped"],
            "seeds": ["seeds", *TINY, "n=1", "name=../../escaped"],
            "compare": ["compare", str(tmp_path / "cmp.yaml")],
            "sweep": ["sweep", str(tmp_path / "base.yaml"), str(tmp_path / "space.yaml")]}[mode]
    if mode == "train":                     # one real process, exactly as a user types it
        r = run_cli(*args, f"out_dir={out}", timeout=120)
        code, err = r.returncode, r.stderr
    else:
        code = cli.main([*args, f"out_dir={out}"])
        err = capsys.readouterr().err
    assert code == 2, err
    assert "'../../escaped'" in err and "without '/'" in err and "Traceback" not in err
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "work").exists()


# ---------------------------------------------------------------- item 2: passwords masked (unit; sweep: test_sweep)

def test_mask_secrets_hides_url_passwords_only():
    assert mask_secrets("storage=postgresql://me:s3cret@db:5432/sweeps") == "storage=postgresql://me:***@db:5432/sweeps"
    assert mask_secrets("postgresql+psycopg://me:p@ss@db/x") == "postgresql+psycopg://me:***@db/x"
    for text in ("postgresql://me@db/sweeps", "sqlite:///runs/s/sweep.db", "optim.lr=0.1"):
        assert mask_secrets(text) == text


# ---------------------------------------------------------------- item 9: one process per run folder

# what lock.acquire does (flock RUN_DIR/.lock, pid inside), without importing torch into the holder
HOLD = ("import fcntl, os, sys, time; fd = os.open(os.path.join(sys.argv[1], '.lock'), os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, f'{os.getpid()}'.encode()); print('held', flush=True); "
        "time.sleep(120)")


def _hold(run_dir: Path) -> subprocess.Popen:
    """Another process holding ``run_dir``'s lock, as a running train would."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _fake_run(run_dir: Path, checkpoint: bool = True) -> None:
    """A run folder as train leaves it (config.yaml; a last checkpoint) without training: resume stops at the lock."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(C.dump_yaml(C.load_config(None, [f"name={run_dir.name}"])))
    if checkpoint:
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "last.safetensors").write_bytes(b"")


def test_a_locked_run_is_not_resumed_or_deleted(tmp_path):
    run_dir = tmp_path / "runs" / "r"
    _fake_run(run_dir)
    stale = tmp_path / "runs" / "s" / "seed-0"          # "started, no checkpoint": seeds used to delete it
    _fake_run(stale, checkpoint=False)
    holders = [_hold(run_dir), _hold(stale)]
    try:
        pid = str(holders[0].pid)
        for how in (f"resume={run_dir}", "resume=true"):
            with pytest.raises(R.UserError, match=f"in use by process {pid}"):
                R.train(None, [how, f"out_dir={tmp_path / 'runs'}", "name=r", "train.threads=1"])
        assert lock.holder(run_dir) == pid
        assert not (run_dir / "status.json").exists() and not (run_dir / "resumes.jsonl").exists()
        with pytest.raises(R.UserError, match=f"in use by process {holders[1].pid}"):
            seeds.run_seeds(None, [f"out_dir={tmp_path / 'runs'}", "name=s"], n=1)
        assert (stale / "config.yaml").is_file()
    finally:
        for p in holders:
            p.kill()
            p.wait()
    assert lock.holder(run_dir) is None            # the kernel dropped the lock with its process


# ---------------------------------------------------------------- item 12: status.json

def test_failed_run_says_why_in_status_json(tmp_path):
    r = run_cli("train", *TINY, "data.name=folder", f"data.root={tmp_path / 'missing'}", f"out_dir={tmp_path}",
                "name=bad", timeout=120)
    assert r.returncode == 1 and "not found" in r.stderr
    assert sorted(p.name for p in (tmp_path / "bad").iterdir()) == [".lock", "config.yaml", "env.json", "status.json"]
    st = json.loads((tmp_path / "bad" / "status.json").read_text())
    assert st["status"] == "failed" and str(tmp_path / "missing") in st["reason"] and st["reason"] in r.stderr
    assert read_status(tmp_path / "bad")["status"] == "failed"


def test_interrupted_run_is_marked_and_releases_its_lock(tmp_path):
    def stop(state, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        R.train(None, [*TINY, f"out_dir={tmp_path}", "name=int"], on_epoch_end=[stop])
    st = read_status(tmp_path / "int")
    assert st["status"] == "failed" and st["reason"] == "interrupted"
    assert lock.holder(tmp_path / "int") is None
    (tmp_path / "int" / "status.json").write_text(json.dumps({"status": "running", "reason": None}))
    assert "killed" in read_status(tmp_path / "int")["reason"]      # running, yet nobody holds it: SIGKILL
    _unfinished_runs_are_explained_or_skipped(tmp_path / "int")


def _unfinished_runs_are_explained_or_skipped(run_dir):
    """The report says so at the top; an ensemble and the app refuse a failed run named alone and skip it in a folder."""
    from visionlab.api import report
    from visionlab.app.infer import load_app_runs
    from visionlab.experiments.ensemble import find_members
    from visionlab.utils import UserError

    text = report(run_dir).with_name("report.md").read_text()
    assert "## Status" in text.split("## Overview")[0] and "not finished: failed: killed" in text
    with pytest.raises(UserError, match="not a finished run"):
        find_members([run_dir, run_dir])
    with pytest.raises(UserError, match="holds none"):        # the folder's only run is unfinished: left out
        find_members([run_dir.parent])
    with pytest.raises(UserError, match="the app serves finished runs only"):
        load_app_runs([run_dir])
