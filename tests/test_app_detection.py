"""A detection run in the web app: the Image tab's drawn boxes, detections table and downloads are visionlab.predict's
own boxes in the image's pixels (over HTTP, gradio_client); the score slider only hides boxes; a bad upload gets a
message; the webcam's frame view draws the boxes and gives every class its best score; a classifier and a detector
share one page."""
from __future__ import annotations

import csv
import json
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import visionlab.app  # noqa: F401  (sets the gradio environment before gradio is imported)

pytest.importorskip("gradio", reason="the web app is the optional extra: pip install -e '.[app]'")
from visionlab import api  # noqa: E402

NEU_DET = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
THRESHOLD = 0.05            # the run's display threshold: low, so a one-epoch detector shows boxes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def det_run(neu_det_run) -> Path:
    return neu_det_run


@pytest.fixture(scope="module")
def photo(data_dir) -> Path:
    return data_dir / "neu_det" / "images" / "crazing_1.jpg"


@pytest.fixture(scope="module")
def served(det_run, data_dir, tmp_path_factory):
    """The app over the detection run with its own Gradio temp folder; (app, client)."""
    from gradio_client import Client

    from visionlab.app.main import serve

    base = tmp_path_factory.mktemp("det_app")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONLAB_DATA", str(data_dir))
        mp.setenv("GRADIO_TEMP_DIR", str(base / "gradio"))
        app = serve([det_run], port=free_port(), max_upload_mb=1, block=False)
        client = Client(app.url, verbose=False, download_files=str(base / "client"))
        yield app, client
        client.close()
        app.close()


def detect(client, path, threshold=THRESHOLD, model=None) -> dict:
    from gradio_client import handle_file

    shown, table, summary, status, files = client.predict(handle_file(str(path)), model, threshold,
                                                          api_name="/detect")
    return {"image": shown, "table": table, "summary": summary, "status": status, "files": files}


def test_upload_gives_predicts_boxes_drawn_listed_and_downloadable(served, det_run, photo, tmp_path):
    _, client = served
    want = api.predict(det_run, [photo])[0]
    assert len(want["boxes"]) > 0 and (want["scores"] >= THRESHOLD).all()
    upload = tmp_path / f"=HYPERLINK(1)_{photo.name}"          # a file name a spreadsheet would run as a formula
    upload.write_bytes(photo.read_bytes())
    out = detect(client, upload)

    rows = out["table"]["data"]
    assert out["table"]["headers"] == ["class", "score", "x0", "y0", "x1", "y1"]
    assert [r[0] for r in rows] == want["classes"]
    assert np.allclose([r[1] for r in rows], want["scores"], atol=5e-4)
    assert np.allclose([r[2:] for r in rows], want["boxes"], atol=0.05)         # the image's pixels, not the canvas

    picture = np.asarray(Image.open(photo).convert("RGB"))
    shown = np.asarray(Image.open(out["image"]))
    assert shown.shape == picture.shape and (shown != picture).any(axis=2).mean() > 0.01    # boxes drawn
    counts = {c: want["classes"].count(c) for c in set(want["classes"])}
    assert f"**{len(rows)} boxes**" in out["status"] and all(c in out["summary"] for c in counts)
    assert "rgb(" in out["summary"]                                              # the class colours

    record_json, record_csv, annotated = (Path(f) for f in out["files"])
    assert (record_json.name, record_csv.name, annotated.name) == ("prediction.json", "prediction.csv",
                                                                   "annotated.png")
    record = json.loads(record_json.read_text())
    assert record["file"] == upload.name and record["image_size"] == [200, 200]
    assert record["score_threshold"] == THRESHOLD and record["classes"] == NEU_DET and record["counts"] == counts
    assert [d["class"] for d in record["detections"]] == want["classes"]
    assert np.array_equal([d["box"] for d in record["detections"]], want["boxes"])      # unrounded
    assert np.array_equal([d["score"] for d in record["detections"]], want["scores"])
    with open(record_csv, newline="") as f:
        lines = list(csv.DictReader(f))
    assert [float(r["x0"]) for r in lines] == want["boxes"][:, 0].tolist()
    assert all(r["file"] == "'" + upload.name for r in lines)                       # formula escaped
    assert np.array_equal(np.asarray(Image.open(annotated)), shown)


