"""Detection building blocks: the four detectors on Lite0 + FPN, joint image/box augmentation, per-image matching."""
import numpy as np
import pytest
import torch

from visionlab.data.box_transforms import BatchBoxAugment, to_float, unpad
from visionlab.metrics.detection import image_f1, match_image
from visionlab.models.detection import DETECTION_MODELS, build_detector
from visionlab.utils import ConfigError


def _targets(n):
    return [{"boxes": torch.tensor([[10.0, 20.0, 90.0, 100.0], [100.0, 100.0, 150.0, 140.0]]),
             "labels": torch.tensor([0, 2])} for _ in range(n)]


@pytest.mark.parametrize("family", sorted(set(DETECTION_MODELS.values())))
def test_detector_trains_and_detects_with_zero_based_labels(family):
    torch.manual_seed(0)
    model = build_detector(family, 3, 160, pretrained=False, score_thresh=0.0, detections=7)
    x = torch.rand(2, 3, 160, 160)
    model.train()
    losses = model(x, _targets(2))
    total = sum(losses.values())
    assert torch.isfinite(total) and total > 0
    total.backward()
    assert all(p.grad is not None for p in model.get_classifier().parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert len(out) == 2
    for d in out:
        assert d["boxes"].shape[1] == 4 and len(d["boxes"]) <= 7
        assert d["labels"].min() >= 0 and d["labels"].max() < 3       # the softmax models' background is hidden
        assert (d["boxes"] >= 0).all() and (d["boxes"] <= 160).all()


def test_pretrained_backbone_is_the_bundled_lite0_and_heads_are_separate():
    model = build_detector("fcos", 6, 128, pretrained=True)
    assert model.load_report["loaded"] > 100 and not model.load_report["shape_mismatch"]
    body = {id(p) for p in model.net.backbone.body.parameters()}
    head = {id(p) for p in model.get_classifier().parameters()}
    assert body and head and not body & head
    assert body | head == {id(p) for p in model.parameters()}


def test_anchor_sizes_must_match_the_pyramid():
    with pytest.raises(ConfigError, match="5 pyramid levels"):
        build_detector("retinanet", 2, 128, anchor_sizes=(16, 32))


def test_augment_moves_boxes_with_the_image():
    """A white box on black: after flips and zoom the transformed box still frames the white pixels."""
    s = 96
    images = torch.zeros(6, s, s, 3, dtype=torch.uint8)
    images[:, 30:60, 10:40] = 255
    boxes = torch.full((6, 2, 5), -1.0)
    boxes[:, 0] = torch.tensor([10.0, 30.0, 40.0, 60.0, 1.0])
    torch.manual_seed(3)
    x, targets = BatchBoxAugment(True, hflip=True, vflip=True, scale=(0.8, 1.2), jitter=0.0)(images, boxes)
    assert x.shape == (6, 3, s, s) and x.dtype == torch.float32
    for img, t in zip(x, targets):
        assert t["labels"].tolist() == [1]
        x0, y0, x1, y1 = t["boxes"][0].round().int().tolist()
        inside = img[0, y0 + 2:y1 - 2, x0 + 2:x1 - 2]
        assert inside.numel() and inside.min() > 0.9                      # the box's interior is the white square
        white = (img[0] > 0.9).nonzero()
        assert white[:, 1].min() >= x0 - 2 and white[:, 1].max() <= x1 + 2
        assert white[:, 0].min() >= y0 - 2 and white[:, 0].max() <= y1 + 2


def test_eval_transform_and_unpad():
    images = torch.randint(0, 256, (2, 8, 8, 1), dtype=torch.uint8)
    boxes = torch.tensor([[[1, 1, 4, 4, 0], [-1, -1, -1, -1, -1]], [[-1, -1, -1, -1, -1]] * 2], dtype=torch.float32)
    x, t = BatchBoxAugment(False)(images, boxes)
    assert x.shape == (2, 3, 8, 8) and torch.equal(x[:, 0], x[:, 2])
    assert torch.allclose(x, to_float(images)) and x.max() <= 1
    assert [len(d["labels"]) for d in t] == [1, 0]
    assert unpad(boxes)[0]["boxes"].tolist() == [[1.0, 1.0, 4.0, 4.0]]


def test_match_image_known_answer():
    gt = [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]
    gl = [0, 0, 1]
    pred = [[0, 0, 10, 9],       # TP for gt 0 (IoU 0.9)
            [1, 0, 10, 10],      # duplicate of gt 0: false
            [20, 20, 30, 30],    # right place, wrong class: false, gt 1 missed
            [40, 40, 50, 50]]    # TP for gt 2
    pl, ps = [0, 0, 1, 1], [0.9, 0.8, 0.7, 0.6]
    tp, found = match_image(pred, pl, ps, gt, gl)
    assert tp.tolist() == [True, False, False, True]
    assert found.tolist() == [True, False, True]
    assert image_f1(pred, pl, ps, gt, gl) == pytest.approx(2 * 2 / 7)
    assert image_f1(np.zeros((0, 4)), [], [], np.zeros((0, 4)), []) == 1.0


def test_a_runs_test_map_is_pycocotools_on_its_saved_models_detections(neu_det_run, monkeypatch):
    """The protocol end to end: summary.json's test AP equals pycocotools' COCOeval over the detections the saved
    best model makes on the test split (evaluation threshold, 100 per image), converted here independently."""
    import json

    from test_detection_metrics import pycocotools_reference

    from conftest import DATA
    from visionlab.data import build_splits
    from visionlab.run import load_run

    monkeypatch.setenv("VISIONLAB_DATA", str(DATA))
    run = load_run(neu_det_run, device="cpu")
    test = build_splits(run.cfg.data).test
    preds = []
    targets = [{**t, "iscrowd": torch.zeros(len(t["labels"]), dtype=torch.int64)}
               for t in unpad(torch.from_numpy(test.boxes))]
    for i in range(0, len(test), 8):
        with torch.no_grad():
            preds += run.task.detect(torch.from_numpy(test.images[i:i + 8]), run.cfg.detection.eval_score_threshold)
    stats, _ = pycocotools_reference(preds, targets, len(run.classes))
    s = json.loads((neu_det_run / "summary.json").read_text())
    assert s["evaluation"]["n_images"] == len(test) and s["evaluation"]["max_detections"] == 100
    assert stats[1] > 0                                                # some boxes found: not a 0 == 0 check
    assert s["test/map"] == pytest.approx(stats[0], abs=1e-4)          # AP@[.5:.95]
    assert s["test/map50"] == pytest.approx(stats[1], abs=1e-4)
    assert s["test/map75"] == pytest.approx(max(stats[2], 0.0), abs=1e-4)
