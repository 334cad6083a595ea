"""The web app over HTTP (gradio_client): same probabilities as visionlab.predict, bad uploads answered with a message
while the server stays up, the upload limit, recycling cards, downloads, the webcam handler, the guide lookup and its
schema. Hostile input (bombs, manifests pointing outside, formula file names, leftovers): test_app_security.py."""
from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import visionlab.app  # noqa: F401  (sets the gradio environment before gradio is imported)

pytest.importorskip("gradio", reason="the web app is the optional extra: pip install -e '.[app]'")
import httpx  # noqa: E402  (comes with gradio)
from visionlab import api
from visionlab.utils import ConfigError, UserError

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "configs" / "trashnet_guide.yaml"
CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(trashnet_run, data_dir):
    """The app on a free local port, in this process, with a 1 MiB upload limit; the guide found by lookup."""
    from visionlab.app.main import serve

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONLAB_DATA", str(data_dir))      # where the run's test-split examples lie
        app = serve([trashnet_run], port=free_port(), max_upload_mb=1, block=False)
        yield app
        app.close()


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served.url, verbose=False)


def classify(client, path, model=None):
    from gradio_client import handle_file

    label, shown, card, status, files = client.predict(handle_file(str(path)), model, api_name="/classify")
    return {"label": label, "image": shown, "card": card, "status": status, "files": files}


def data_url_image(html: str) -> np.ndarray:
    """The picture of the first <img src="data:image/...;base64,..."> in an HTML string."""
    import base64
    import io
    import re

    data = re.search(r'src="data:image/[a-z]+;base64,([A-Za-z0-9+/=]+)"', html).group(1)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


def test_safe_defaults(served):
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert served.url.startswith("http://127.0.0.1:")
    assert served.demo.max_file_size == 2**20


def test_probabilities_equal_api_predict(client, trashnet_run, data_dir):
    image = data_dir / "trashnet" / "glass" / "glass120.jpg"
    out = classify(client, image)
    want = api.predict(trashnet_run, [image], topk=6)[0]
    got = [(c["label"], c["confidence"]) for c in out["label"]["confidences"]]
    assert got == want[:5]                      # same decoding and preprocessing: the very same numbers
    assert out["label"]["label"] == want[0][0]
    assert want[0][0] in out["status"]
    record = json.loads(Path(out["files"][0]).read_text())
    assert [(p["class"], p["probability"]) for p in record["predictions"]] == want
    assert record["file"] == "glass120.jpg" and record["run"] == trashnet_run.name   # no server path
    with open(out["files"][1], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["class"], float(r["probability"])) for r in rows] == want
    annotated = np.asarray(Image.open(out["files"][2]))
    photo = np.asarray(Image.open(image))
    assert annotated.shape == photo.shape
    assert annotated[-8:, 2:10].mean() < photo[-8:, 2:10].mean()      # the dark banner with the label text


def test_card_of_predicted_class(client, trashnet_run, data_dir):
    guide = yaml.safe_load(GUIDE.read_text())["classes"]
    image = data_dir / "trashnet" / "cardboard" / "cardboard105.jpg"
    top = api.predict(trashnet_run, [image], topk=1)[0][0][0]
    card = classify(client, image)["card"]
    assert f": {top}" in card and guide[top]["bin"] in card
    assert guide[top]["not_accepted"][0] in card and "not tied to one city" in card


@pytest.mark.parametrize("kind, reason", [("text", "not an image"), ("empty", "empty file"),
                                          ("truncated", "truncated")])