def test_threshold_slider_only_hides_boxes(served, det_run, photo):
    _, client = served
    want = api.predict(det_run, [photo])[0]
    cut = float(np.median(want["scores"]))
    high = detect(client, photo, threshold=cut)
    assert [r[0] for r in high["table"]["data"]] == [c for c, p in zip(want["classes"], want["scores"]) if p >= cut]
    assert f">= {cut:.2f}" in high["status"]
    low = detect(client, photo, threshold=0.0)                     # below the run's threshold: predict's boxes
    assert len(low["table"]["data"]) == len(want["boxes"]) and f">= {THRESHOLD:.2f}" in low["status"]
    none = detect(client, photo, threshold=1.0)
    assert none["table"]["data"] in ([], [["", "", "", "", "", ""]]) and "**no boxes**" in none["status"]
    assert "lower the threshold" in none["status"]
    assert json.loads(Path(none["files"][0]).read_text())["detections"] == []


def test_bad_upload_gets_message(served, tmp_path):
    _, client = served
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture\n" * 10)
    out = detect(client, bad)
    assert "Cannot detect objects in notes.png" in out["status"] and "not an image" in out["status"]
    assert out["image"] is None and out["files"] is None


def test_page_header_and_no_cards(served):
    import httpx

    app, _ = served
    page = httpx.get(app.url + "config", timeout=30).text
    assert "test map" in page and "detection" in page
    assert app.runs[0].guide is None                                          # no guide cards for boxes


def test_boxes_of_a_reduced_decode_are_scaled_to_the_file(det_run, photo):
    """open_upload decodes a very large file reduced: the boxes are scaled to the file's own size."""
    from visionlab.app.infer import AppRun, detect_image

    app_run = AppRun("det", api.load_run(det_run))
    im = Image.open(photo)
    small, big = detect_image(app_run, im), detect_image(app_run, im, (2 * im.width, 3 * im.height))
    assert np.allclose(big["boxes"], small["boxes"] * [2, 3, 2, 3]) and np.array_equal(big["scores"], small["scores"])


def test_frame_view_draws_boxes_and_scores_every_class(det_run, photo, tmp_path):
    from test_app import data_url_image

    from visionlab.app.infer import AppRun
    from visionlab.app.tabs.tasks import tab_for
    from visionlab.app.tabs.webcam import make_frame_fn

    run = api.load_run(det_run)
    app_run = AppRun("det", run)
    frame = np.asarray(Image.open(photo).convert("RGB"))
    Image.fromarray(frame).save(tmp_path / "frame.png")
    want = api.predict(run, [tmp_path / "frame.png"])[0]
    shown, scores = tab_for("detection").frame_view(app_run, frame)
    assert shown.shape == frame.shape and shown.dtype == np.uint8 and (shown != frame).any()
    assert list(scores) == NEU_DET and all(0.0 <= v <= 1.0 for v in scores.values())
    assert max(scores, key=scores.get) == want["classes"][0] and scores[want["classes"][0]] == pytest.approx(
        float(want["scores"][0]))
    assert all(scores[c] == 0.0 for c in NEU_DET if c not in want["classes"])
    html, bars = make_frame_fn([app_run])(frame, None)                 # the webcam's handler: inline JPEG, bars
    assert bars == scores and data_url_image(html).shape == frame.shape


def test_classification_and_detection_share_a_page(trashnet_run, det_run, data_dir):
    from visionlab.app.infer import Downloads, load_app_runs
    from visionlab.app.main import build_app

    runs = load_app_runs([trashnet_run, det_run])
    downloads = Downloads()
    try:
        config = build_app(runs, downloads).get_config_file()
        tabs = [c["props"].get("label") for c in config["components"] if c["type"] == "tabitem"]
        assert tabs[:2] == ["Image: classification", "Image: detection"]
        assert {d["api_name"] for d in config["dependencies"]} >= {"classify", "detect", "webcam_frame"}
    finally:
        downloads.close()
