"""Detection runs after training: ONNX / TorchScript export (one letterboxed canvas -> boxes, scores, labels), mAP
parity against eager, the live video loop's FrameDetector (boxes back on the frame) and `visionlab stream run=...`.
One tiny NEU-DET FCOS run (24 images, 1 epoch) is trained once for the module."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from visionlab.data import build_splits
from visionlab.deploy.stream import STAGES
from visionlab.utils import UserError
from visionlab.views.export_run import as_run, export, export_path, runner

pytest.importorskip("onnxruntime", reason="ONNX export is checked under ONNX Runtime")
cv2 = pytest.importorskip("cv2", reason='the video stream needs opencv-python-headless<5')

BOX_TOL = 1e-3          # px on a 200 px canvas: the ONNX Runtime and eager graphs differ by float32 rounding (~3e-4)


@pytest.fixture(scope="module")
def det_run(neu_det_run):
    return neu_det_run


@pytest.fixture(scope="module")
def loaded(det_run):
    return as_run(det_run)


def test_onnx_outputs_equal_eager_detections_on_test_images(loaded):
    export(loaded, "onnx")
    eager, onnx = runner(loaded, "eager"), runner(loaded, "onnx")
    test = build_splits(loaded.cfg.data).test
    assert test.images is not None and test.images.shape[1:3] == (200, 200)
    seen = 0
    for image in test.images[:6]:
        (b0, s0, l0), (b1, s1, l1) = eager(image[None]), onnx(image[None])
        assert b1.dtype == np.float32 and l1.dtype == np.int64 and b1.shape == (len(s1), 4)
        assert len(b0) == len(b1) <= loaded.cfg.detection.max_detections
        # detections with equal scores may come out in either order: pair each eager detection with an unused ONNX
        # one of the same class, box within BOX_TOL and score within 1e-5
        free = np.ones(len(b1), bool)
        for b, sc, lab in zip(b0, s0, l0):
            close = free & (l1 == lab) & (np.abs(b1 - b).max(1) <= BOX_TOL) & (np.abs(s1 - sc) <= 1e-5)
            assert close.any(), f"no ONNX detection matches eager {lab} {sc:.5f} {b}"
            free[np.flatnonzero(close)[0]] = False
        assert l1.min(initial=0) >= 0 and l1.max(initial=0) < len(loaded.classes)
        seen += len(b0)
    assert seen > 0                                    # scores >= the evaluation threshold (0.01) are kept
    import onnxruntime as ort

    meta = ort.InferenceSession(str(export_path(loaded.run_dir, "onnx"))).get_modelmeta().custom_metadata_map
    p = loaded.cfg.detection                           # the file says which of its detections to show
    assert float(meta["score_threshold"]) == p.score_threshold and float(meta["min_score"]) == p.eval_score_threshold
    assert json.loads(meta["classes"]) == loaded.classes and meta["visionlab_task"] == "detection"
    assert meta["outputs"] == "boxes, scores, labels" and float(meta["nms_iou"]) == p.nms_iou


def test_export_cli_parity_is_map_and_backends_agree(det_run):
    r = run_cli("export", str(det_run), "format=onnx,torchscript", "limit=16", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "eager map" in r.stdout and "max|dbox|px" in r.stdout
    results = json.loads((det_run / "export.json").read_text())
    for fmt in ("onnx", "torchscript"):
        parity = results[fmt]
        assert parity["metric"] == "map" and parity["test_images"] == 16
        assert 0.0 <= parity["eager_map"] <= 1.0
        assert abs(parity["diff_points"]) <= 0.1
        assert parity["agree"] > 0.99 and parity["eager_detections"] > 0
        assert parity["max_box_diff_px"] <= BOX_TOL


def test_int8_is_refused_with_the_formats_that_work(loaded):
    with pytest.raises(UserError, match="format=onnx"):
        export(loaded, "onnx-int8")
    assert not export_path(loaded.run_dir, "onnx-int8").exists()


def test_frame_detector_maps_boxes_back_to_frame_pixels(loaded, data_dir):
    from visionlab.run import predict
    from visionlab.views.stream_run import build_frame_model

    photo = Image.open(data_dir / "neu_det" / "images" / "scratches_1.jpg").convert("RGB")
    frame_rgb = np.asarray(photo.resize((320, 240), Image.BILINEAR))      # wider than high, not the canvas size
    want = predict(loaded, [frame_rgb])[0]
    model = build_frame_model(loaded, "eager")
    got = model.postprocess(model.infer(model.preprocess(np.ascontiguousarray(frame_rgb[..., ::-1]))))
    assert len(want["boxes"]) > 0
    np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-2)
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-5)
    np.testing.assert_array_equal(got["labels"], want["labels"])
    assert got["boxes"][:, 0::2].max() <= 320 and got["boxes"][:, 1::2].max() <= 240
    assert model.summary(got) == (want["classes"][0], pytest.approx(float(want["scores"][0])))
    rows = model.boxes(got)
    assert len(rows) == len(want["boxes"]) and rows[0][5] == want["classes"][0]
    frame = np.zeros((240, 320, 3), np.uint8)
    model.draw(frame, got)
    assert frame.any()                                  # boxes drawn in the class colours


@pytest.mark.parametrize("backend", ["eager", "onnx"])
def test_stream_cli_runs_the_detector_with_the_stage_table(det_run, data_dir, tmp_path, backend):
    out = tmp_path / backend
    r = run_cli("stream", str(data_dir / "video" / "vtest.avi"), f"run={det_run}", f"backend={backend}",
                "detector=none", "max_frames=5", "threads=1", "display=false", f"out={out}", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "infer" in r.stdout and "true fps" in r.stdout
    with (out / "frames.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and all(float(row[f"{s}_ms"]) >= 0 for row in rows for s in STAGES)
    for row in rows:                                    # the box count and the boxes themselves agree
        boxes = [b for b in row["boxes"].split(";") if b]
        assert int(row["detections"]) == len(boxes)
        assert all(0 <= float(v) <= 768 for b in boxes for v in b.split()[:4])
    summary = json.loads((out / "stream.json").read_text())
    assert set(STAGES) <= set(summary["stages_ms"]) and summary["classifier"] == backend
    assert summary["frames"] == 5 and summary["true_fps"] > 0
