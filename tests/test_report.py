"""Run report: built from a fake but complete run directory, and from ones with pieces missing."""
import struct

import numpy as np
import pytest
import yaml

from visionlab.views.report import write_report
from visionlab.views.report import read_metrics_csv
from visionlab.utils import UserError, write_json

CLASSES = ["cat", "dog", "bird_small"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    w, h = struct.unpack(">II", data[16:24])
    return w, h


def make_run(run_dir, classes=CLASSES, channels=3, with_val=True, errors=True, data_report=True):
    """Write the files the pipeline leaves in a run directory, with small numbers."""
    run_dir.mkdir(parents=True, exist_ok=True)
    c = len(classes)
    cfg = {"name": "toy_run", "seed": 0, "data": {"name": "toy"}, "model": {"name": "tiny_cnn"},
           "optim": {"name": "sgd", "lr": 0.1, "scheduler": "cosine"}, "train": {"epochs": 3, "batch_size": 32}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    confusion = (np.eye(c, dtype=int) * 8 + 1).tolist()
    summary = {
        "task": "classification", "dataset": "toy", "model": "tiny_cnn", "classes": list(classes), "split": "test",
        "test/acc": 0.912345, "test/top5": 1.0, "test/loss": 0.3141, "test/ece": 0.0421, "test/macro_f1": 0.9,
        "per_class": [{"index": i, "precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 10} for i in range(c)],
        "confusion": confusion, "params": 123456, "flops_per_image": 22_100_000, "best_epoch": 2,
        "epochs_run": 3, "best/val/acc": 0.88 if with_val else None,
        "timings": {"train_s": 12.5, "eval_s": 0.7, "train_img_per_s": 4800.0}, "device": "cpu",
        "precision": "bf16",
    }
    write_json(run_dir / "summary.json", summary)
    lines = ["epoch,step,lr,train/loss,train/acc,val/loss,val/acc,epoch_s,img_per_s"]
    for e in range(1, 4):
        val = f"{1.0 / e:.3f},{0.7 + 0.05 * e:.3f}" if with_val else ","
        lines.append(f"{e},{e * 10},0.1,{1.2 / e:.3f},{0.6 + 0.1 * e:.3f},{val},4.1,4800")
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    if errors:
        rng = np.random.default_rng(0)
        k = 5
        np.savez(run_dir / "errors.npz", images=rng.integers(0, 256, (k, 12, 12, channels), dtype=np.uint8),
                 true=np.zeros(k, np.int64), pred=np.ones(k, np.int64),
                 conf=rng.random(k).astype(np.float32), names=np.array([f"img_{i}.png" for i in range(k)]))
    if data_report:
        write_json(run_dir / "data_report.json", {
            "counts": {"train": {n: 40 for n in classes}, "test": {n: 10 for n in classes}},
            "skipped": [{"file": "broken_007.jpg", "reason": "truncated JPEG"}], "source": "/data/toy"})
    write_json(run_dir / "eval_val.json", {"val/acc": 0.8765, "val/loss": 0.4})
    return run_dir


@pytest.mark.parametrize("channels", [1, 3])
def test_full_report(tmp_path, channels):
    run = make_run(tmp_path / "run", channels=channels)
    out = write_report(run)
    assert out == run / "report.html"
    for name in ("confusion_matrix.png", "curves.png", "errors.png"):
        w, h = _png_size(run / name)
        assert w > 100 and h > 100
    md = (run / "report.md").read_text()
    assert "toy_run" in md and "tiny_cnn" in md and "123,456" in md and "22.10 MFLOP" in md
    assert "91.23%" in md and "87.65%" in md  # test acc and the extra eval, as percentages
    assert "88.00%" in md  # best val acc
    for name in CLASSES:
        assert name in md
    assert "broken_007.jpg" in md and "truncated JPEG" in md
    assert "scheduler: cosine" in md  # the config block
    assert "confusion_matrix.png" in md and "curves.png" in md and "errors.png" in md
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert 'src="confusion_matrix.png"' in page and "91.23%" in page and "broken_007.jpg" in page


def test_html_escapes_class_names(tmp_path):
    run = make_run(tmp_path / "run", classes=["<script>alert(1)</script>", "a&b", "plain"])
    page = write_report(run).read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "a&amp;b" in page
    md = (run / "report.md").read_text()
    assert "\\<script>" in md and " <script>" not in md  # backslash-escaped: markdown viewers show text


def test_missing_errors_and_val_columns(tmp_path):
    run = make_run(tmp_path / "run", with_val=False, errors=False, data_report=False)
    (run / "eval_val.json").unlink()
    write_report(run)
    assert not (run / "errors.png").exists()
    assert _png_size(run / "curves.png")[0] > 100
    md = (run / "report.md").read_text()
    assert "errors.png" not in md and "91.23%" in md
    rows = read_metrics_csv(run / "metrics.csv")
    assert rows[0]["val/acc"] is None and rows[0]["epoch"] == 1 and rows[0]["train/loss"] == pytest.approx(1.2)


def test_minimal_and_broken_run_dirs(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    write_report(run)  # nothing at all: still a report
    assert "Run report: bare" in (run / "report.md").read_text()
    (run / "summary.json").write_text("{not json")
    (run / "errors.npz").write_bytes(b"garbage")
    md = (run / "report.md").read_text() if write_report(run) else ""
    assert "summary.json could not be read" in md and "errors.npz could not be read" in md
    with pytest.raises(UserError, match="not found"):
        write_report(tmp_path / "nope")


def test_many_classes_without_annotations(tmp_path):
    classes = [f"class_{i:03d}" for i in range(100)]
    run = make_run(tmp_path / "run", classes=classes, errors=False)
    write_report(run)
    assert _png_size(run / "confusion_matrix.png")[0] > 100
