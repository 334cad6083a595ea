"""The task contract's acceptance test, parametrized over every registered task: one short training on real data
through the CLI, then report, eval, predict, ONNX export parity and the app's handler, each producing the task's own
outputs. A task registered without a recipe here fails, so a new task is tested the moment it is registered."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DATA, run_cli
from visionlab.tasks import TASKS

TINY = ["train.epochs=1", "train.threads=1", "train.progress=false", "train.tensorboard=false"]
RECIPES = {     # task -> (overrides, a real image to predict, the primary metric, what a prediction line shows)
    "classification": (["data.limit=300"], None, "val/acc", ":"),
    "segmentation": (["task=segmentation", "data.name=camvid", "model.name=lraspp_lite0", "model.pretrained=true",
                      "data.image_size=64", "data.limit=24", "segmentation.crop_size=[48,64]",
                      "train.batch_size=8", "train.eval_batch_size=8"],
                     DATA / "camvid" / "images" / "test" / "0001TP_008550.jpg", "val/miou", "_mask.png"),
    **{task: ([f"task={task}", "data.limit=300", "train.batch_size=50", "fid.samples=200", "fid.val_samples=100",
               "fid.kid_subset_size=100", "ddpm.sample_steps=5", "ddpm.width=16"], None, "val/fid",
              "_recon.png" if task == "vae" else None)
       for task in ("vae", "dcgan", "ddpm")},
    # the domain head behind gradient reversal: a second head in the checkpoint, the classifier exported and served
    "dg": (["task=dg", "dg.method=dann", "data.name=pacs", "data.target_domains=[sketch]", "data.val_fraction=0.2",
            "data.limit=24", "model.pretrained=true", "train.batch_size=16"], None, "val/acc", ":"),
    # a detector: boxes as targets, COCO mAP, boxes drawn by predict, mAP parity of the exported file
    "detection": (["task=detection", "data.name=neu_det_boxes", "model.pretrained=true", "data.limit=24",
                   "train.batch_size=8", "train.eval_batch_size=8", "detection.score_threshold=0.05"],
                  DATA / "neu_det" / "images" / "scratches_1.jpg", "val/map", "_boxes.png"),
    # the two-network method: teacher and student in one checkpoint, the student evaluated, exported and served
    "ssl": (["task=ssl", "ssl.method=mpl", "data.limit=300", "data.labels_per_class=10", "train.iterations=20",
             "train.eval_every=10", "train.batch_size=16", "ssl.mu=2", "train.ema_decay=0.9"], None, "val/acc", ":"),
}
GENERATIVE = ("vae", "dcgan", "ddpm")


def test_every_task_has_a_recipe_and_declares_its_metric():
    from visionlab.tasks import declared_metric
    from visionlab.views.tasks import TASK_VIEWS

    assert sorted(RECIPES) == TASKS.names() == sorted(TASK_VIEWS)
    assert {t: declared_metric(t)[0] for t in TASKS.names()} == {t: r[2] for t, r in RECIPES.items()}


_RUNS: dict = {}


def _trained(task: str, tmp_path_factory) -> Path:
    """One short run per task, trained once for this module."""
    if task not in _RUNS:
        out = tmp_path_factory.mktemp(task)
        r = run_cli("train", *TINY, *RECIPES[task][0], f"out_dir={out}", "name=run")
        assert r.returncode == 0, r.stderr[-3000:]
        _RUNS[task] = out / "run"
    return _RUNS[task]


@pytest.fixture(scope="module", params=sorted(RECIPES))
def task_run(request, tmp_path_factory):
    return request.param, _trained(request.param, tmp_path_factory)


def test_train_writes_the_tasks_summary_and_every_logged_key(task_run):
    task, run_dir = task_run
    _, _, primary, _ = RECIPES[task]
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["task"] == task and s["primary_metric"] == primary
    assert s["mode"] == ("min" if task in GENERATIVE else "max")
    test_key = "test/" + primary.split("/")[1]
    assert 0.0 <= s[test_key] <= (1e4 if task in GENERATIVE else 1.0) and s[f"best/{primary}"] is not None
    if task in GENERATIVE:          # FID is named by its extractor and sample counts
        assert s["test/n_gen"] == 200 and s["test/n_ref"] == s["test_size"] and s["extractor"]["sha256"]
        assert (run_dir / "samples" / "samples-epoch001.png").is_file()
    with (run_dir / "metrics.csv").open() as f:
        header = next(csv.reader(f))
    assert "train/loss" in header and primary in header       # nothing dropped from what was logged
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"


def test_report_eval_predict_export(task_run, tmp_path):
    task, run_dir = task_run
    _, image, primary, shown = RECIPES[task]
    metric = primary.split("/")[1]
    md = (run_dir / "report.md").read_text()
    assert f"best {primary}" in md and "## Results" in md
    assert {"classification": "## Per-class metrics", "segmentation": "## Per-class IoU",
            "ssl": "## Semi-supervised training", "dg": "## Per-domain results",
            "detection": "## Per-class AP"}.get(task, "## Samples") in md

    ev = run_cli("eval", str(run_dir), "split=val")
    assert ev.returncode == 0, ev.stderr
    assert f"val/{metric}=" in ev.stdout

    if image is None:                        # classification: a real test digit from the run's own test split
        data = np.load(run_dir / "errors.npz") if (run_dir / "errors.npz").exists() else None
        arr = data["images"][0] if data is not None else np.zeros((28, 28, 1), np.uint8)
        image = tmp_path / "digit.png"
        Image.fromarray(arr[..., 0]).save(image)
    pr = run_cli("predict", str(run_dir), str(image), f"out={tmp_path / 'pred'}")
    if shown is None:                        # a GAN or DDPM makes new images: predict points to generate
        assert pr.returncode != 0 and "visionlab generate" in pr.stderr and "Traceback" not in pr.stderr
    else:
        assert pr.returncode == 0, pr.stderr
        assert shown in pr.stdout
    if task == "detection":                 # boxes in the photo's own pixels, as JSON too
        found = json.loads((tmp_path / "pred" / "predictions.json").read_text())
        assert found[0]["image"].endswith("scratches_1.jpg")
        assert all(0 <= v <= 200 for d in found[0]["detections"] for v in d["box"])
    if task == "segmentation":
        mask = np.asarray(Image.open(tmp_path / "pred" / f"{Path(image).stem}_mask.png"))
        assert mask.ndim == 2 and mask.max() < 11 and (tmp_path / "pred" / f"{Path(image).stem}_overlay.png").is_file()

    ex = run_cli("export", str(run_dir), "format=onnx", "limit=16")
    assert ex.returncode == 0, ex.stderr
    parity = json.loads((run_dir / "export.json").read_text())["onnx"]
    if task in GENERATIVE:                   # the generator / decoder / denoiser under ONNX Runtime, same noise
        assert parity["metric"] == "pixels" and parity["agree"] > 0.99
        if task == "dcgan":                  # the cheapest sampler: the CLI path is the same for all three
            _generate_then_fid(run_dir, tmp_path)
        if task == "ddpm":                   # FID against DDIM steps: an eval-time key, a table in the report
            r = run_cli("eval", str(run_dir), "tag=steps2", "ddpm.sample_steps=2")
            assert r.returncode == 0, r.stderr
            assert json.loads((run_dir / "eval_test-steps2.json").read_text())["overrides"] == ["ddpm.sample_steps=2"]
            report = (run_dir / "report.md").read_text()
            assert "## FID against sampling steps" in report and "| steps | FID | KID | generated images |" in report
        return
    assert parity["metric"] == {"classification": "top1", "ssl": "top1", "dg": "top1", "segmentation": "miou",
                                "detection": "map"}[task]
    assert abs(parity["diff_points"]) <= 0.1 and parity["agree"] > 0.99


def _generate_then_fid(run_dir: Path, tmp_path: Path) -> None:
    """`visionlab generate` writes n seeded PNGs (the same seed, the same images) and a grid beside the folder, which
    `visionlab fid` then scores against a dataset split, naming the extractor."""
    out = tmp_path / "gen"
    for again in (False, True):
        r = run_cli("generate", str(run_dir), "n=12", "seed=5", f"out={out}")
        assert r.returncode == 0, r.stderr
        files = sorted(out.glob("*.png"))
        first = first if again else [np.asarray(Image.open(f)) for f in files]
    assert len(files) == 12 and all(np.array_equal(np.asarray(Image.open(f)), a) for f, a in zip(files, first))
    assert first[0].shape == (28, 28) and (tmp_path / "gen-grid.png").is_file()
    r = run_cli("fid", str(out), "mnist5k:test", "n=12")
    assert r.returncode == 0, r.stderr
    assert "fid" in r.stdout.lower() and "not comparable" in r.stdout


def test_segmentation_metrics_match_a_direct_computation(tmp_path_factory, monkeypatch):
    """The run's test mIoU equals a numpy computation over the predictions of the saved model on the test masks."""
    run_dir = _trained("segmentation", tmp_path_factory)
    monkeypatch.setenv("VISIONLAB_DATA", str(DATA))
    import torch

    from visionlab.data import build_splits
    from visionlab.run import load_run

    run = load_run(run_dir, device="cpu")
    test = build_splits(run.cfg.data).test
    pred = run.task.predict(torch.from_numpy(np.ascontiguousarray(test.images))).masks.numpy()
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["test/miou"] == pytest.approx(_numpy_miou(test.masks, pred, len(run.classes)), abs=2e-3)   # bf16 eval


