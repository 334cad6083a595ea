"""A segmentation run in the web app and the video stream: the Image tab's overlay, per-class areas and downloads are
visionlab.predict's own numbers (over HTTP, gradio_client); examples come from the run's test split; the webcam
overlays each frame; a classification and a segmentation run share one page; the stream draws the mask on every
frame with the same per-stage table, and its labels are predict's largest class."""
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
from conftest import run_cli  # noqa: E402
from visionlab import api  # noqa: E402
from visionlab.utils import UserError  # noqa: E402

CAMVID = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
          "Bicyclist"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


@pytest.fixture(scope="session")
def camvid_run(data_dir, tmp_path_factory) -> Path:
    """A tiny LR-ASPP on real CamVid pairs (24 per split, short side 64, one epoch, ~20 s on one thread). Its masks
    are poor; what the tests check is that the app and the stream give predict's own answers."""
    out = tmp_path_factory.mktemp("camvid_runs")
    r = run_cli("train", "task=segmentation", "data.name=camvid", "model.name=lraspp_lite0", "model.pretrained=true",
                "data.image_size=64", "data.limit=24", "train.epochs=1", "segmentation.crop_size=[64,64]",
                "train.threads=1", "train.progress=false", "train.tensorboard=false", f"out_dir={out}",
                "name=camvid", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return Path(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def served(camvid_run, data_dir, tmp_path_factory):
    """The app over the CamVid run with its own Gradio temp folder; (app, client, temp folder)."""
    from gradio_client import Client

    from visionlab.app.main import serve

    base = tmp_path_factory.mktemp("seg_app")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONLAB_DATA", str(data_dir))
        mp.setenv("GRADIO_TEMP_DIR", str(base / "gradio"))
        app = serve([camvid_run], port=free_port(), max_upload_mb=1, block=False)
        client = Client(app.url, verbose=False, download_files=str(base / "client"))
        yield app, client, base / "gradio"
        client.close()
        app.close()


def segment(client, path, model=None) -> dict:
    from gradio_client import handle_file

    areas, shown, legend, status, files = client.predict(handle_file(str(path)), model, api_name="/segment")
    return {"areas": areas, "image": shown, "legend": legend, "status": status, "files": files}


def test_upload_gives_overlay_and_areas_of_api_predict(served, camvid_run, data_dir, tmp_path):
    app, client, _ = served
    image = Path(app.runs[0].examples[0])                     # a CamVid test image
    want = api.predict(camvid_run, [image])[0]
    upload = tmp_path / f"=HYPERLINK(1)_{image.name}"         # a file name a spreadsheet would run as a formula
    upload.write_bytes(image.read_bytes())
    out = segment(client, upload)
    got = {c["label"]: c["confidence"] for c in out["areas"]["confidences"]}
    assert got == want["areas"] and out["areas"]["label"] == max(want["areas"], key=want["areas"].get)
    assert abs(sum(got.values()) - 1) < 1e-9 and set(got) <= set(CAMVID)
    assert out["areas"]["label"] in out["status"] and "lraspp" not in out["legend"]
    assert all(c in out["legend"] for c in want["areas"]) and "rgb(" in out["legend"]      # the colour legend
    mask_png, overlay_png, areas_json, areas_csv = (Path(f) for f in out["files"])
    assert (mask_png.name, overlay_png.name) == ("mask.png", "overlay.png")
    mask = Image.open(mask_png)
    assert mask.mode == "P" and np.array_equal(np.asarray(mask), want["mask"])   # class ids, predict's mask
    photo = np.asarray(Image.open(image).convert("RGB"))
    shown = np.asarray(Image.open(out["image"]))
    assert shown.shape == photo.shape and np.array_equal(np.asarray(Image.open(overlay_png)), shown)
    assert np.abs(shown.astype(int) - photo).mean() > 5                            # the mask is blended in
    record = json.loads(areas_json.read_text())
    assert {a["class"]: a["share"] for a in record["areas"]} == want["areas"] and record["file"] == upload.name
    with open(areas_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["class"]: float(r["share"]) for r in rows} == want["areas"]
    assert all(r["file"] == "'" + upload.name for r in rows)                        # formula escaped


def test_bad_upload_gets_message(served, tmp_path):
    _, client, _ = served
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture\n" * 10)
    out = segment(client, bad)
    assert "Cannot segment notes.png" in out["status"] and "not an image" in out["status"]
    assert not out["areas"] and out["image"] is None and out["files"] is None


def test_examples_and_header(served, camvid_run, data_dir):
    import httpx

    app, _, _ = served
    examples = app.runs[0].examples
    with (camvid_run / "split_manifest.csv").open() as f:
        test_rows = {r["file"] for r in csv.DictReader(f) if r["split"] == "test"}
    root = (data_dir / "camvid").resolve()
    assert examples and all(Path(p).is_relative_to(root) for p in examples)
    assert all(str(Path(p).relative_to(root)) in test_rows for p in examples)
    page = httpx.get(app.url + "config", timeout=30).text
    assert "test miou" in page and "guide" not in page.split("Webcam")[0].lower()     # no recycling cards here
    assert app.runs[0].guide is None


def test_uploads_and_downloads_deleted_on_close(camvid_run, data_dir, tmp_path):
    from gradio_client import Client

    from visionlab.app.main import serve

    cache = tmp_path / "gradio"
    image = next((data_dir / "camvid" / "images" / "test").iterdir())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONLAB_DATA", str(data_dir))
        mp.setenv("GRADIO_TEMP_DIR", str(cache))
        app = serve([camvid_run], port=free_port(), block=False)
        client = Client(app.url, verbose=False, download_files=str(tmp_path / "client"))
        try:
            out = segment(client, image)
            assert len(out["files"]) == 4 and any(p.endswith("/overlay.png") for p in files_under(cache))
        finally:
            client.close()
            app.close()
    assert files_under(cache) == [] and not app.downloads.root.exists()


def test_webcam_overlays_each_frame(camvid_run, data_dir, tmp_path):
    from test_app import data_url_image

    from visionlab.app.infer import AppRun
    from visionlab.app.tabs.webcam import make_frame_fn

    run = api.load_run(camvid_run)
    frame = np.asarray(Image.open(next((data_dir / "camvid" / "images" / "test").iterdir())).convert("RGB"))
    html, areas = make_frame_fn([AppRun("camvid", run)])(frame, None)
    Image.fromarray(frame).save(tmp_path / "frame.png")
    assert areas == api.predict(run, [tmp_path / "frame.png"])[0]["areas"]
    shown = data_url_image(html)
    assert shown.shape == frame.shape and np.abs(shown.astype(int) - frame).mean() > 5


def test_classification_and_segmentation_share_a_page(trashnet_run, camvid_run, data_dir):
    from visionlab.app.infer import Downloads, load_app_runs
    from visionlab.app.main import build_app
    from visionlab.app.tabs.tasks import TASK_TABS, tab_for

    runs = load_app_runs([trashnet_run, camvid_run])
    downloads = Downloads()
    try:
        demo = build_app(runs, downloads)
        config = demo.get_config_file()
        tabs = [c["props"].get("label") for c in config["components"] if c["type"] == "tabitem"]
        assert tabs[:2] == ["Image: classification", "Image: segmentation"]
        assert {d["api_name"] for d in config["dependencies"]} >= {"classify", "segment", "webcam_frame"}
    finally:
        downloads.close()
    assert list(TASK_TABS) == ["classification", "ssl", "dg", "segmentation", "detection"]   # classifiers share a tab
    with pytest.raises(UserError, match="the app shows classification, ssl, dg, segmentation, detection runs.*"
                                        "not task=keypoints"):
        tab_for("keypoints")


def test_stream_draws_the_mask_on_each_frame(camvid_run, data_dir, tmp_path):
    cv2 = pytest.importorskip("cv2", reason="the video stream needs opencv-python-headless<5")
    folder = tmp_path / "photos"                  # lossless copies: the stream and predict decode the same pixels
    folder.mkdir()
    names = sorted((data_dir / "camvid" / "images" / "test").iterdir())[:3]
    for p in names:
        Image.open(p).save(folder / f"{p.stem}.png")
    out = tmp_path / "stream"
    r = run_cli("stream", str(folder), f"run={camvid_run}", f"out={out}", "display=false", "threads=1", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "infer" in r.stdout and "true fps" in r.stdout                          # the per-stage table
    with (out / "frames.csv").open() as f:
        rows = list(csv.DictReader(f))
    want = api.predict(camvid_run, sorted(folder.iterdir()))
    assert [x["label"] for x in rows] == [max(w["areas"], key=w["areas"].get) for w in want]   # the largest class
    assert [float(x["score"]) for x in rows] == pytest.approx([max(w["areas"].values()) for w in want], abs=1e-4)
    s = json.loads((out / "stream.json").read_text())
    assert s["classifier"] == "eager" and s["video_frames"] == 3
    cap = cv2.VideoCapture(s["video"])
    ok, first = cap.read()
    cap.release()
    photo = cv2.imread(str(folder / f"{names[0].stem}.png"))
    assert ok and first.shape == photo.shape and np.abs(first.astype(int) - photo).mean() > 5   # overlay drawn


def test_stream_refuses_a_task_without_frame_model(camvid_run, monkeypatch):
    from visionlab.views import stream_run

    monkeypatch.delitem(stream_run.FRAME_MODELS, "segmentation")
    with pytest.raises(UserError, match=r"stream runs classification, ssl, dg, detection runs, not task=segmentation"):
        stream_run.build_frame_model(camvid_run)
