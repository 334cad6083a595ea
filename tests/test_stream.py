"""Real-time video: HOG people on vtest.avi through the CLI (log, stats, written video), a TrashNet image folder through
a run's classifier (same labels as `visionlab predict`, eager and ONNX), faces, the sweep, and clean failures."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from conftest import run_cli
from visionlab.deploy.detectors import HaarFaces, build_detector, nms
from visionlab.deploy.stream import STAGES, explain
from visionlab.deploy.video import FrameSource, display_available, parse_size, target_size
from visionlab.utils import ConfigError, UserError

cv2 = pytest.importorskip("cv2", reason='the video stream needs opencv-python-headless<5')


def _rows(out) -> list[dict]:
    with (out / "frames.csv").open() as f:
        return list(csv.DictReader(f))


def _video_frames(path) -> tuple[int, tuple[int, int]]:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    cap.release()
    return n, size


def test_hog_finds_people_in_vtest_and_logs_every_stage(data_dir, tmp_path):
    video = data_dir / "video" / "vtest.avi"
    out = tmp_path / "hog"
    # HOG's 64x128 window needs vtest's people at native size (~100 px tall); 30 frames keep the test short
    r = run_cli("stream", str(video), "detector=hog", "max_frames=30", f"out={out}", "display=auto", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "infer" in r.stdout and "true fps" in r.stdout
    rows = _rows(out)
    assert len(rows) == 30
    counts = [int(x["detections"]) for x in rows]
    assert sum(c >= 1 for c in counts) >= 0.8 * len(rows), counts       # people walk through every frame
    for x in rows:
        assert all(float(x[f"{s}_ms"]) > 0 for s in STAGES), x
        assert float(x["total_ms"]) >= sum(float(x[f"{s}_ms"]) for s in STAGES) - 0.01
        boxes = [b.split() for b in x["boxes"].split(";") if b]
        assert len(boxes) == int(x["detections"]) and all(b[5] == "person" for b in boxes)
        assert all(0 <= float(b[0]) < float(b[2]) <= 768 + 64 and float(b[1]) < float(b[3]) for b in boxes)
    s = json.loads((out / "stream.json").read_text())
    assert s["frames"] == 30 and s["timed_frames"] == 29 and s["source_kind"] == "file"
    assert s["requested_fps"] == pytest.approx(10.0) and s["capture"] == [768, 576]     # the file's own rate, size
    for st in (*STAGES, "total"):
        assert 0 < s["stages_ms"][st]["p50"] <= s["stages_ms"][st]["p95"]
    assert s["dominant_stage"] == "infer" and s["true_fps"] > 0
    assert s["explanation"].startswith(f"{s['true_fps']:.1f} fps") and "infer dominates" in s["explanation"]
    n, size = _video_frames(s["video"])
    assert s["video"].startswith(str(out)) and n == 30 and size == (768, 576)


def test_sweep_capture_by_input_size(data_dir, tmp_path):
    out = tmp_path / "sweep"
    r = run_cli("stream", str(data_dir / "video" / "vtest.avi"), "sweep=true", "capture=768,384", "input=768,384",
                "max_frames=8", f"out={out}", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    with (out / "sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    # 384-wide capture: an input of 768 would only upscale, so it is skipped
    assert [(x["capture"], x["input"]) for x in rows] == [("768x576", "768"), ("768x576", "384"), ("384x288", "384")]
    assert all(float(x["true_fps"]) > 0 and x["frames"] == "7" for x in rows)
    det = {(x["capture"], x["input"]): float(x["detections_mean"]) for x in rows}
    assert det[("768x576", "768")] >= 1.0 > det[("768x576", "384")]      # people shrink under HOG's window
    assert "| capture | input | true fps |" in (out / "sweep.md").read_text()


def test_image_folder_through_the_classifier_matches_predict(trashnet_run, data_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    names = ["glass/glass10.jpg", "paper/paper10.jpg", "metal/metal10.jpg", "cardboard/cardboard10.jpg"]
    for n in names:
        shutil.copy(data_dir / "trashnet" / n, folder / n.replace("/", "_"))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    from visionlab import api

    want = [top[0][0] for top in api.predict(trashnet_run, sorted(str(p) for p in folder.glob("*10.jpg")), topk=1)]
    for backend in ("eager", "onnx"):
        out = tmp_path / backend
        r = run_cli("stream", str(folder), f"run={trashnet_run}", f"backend={backend}", f"out={out}",
                    "display=false", timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        rows = _rows(out)
        assert [x["label"] for x in rows] == want, backend        # the data pipeline's own preprocessing
        assert all(0 < float(x["score"]) <= 1 and x["detections"] == "0" for x in rows)
        s = json.loads((out / "stream.json").read_text())
        assert s["skipped_images"] == ["broken.jpg"] and s["requested_fps"] is None and s["classifier"] == backend
        assert _video_frames(s["video"])[0] == len(names)


def test_faces_haar_and_mtcnn_agree_on_a_photo(data_dir):
    im = cv2.imread(str(data_dir / "coco128" / "images" / "train2017" / "000000000536.jpg"))   # three women
    haar = build_detector("haar").detect(im)
    assert len(haar) == 3 and all(d[5] == "face" for d in haar)
    pytest.importorskip("facenet_pytorch", reason="MTCNN is optional: pip install --no-deps facenet-pytorch requests")
    mtcnn = build_detector("mtcnn").detect(im)
    assert len(mtcnn) == 3 and all(d[4] >= 0.9 for d in mtcnn)
    for h in haar:                                             # each Haar face overlaps one MTCNN face
        assert max(_iou(h, m) for m in mtcnn) > 0.4


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_mtcnn_missing_falls_back_to_haar(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "facenet_pytorch", None)     # import now raises ImportError
    said = []
    det = build_detector("mtcnn", log=said.append)
    assert isinstance(det, HaarFaces) and "facenet-pytorch" in said[0] and "Haar" in said[0]


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], float)
    assert list(nms(boxes, np.array([-1.0, 2.0, 0.5]), 0.45)) == [1, 2]       # negative scores rank too
    assert list(nms(boxes[:1], np.array([0.0]), 0.45)) == [0]                  # a lone box survives
    assert len(nms(np.zeros((0, 4)), np.zeros(0), 0.45)) == 0


def test_explanation_names_the_stage_and_what_the_rate_needs():
    stages = {s: {"mean": 1.0} for s in STAGES}
    stages["infer"]["mean"] = 90.0                       # 95 ms per frame at ~10.5 fps
    text = explain(stages, 1000 / 95, 25)
    assert "infer dominates with 90.0 ms" in text and "<= 40.0 ms per frame" in text
    assert "must drop from 90.0 to 35.0 ms" in text and "input=WIDTH" in text
    assert "meets the requested 10 fps" in explain(stages, 1000 / 95, 10)
    stages["write"]["mean"] = 50.0                       # the rest alone is over a 25 fps budget
    assert "other stages take" in explain(stages, 1000 / 145, 25)
    assert "No rate was requested" in explain(stages, 1000 / 95, None)


def test_sizes_and_bad_sources_fail_cleanly(data_dir, tmp_path, capsys):
    assert parse_size("640x480") == (640, 480) and parse_size("320") == 320 and parse_size(None) is None
    assert target_size(384, 768, 576) == (384, 288)
    for bad in ("640x", "-3", "big"):
        with pytest.raises(ConfigError, match="WIDTHxHEIGHT"):
            parse_size(bad)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a video")
    from visionlab.cli.stream import cmd_stream

    cases = {str(tmp_path / "missing.avi"): "video source not found", str(tmp_path / "empty"): "no images found",
             str(tmp_path / "notes.txt"): "cannot decode", "7": "no camera at index 7"}
    for source, message in cases.items():
        with pytest.raises(UserError, match=message):
            FrameSource(source)
    video = str(data_dir / "video" / "vtest.avi")
    with pytest.raises(UserError, match="unknown detector 'hogg'; did you mean 'hog'"):
        cmd_stream([video, "detector=hogg", f"out={tmp_path / 'x'}"])
    with pytest.raises(ConfigError, match="unknown option 'frames'"):
        cmd_stream([video, "frames=3"])
    if not display_available():                                  # headless OpenCV, or no DISPLAY
        with pytest.raises(UserError, match="no window can open"):
            cmd_stream([video, "display=true", "max_frames=1", f"out={tmp_path / 'x'}"])
    with pytest.raises(UserError, match="nothing to run"):
        cmd_stream([video, "detector=none", f"out={tmp_path / 'x'}"])
    from visionlab.cli import main                                # as a user sees it: a message, exit 1

    assert main(["stream", str(tmp_path / "missing.avi"), "detector=hog"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: video source not found") and "Traceback" not in err


def test_video_replaces_the_previous_one_only_when_complete(tmp_path):
    """A killed stream leaves the previous video whole: frames go to a hidden partial file renamed on close."""
    from visionlab.deploy.video import VideoWriter

    frames = [np.full((48, 64, 3), 40 * i, np.uint8) for i in range(5)]
    first = VideoWriter(tmp_path / "stream", 10)
    for f in frames[:3]:
        first.write(f)
    path = first.close()
    assert _video_frames(path)[0] == 3 and [p.name for p in tmp_path.iterdir()] == [path.name]

    second = VideoWriter(tmp_path / "stream", 10)
    for f in frames:
        second.write(f)
    assert _video_frames(path)[0] == 3          # mid-stream (or killed here): the old video is intact
    assert second.close() == path and _video_frames(path)[0] == 5
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
