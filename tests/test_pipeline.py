"""End to end through the CLI a user types: train on the embedded data, then eval, predict, report."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from visionlab import api
from visionlab.data import build_splits
from visionlab.config import DataConfig


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from conftest import run_cli

    out = tmp_path_factory.mktemp("runs")
    r = run_cli("train", "train.epochs=2", f"out_dir={out}", "train.progress=false")
    assert r.returncode == 0, r.stderr
    return out, r


def test_train_writes_complete_run_dir(demo_run):
    out, r = demo_run
    lines = r.stdout.strip().splitlines()
    run_dir = out / "mnist5k"
    assert lines[-1] == str(run_dir)                 # the run directory is the last line of stdout
    assert "test/acc=" in r.stdout
    for f in ("config.yaml", "env.json", "metrics.csv", "summary.json", "checkpoints/best.safetensors",
              "checkpoints/best.json", "checkpoints/last.safetensors", "report.md", "report.html",
              "confusion_matrix.png", "curves.png", "errors.png", "cam_gallery.png", "data_report.json",
              "data_report.md"):
        assert (run_dir / f).is_file(), f
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["test/acc"] > 0.9                          # 10 classes: chance is 0.1
    assert s["test/top5"] >= s["test/acc"] and 0 <= s["test/ece"] < 0.2
    assert s["params"] == 184_778 and s["flops_per_image"] > 7_000_000
    assert len(s["per_class"]) == 10 and sum(p["support"] for p in s["per_class"]) == s["test_size"] == 500
    assert np.trace(np.array(s["confusion"])) == round(s["test/acc"] * 500)
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and float(rows[1]["val/acc"]) > 0.9
    assert all(0 < float(r["step_s"]) < float(r["epoch_s"]) for r in rows)       # the step is part of the epoch
    t = s["timings"]
    assert t["step_s"] == pytest.approx(sum(float(r["step_s"]) for r in rows), rel=1e-3)
    assert 0 < t["outside_step_fraction"] < 1 and t["outside_step_fraction"] == pytest.approx(
        1 - t["step_s"] / t["train_s"])
    sidecar = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    assert sidecar["classes"] == [str(i) for i in range(10)] and sidecar["data"]["preprocess"]["image_size"] == 28
    env = json.loads((run_dir / "env.json").read_text())
    assert env["versions"]["torch"].startswith("2.14.1")
    assert env["cpu"]["model"] and env["cpu"]["cores"] >= 1        # the CPU the run's speed figures belong to


@pytest.mark.slow
def test_eval_predict_report(demo_run, tmp_path, cli):
    out, _ = demo_run
    run_dir = out / "mnist5k"
    r = cli("eval", str(run_dir), "split=val")
    assert r.returncode == 0, r.stderr
    assert "val/acc=" in r.stdout and (run_dir / "eval_val.json").is_file()
    r = cli("eval", str(run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    acc = float(next(l for l in r.stdout.splitlines() if l.startswith("test/acc=")).split("=")[1])
    assert acc == pytest.approx(summary["test/acc"], abs=1e-4)      # eval reproduces the training-time test score

    # predict: real test digits written as PNG files, predicted through the same preprocessing as evaluation
    splits = build_splits(DataConfig(name="mnist5k"))
    paths = []
    for i in range(20):
        p = tmp_path / f"digit{i}_label{splits.test.labels[i]}.png"
        Image.fromarray(splits.test.images[i, :, :, 0]).save(p)
        paths.append(str(p))
    r = cli("predict", str(run_dir), *paths, "topk=3")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 20 and all(len(l.split("\t")[1].split()) == 3 for l in lines)
    hits = sum(l.split("\t")[1].split()[0].split(":")[0] == str(splits.test.labels[i]) for i, l in enumerate(lines))
    assert hits >= 17
    # the API gives the same answer as the CLI
    top = api.predict(run_dir, paths[:3], topk=1)
    assert [t[0][0] for t in top] == [l.split("\t")[1].split()[0].split(":")[0] for l in lines[:3]]

    (run_dir / "report.md").unlink()
    r = cli("report", str(run_dir))
    assert r.returncode == 0 and (run_dir / "report.md").is_file()
    assert "Per-class" in (run_dir / "report.md").read_text() or "per-class" in (run_dir / "report.md").read_text()


def test_bad_inputs_give_clear_errors(demo_run, tmp_path, cli):
    out, _ = demo_run
    r = cli("predict", str(out / "mnist5k"), str(tmp_path / "missing.png"))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "missing.png" in r.stderr
    (tmp_path / "text.png").write_text("not an image")
    r = cli("predict", str(out / "mnist5k"), str(tmp_path / "text.png"))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "text.png" in r.stderr
    r = cli("eval", str(tmp_path))
    assert r.returncode == 1 and "not a run directory" in r.stderr
    r = cli("train", "resume=" + str(tmp_path))
    assert r.returncode == 1 and "last.safetensors" in r.stderr


def test_folder_with_hostile_files_trains(tmp_path, data_dir, cli):
    """A folder dataset with broken files trains; every broken file is named in the data report."""
    root = tmp_path / "waste"
    for cls in ("glass", "paper"):
        (root / cls).mkdir(parents=True)
        for f in sorted((data_dir / "trashnet" / cls).iterdir())[:30]:
            shutil.copy(f, root / cls / f.name)
    (root / "glass" / "empty.jpg").write_bytes(b"")
    (root / "glass" / "notes.jpg").write_text("this is text")
    good = (root / "paper" / sorted(p.name for p in (root / "paper").iterdir())[0]).read_bytes()
    (root / "paper" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "paper" / "noise.png").write_bytes(np.random.default_rng(0).bytes(3000))
    r = cli("train", "data.name=folder", f"data.root={root}", "data.image_size=32", "model.name=resnet18_cifar",
            "train.epochs=1", "train.batch_size=16", f"out_dir={tmp_path / 'runs'}", "name=waste",
            "train.progress=false")
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "runs" / "waste"
    report = json.loads((run_dir / "data_report.json").read_text())
    skipped = {s["file"].split("/")[-1] for s in report["skipped"]}
    assert {"empty.jpg", "notes.jpg", "truncated.jpg", "noise.png"} <= skipped
    manifest = list(csv.DictReader((run_dir / "split_manifest.csv").open()))
    assert {m["split"] for m in manifest} == {"train", "val", "test"}
    assert "truncated.jpg" in (run_dir / "report.md").read_text()


def test_early_stopping_and_training_options(tmp_path):
    """With lr=1e-9 (about 0) only BatchNorm statistics move, so val accuracy soon stops improving and early_stop=1 ends the run
    one epoch after its best epoch, before epoch 5; the other engine options run alongside."""
    from visionlab import run

    r = run.train(None, ["optim.lr=1e-9", "train.early_stop=1", "train.epochs=5", "data.limit=400",
                         "train.progress=false", f"out_dir={tmp_path}", "train.grad_clip=1.0",
                         "train.label_smoothing=0.1", "data.cutmix=1.0", "data.mixup=0.2", "optim.name=sgd",
                         "optim.nesterov=true", "optim.scheduler=cosine", "optim.warmup_epochs=1"])
    n = r.summary["epochs_run"]
    assert n < 5 and r.summary["best_epoch"] == n - 1
    accs = [float(row["val/acc"]) for row in csv.DictReader((r.run_dir / "metrics.csv").open())]
    assert len(accs) == n and accs[-1] <= accs[-2] and accs[-2] == max(accs)