def test_bad_upload_gets_message_and_server_stays_up(client, tmp_path, data_dir, kind, reason):
    real = (data_dir / "trashnet" / "paper" / "paper101.jpg").read_bytes()
    bad = tmp_path / f"{kind}.jpg"
    bad.write_bytes({"text": b"this is a text file, not a photo\n" * 20, "empty": b"",
                     "truncated": real[: len(real) // 2]}[kind])
    out = classify(client, bad)
    assert f"Cannot classify {kind}.jpg" in out["status"] and reason in out["status"]
    assert not out["label"] and out["image"] is None and out["files"] is None
    ok = classify(client, data_dir / "trashnet" / "paper" / "paper101.jpg")
    assert ok["label"]["label"] in CLASSES and ok["files"]


def test_upload_limit(served, client, tmp_path, data_dir):
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 2**20
    with pytest.raises(ValueError, match="exceeds the maximum file size"):     # gradio_client checks first ...
        classify(client, big)
    r = httpx.post(f"{served.url}gradio_api/upload", files={"files": ("big.png", big.read_bytes())}, timeout=60)
    assert r.status_code == 413                                              # ... and the server refuses it
    assert classify(client, data_dir / "trashnet" / "metal" / "metal123.jpg")["label"]["label"] in CLASSES


def test_examples_from_run_test_split(served, trashnet_run):
    files = served.runs[0].examples
    with (trashnet_run / "split_manifest.csv").open() as f:
        test_rows = {r["file"] for r in csv.DictReader(f) if r["split"] == "test"}
    assert len(files) == 6 and sorted(Path(p).parent.name for p in files) == CLASSES
    assert all(f"{Path(p).parent.name}/{Path(p).name}" in test_rows for p in files)
    page = httpx.get(served.url + "config", timeout=30).text
    assert all(f"{Path(p).parent.name}/{Path(p).name}" in page for p in files)       # the example labels
    assert httpx.get(f"{served.url}gradio_api/file={files[0]}", timeout=30).content == Path(files[0]).read_bytes()
    other = Path(files[0]).parent / "not_an_example.jpg"         # only the example files are served, not the folder
    assert httpx.get(f"{served.url}gradio_api/file={other}", timeout=30).status_code in (403, 404)


def test_model_picker_with_two_runs(trashnet_run, data_dir):
    from visionlab.app.infer import Downloads, load_app_runs
    from visionlab.app.main import build_app
    from visionlab.app.tabs.image import make_classify

    runs = load_app_runs([trashnet_run, trashnet_run])
    names = [r.name for r in runs]
    assert len(set(names)) == 2
    downloads = Downloads()
    try:
        demo = build_app(runs, downloads)
        picker = next(c for c in demo.blocks.values() if getattr(c, "elem_id", None) == "model-picker")
        assert picker.visible and [c[0] for c in picker.choices] == names
        label, _, _, status, files = make_classify(runs, downloads)(str(data_dir / "trashnet/trash/trash112.jpg"),
                                                                    names[1])
        assert f"model `{names[1]}`" in status and json.loads(Path(files[0]).read_text())["model"] == names[1]
    finally:
        downloads.close()
    assert not downloads.root.exists()


def test_webcam_frame(trashnet_run, data_dir, tmp_path):
    from visionlab.app.infer import AppRun
    from visionlab.app.tabs.webcam import make_frame_fn

    run = api.load_run(trashnet_run)
    frame = np.asarray(Image.open(data_dir / "trashnet" / "plastic" / "plastic11.jpg").convert("RGB"))
    html, label = make_frame_fn([AppRun("trash", run)])(frame, None)
    Image.fromarray(frame).save(tmp_path / "frame.png")
    want = api.predict(run, [tmp_path / "frame.png"], topk=5)[0]
    assert label == dict(want)
    shown = data_url_image(html)                 # the annotated frame travels inline, as a JPEG data URL
    assert shown.shape == frame.shape
    assert shown[-8:, 2:10].mean() < frame[-8:, 2:10].mean()


def test_generate_tab(trashnet_run):
    from types import SimpleNamespace

    from visionlab.app.infer import AppRun
    from visionlab.app.tabs.generate import how_to_enable, make_generate

    msg = how_to_enable()
    assert "No generative run" in msg and "task=vae" in msg and "classification" in msg
    assert not AppRun("trash", api.load_run(trashnet_run)).generative

    class Sampler:                      # the contract a generative task offers the tab
        generates = True

        def generate(self, n, seed):
            return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)

    gen = AppRun("gen", SimpleNamespace(task=Sampler()))
    assert gen.generative
    images = make_generate([gen])("gen", 3, 7)
    assert len(images) == 3 and images[0].shape == (8, 8)
    assert np.array_equal(images[0], make_generate([gen])("gen", 3, 7)[0])


def test_guide_lookup(tmp_path):
    from visionlab.app.guide import card_markdown, find_guide, load_guide

    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "waste_guide.yaml").write_text("classes: {bottle: {bin: Glass bank}}\n")
    (run / "env.json").write_text(json.dumps({"argv": ["visionlab", "train", "exp/waste.yaml", "seed=1"],
                                              "cwd": str(tmp_path)}))
    assert find_guide(run, "waste") == tmp_path / "exp" / "waste_guide.yaml"          # beside the config
    assert find_guide(run, "trashnet") == GUIDE                                        # configs/ of the checkout
    assert find_guide(run, "nothing_like_this") is None
    assert find_guide(run, "waste", GUIDE) == GUIDE                                    # guide=PATH wins
    with pytest.raises(UserError, match="no such file"):
        find_guide(run, "waste", tmp_path / "missing.yaml")
    assert "Glass bank" in card_markdown(load_guide(tmp_path / "exp" / "waste_guide.yaml"), "bottle")
    (tmp_path / "bad.yaml").write_text("classes: {bottle: {colour: green}}\n")
    with pytest.raises(UserError, match="unknown key"):
        load_guide(tmp_path / "bad.yaml")


def test_trashnet_guide_is_complete():
    from visionlab.app.guide import card_markdown, load_guide

    guide = load_guide(GUIDE)
    assert sorted(guide["classes"]) == CLASSES
    for cls, card in guide["classes"].items():
        assert card["bin"] and card["summary"]
        assert all(len(card[k]) >= 2 for k in ("accepted", "prepare", "not_accepted"))
        assert all(isinstance(item, str) for k in ("accepted", "prepare", "not_accepted") for item in card[k])
        assert "{'" not in card_markdown(guide, cls)                   # no list item shown as a dict
    assert "- Keep it dry; wet cardboard loses its fibre value" in card_markdown(guide, "cardboard")


def test_guide_list_item_with_colon_is_refused(tmp_path):
    from visionlab.app.guide import load_guide

    bad = tmp_path / "waste_guide.yaml"
    bad.write_text("classes:\n  cardboard:\n    prepare:\n      - Flatten boxes\n"
                   "      - Keep it dry: wet cardboard loses its fibre value\n")
    with pytest.raises(UserError, match=r"waste_guide.yaml: class 'cardboard', prepare item 2 is not text but "
                                        r"\{'Keep it dry': 'wet cardboard loses its fibre value'\}.*quote the item"):
        load_guide(bad)
    bad.write_text("classes:\n  cardboard:\n    prepare: Flatten boxes\n")
    with pytest.raises(UserError, match="prepare must be a list of text items"):
        load_guide(bad)
    quoted = "Keep it dry: wet cardboard loses its fibre value"
    bad.write_text(f'classes:\n  cardboard:\n    prepare:\n      - "{quoted}"\n')
    assert load_guide(bad)["classes"]["cardboard"]["prepare"] == [quoted]


def test_header_names_the_guide_file_only(served):
    from visionlab.app.main import header_markdown

    header = header_markdown(served.runs)
    assert "guide `trashnet_guide.yaml`" in header and str(GUIDE.parent) not in header
    page = httpx.get(served.url + "config", timeout=30).text
    assert "trashnet_guide.yaml" in page and str(GUIDE) not in page        # the server's path is not shown


def test_cli_options():
    from visionlab.cli.app import parse

    opts = parse(["runs/a", "runs/b", "port=8000", "max_upload_mb=2.5", "share=false"])
    assert opts == {"run_dirs": ["runs/a", "runs/b"], "host": "127.0.0.1", "port": 8000, "guide": None,
                    "max_upload_mb": 2.5, "share": False}
    for bad, err in [([], UserError), (["r", "port=x"], ConfigError), (["r", "port=0"], ConfigError),
                     (["r", "max_upload_mb=-1"], ConfigError), (["r", "share=maybe"], ConfigError),
                     (["r", "prot=1"], ConfigError)]:
        with pytest.raises(err):
            parse(bad)
