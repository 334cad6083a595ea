"""A run killed with SIGKILL mid-epoch resumes from its last checkpoint and ends exactly like an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import DATA, last_checkpoint_step, metrics_rows, run_cli

ARGS = ["train.epochs=3", "train.checkpoint_every=15", "train.progress=false", "data.rotation=13", "seed=7",
        "optim.scheduler=step", "optim.step_size=1", "train.ema_decay=0.99"]


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    ref = run_cli("train", *ARGS, f"out_dir={tmp_path / 'a'}", "name=ref")
    assert ref.returncode == 0, ref.stderr
    ref_dir = tmp_path / "a" / "ref"

    # the same run, killed at the first checkpoint inside epoch 2 (steps 40..79; 40 batches of 100 per epoch)
    env = {**os.environ, "VISIONLAB_DATA": str(DATA)}
    proc = subprocess.Popen([sys.executable, "-m", "visionlab", "train", *ARGS, f"out_dir={tmp_path / 'b'}",
                             "name=killed"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "b" / "killed"
    deadline = time.time() + 300
    while last_checkpoint_step(run_dir) < 45 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = last_checkpoint_step(run_dir)
    assert 45 <= killed_at < 120, f"the run was not killed mid-training (last checkpoint at step {killed_at})"
    assert not (run_dir / "summary.json").exists()

    res = run_cli("train", f"resume={run_dir}")
    assert res.returncode == 0, res.stderr
    assert "resuming" in res.stdout
    a = json.loads((ref_dir / "summary.json").read_text())
    b = json.loads((run_dir / "summary.json").read_text())
    assert b["test/acc"] == a["test/acc"] and b["test/loss"] == a["test/loss"]
    assert b["confusion"] == a["confusion"]
    assert metrics_rows(run_dir) == metrics_rows(ref_dir)


def test_resume_true_finds_newest_run(tmp_path):
    first = run_cli("train", "train.epochs=1", "train.progress=false", f"out_dir={tmp_path}", "name=r",
                    "data.limit=300")
    assert first.returncode == 0, first.stderr
    again = run_cli("train", "resume=true", f"out_dir={tmp_path}", "name=r")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == str(tmp_path / "r")