def _numpy_miou(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean over classes present in truth or prediction of |T & P| / |T | P|, void (255) pixels left out."""
    ious = []
    for c in range(n_classes):
        t, p = (truth == c), (pred == c) & (truth != 255)
        union = (t | p).sum()
        if union:
            ious.append((t & p).sum() / union)
    return float(np.mean(ious))


def test_eval_at_another_resolution_scores_upsampled_predictions(tmp_path_factory, monkeypatch):
    """`visionlab eval RUN data.image_size=N segmentation.tta_scales=[s]`: the model runs at s x N and its upsampled
    output is scored against the masks decoded at N (the native-resolution protocol), in eval_test-<tag>.json; the
    same settings as training reproduce the training-time figure; keys that change what was trained are refused."""
    run_dir = _trained("segmentation", tmp_path_factory)
    monkeypatch.setenv("VISIONLAB_DATA", str(DATA))
    import torch

    from visionlab.data import build_splits
    from visionlab.run import evaluate, load_run
    from visionlab.utils import ConfigError, UserError

    s = json.loads((run_dir / "summary.json").read_text())
    assert evaluate(run_dir, "test", ["data.image_size=64"], "same")["test-same/miou"] == pytest.approx(s["test/miou"])

    over = ["data.image_size=96", "segmentation.tta_scales=[0.6667]"]
    r = run_cli("eval", str(run_dir), "tag=big", *over)
    assert r.returncode == 0, r.stderr
    out = json.loads((run_dir / "eval_test-big.json").read_text())
    assert out["overrides"] == over

    run = load_run(run_dir, device="cpu", overrides=over)
    test = build_splits(run.cfg.data).test
    assert test.masks.shape[1:] == (96, 128)
    pred = run.task.predict(torch.from_numpy(np.ascontiguousarray(test.images))).masks.numpy()
    assert pred.shape == test.masks.shape
    assert out["test-big/miou"] == pytest.approx(_numpy_miou(test.masks, pred, len(run.classes)), abs=2e-3)
    assert "test-big" in (run_dir / "report.md").read_text()          # a column beside the training-time test figures

    with pytest.raises(ConfigError, match="optim.lr cannot change at evaluation.*data.image_size"):
        evaluate(run_dir, "test", ["optim.lr=1"])
    with pytest.raises(UserError, match="tag='../x': use letters, digits"):    # the file stays in the run folder
        evaluate(run_dir, "test", ["data.image_size=96"], "../x")
    assert not (run_dir / "eval_test-..").exists() and not list(run_dir.parent.glob("x*"))


def test_the_apps_handler_gives_the_tasks_own_view(task_run):
    """The app's row for the task (app/tabs/tasks.py) turns a frame into the task's own picture and scores: the top
    classes for classification, the class areas of the mask for segmentation, equal to what predict says."""
    from visionlab.app.infer import load_app_runs
    from visionlab.app.tabs.tasks import tab_for
    from visionlab.run import load_run, predict

    task, run_dir = task_run
    app_run = load_app_runs([run_dir])[0]
    if task in GENERATIVE:                   # generative runs live on the Generate tab (tests/test_generative_faces)
        assert app_run.generative
        return
    run = load_run(run_dir)
    h, w = run.info.image_size
    frame = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    if run.info.channels == 1:
        frame = np.repeat(frame[..., :1], 3, axis=2)
    shown, scores = tab_for(task).frame_view(app_run, frame)
    assert shown.shape[-1] == 3 and shown.dtype == np.uint8 and scores
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    expected = predict(run, [frame if run.info.channels == 3 else frame[..., :1]])[0]
    if task == "segmentation":
        assert scores.keys() == expected["areas"].keys()
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-6)
    elif task == "detection":               # every class with its best box score; the top one is predict's top box
        assert list(scores) == run.classes
        if len(expected["boxes"]):
            assert max(scores, key=scores.get) == expected["classes"][int(np.argmax(expected["scores"]))]
    else:
        assert max(scores, key=scores.get) == expected[0][0]
