"""A run killed with SIGKILL mid-epoch resumes from its last checkpoint and ends exactly like an uninterrupted run."""
from __future__ import annotations

import json

import pytest

from conftest import kill_at_checkpoint, last_checkpoint_step, metrics_rows, run_cli

ARGS = ["train.epochs=3", "train.checkpoint_every=15", "train.progress=false", "data.rotation=13", "seed=7",
        "optim.scheduler=step", "optim.step_size=1", "train.ema_decay=0.99"]


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    ref = run_cli("train", *ARGS, f"out_dir={tmp_path / 'a'}", "name=ref")
    assert ref.returncode == 0, ref.stderr
    ref_dir = tmp_path / "a" / "ref"

    # the same run, killed at the first checkpoint inside epoch 2 (steps 40..79; 40 batches of 100 per epoch)
    run_dir = kill_at_checkpoint(ARGS, tmp_path / "b", "killed", 45)
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


@pytest.mark.slow
def test_resume_true_finds_newest_run(tmp_path):
    first = run_cli("train", "train.epochs=1", "train.progress=false", f"out_dir={tmp_path}", "name=r",
                    "data.limit=300")
    assert first.returncode == 0, first.stderr
    again = run_cli("train", "resume=true", f"out_dir={tmp_path}", "name=r")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == str(tmp_path / "r")


@pytest.mark.slow
def test_resume_applies_safe_overrides_and_refuses_others(tmp_path):
    tiny = ["data.limit=200", "train.threads=1", "train.progress=false", "train.tensorboard=false"]
    first = run_cli("train", *tiny, "train.epochs=1", f"out_dir={tmp_path}", "name=r")
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "r"
    env = (run_dir / "env.json").read_bytes()

    more = run_cli("train", f"resume={run_dir}", "train.epochs=2", "train.threads=1")
    assert more.returncode == 0, more.stderr
    assert "resuming" in more.stdout and "train.epochs: 1 -> 2" in more.stdout
    assert [r["epoch"] for r in metrics_rows(run_dir)] == ["1", "2"]          # the second epoch was trained
    assert json.loads((run_dir / "summary.json").read_text())["epochs_run"] == 2
    assert "epochs: 2" in (run_dir / "config.yaml").read_text()           # the folder reproduces what it holds
    assert (run_dir / "env.json").read_bytes() == env                    # the start's environment is kept
    history = (run_dir / "resumes.jsonl").read_text().splitlines()
    assert len(history) == 1
    line = json.loads(history[0])
    assert line["overrides"] == {"train.epochs": [1, 2]} and line["epoch"] == 1
    assert {"time", "argv", "versions"} <= set(line) and "train.epochs=2" in line["argv"]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"

    config = (run_dir / "config.yaml").read_text()
    bad = run_cli("train", f"resume={run_dir}", "model.name=x", "train.epochs=3")
    assert bad.returncode == 2
    assert "model.name" in bad.stderr and "train.epochs" not in bad.stderr.split("may change only")[0]
    assert (run_dir / "config.yaml").read_text() == config and (run_dir / "env.json").read_bytes() == env
    assert len((run_dir / "resumes.jsonl").read_text().splitlines()) == 1


SEG = ["task=segmentation", "data.name=camvid", "model.name=lraspp_lite0", "model.pretrained=true",
       "data.image_size=96", "data.limit=48", "segmentation.crop_size=[64,96]", "segmentation.jitter=0.2",
       "train.batch_size=4", "train.eval_batch_size=8", "train.epochs=2", "train.checkpoint_every=3",
       "train.progress=false", "train.tensorboard=false", "train.threads=1", "optim.scheduler=cosine", "seed=3"]


@pytest.mark.slow
def test_segmentation_sigkill_then_resume_matches_uninterrupted(tmp_path):
    """The same guarantee for the second task: joint image/mask augmentation, its generator and the per-pixel
    metrics come back exactly after a SIGKILL mid-epoch."""
    ref = run_cli("train", *SEG, f"out_dir={tmp_path / 'a'}", "name=ref")
    assert ref.returncode == 0, ref.stderr
    run_dir = kill_at_checkpoint(SEG, tmp_path / "b", "killed", 15)
    killed_at = last_checkpoint_step(run_dir)
    assert 15 <= killed_at < 24, f"the run was not killed mid-epoch 2 (last checkpoint at step {killed_at})"

    res = run_cli("train", f"resume={run_dir}")
    assert res.returncode == 0, res.stderr
    a = json.loads((tmp_path / "a" / "ref" / "summary.json").read_text())
    b = json.loads((run_dir / "summary.json").read_text())
    assert b["test/miou"] == a["test/miou"] and b["per_class_iou"] == a["per_class_iou"]
    assert b["confusion"] == a["confusion"]
    assert metrics_rows(run_dir) == metrics_rows(tmp_path / "a" / "ref")
