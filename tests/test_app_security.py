"""The web app against hostile input (issue 9): a run folder whose manifest points outside the data root, a
decompression bomb, file names that are spreadsheet formulas, and files left in Gradio's temp folder after closing."""
from __future__ import annotations

import csv
import resource
import shutil
import socket
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import visionlab.app  # noqa: F401  (sets the gradio environment before gradio is imported)

pytest.importorskip("gradio", reason="the web app is the optional extra: pip install -e '.[app]'")
import httpx  # noqa: E402  (comes with gradio)

SECRET = "TOP SECRET: the database password is hunter2\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bomb_png(path: Path, side: int = 12000) -> Path:
    """A grey PNG declaring side x side pixels, written row by row (~140 KB for 12000: no big array in the test)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row, parts = zlib.compressobj(9), b"\0" * (side + 1), []
    for _ in range(side):
        parts.append(z.compress(row))
    parts.append(z.flush())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    return path


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


@pytest.fixture(scope="module")
def hostile(trashnet_run, data_dir, tmp_path_factory):
    """A copy of the TrashNet run whose split_manifest.csv names, besides one real test image, a secret two levels
    above the data root and a symlink leaving it; its data root holds only that image and the symlink."""
    base = tmp_path_factory.mktemp("hostile")
    run = base / "runs" / "trash"
    run.mkdir(parents=True)
    for f in trashnet_run.iterdir():
        if f.is_file():
            shutil.copy(f, run / f.name)
    (run / "checkpoints").symlink_to(trashnet_run / "checkpoints")       # read only; no 180 MB copy
    root = base / "data" / "trashnet"
    for cls in ("glass", "metal", "plastic"):
        (root / cls).mkdir(parents=True)
    shutil.copy(data_dir / "trashnet" / "glass" / "glass120.jpg", root / "glass" / "glass120.jpg")
    (base / "secret.txt").write_text(SECRET)
    shutil.copy(data_dir / "trashnet" / "metal" / "metal123.jpg", base / "outside.jpg")
    (root / "metal" / "link.jpg").symlink_to(base / "outside.jpg")          # a symlink leaving the data root
    (root / "plastic" / "secret.jpg").symlink_to(base / "secret.txt")       # ... with an image's name
    with (run / "split_manifest.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["file", "label", "split"], ["glass/glass120.jpg", "glass", "test"],
                                 ["../../secret.txt", "cardboard", "test"], ["metal/link.jpg", "metal", "test"],
                                 ["plastic/secret.jpg", "plastic", "test"],
                                 [str(base / "secret.txt"), "trash", "test"]])
    return {"base": base, "run": run, "root": root, "secret": base / "secret.txt", "outside": base / "outside.jpg"}


@pytest.fixture(scope="module")
def served(hostile):
    """The app over the hostile run, its Gradio temp folder and the client's downloads kept apart in tmp folders."""
    from gradio_client import Client

    from visionlab.app.main import serve

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONLAB_DATA", str(hostile["base"] / "data"))
        mp.setenv("GRADIO_TEMP_DIR", str(hostile["base"] / "gradio"))
        app = serve([hostile["run"]], port=free_port(), max_upload_mb=1, block=False)
        client = Client(app.url, verbose=False, download_files=str(hostile["base"] / "client"))
        yield app, client
        client.close()
        app.close()


def classify(client, path):
    from gradio_client import handle_file

    label, shown, card, status, files = client.predict(handle_file(str(path)), None, api_name="/classify")
    return {"label": label, "image": shown, "status": status, "files": files}


# ---- 1. a run's manifest cannot make the app serve files outside the data root ---------------------------------

def test_manifest_rows_outside_data_root_are_not_examples(served, hostile):
    app, _ = served
    inside = str((hostile["root"] / "glass" / "glass120.jpg").resolve())
    assert app.runs[0].examples == [inside]                # not ../../secret.txt, an absolute path or the symlinks
    allowed = [str(p) for p in app.demo.allowed_paths]
    assert inside in allowed
    for bad in (hostile["secret"], hostile["outside"]):
        assert str(bad) not in allowed and str(bad.resolve()) not in allowed


def test_secret_is_not_served(served, hostile):
    app, _ = served
    for path in (hostile["secret"], hostile["outside"], hostile["root"] / "metal" / "link.jpg",
                 hostile["root"] / "plastic" / "secret.jpg"):
        r = httpx.get(f"{app.url}gradio_api/file={path}", timeout=30)
        assert r.status_code in (403, 404) and b"hunter2" not in r.content, path
    r = httpx.get(f"{app.url}gradio_api/file={hostile['root'] / 'glass' / 'glass120.jpg'}", timeout=30)
    assert r.status_code == 200                             # the example inside the data root still is


def test_example_files_skips_symlink_loop(hostile, tmp_path):
    from types import SimpleNamespace

    from visionlab.app.infer import example_files
    from visionlab.run import load_run

    cfg = load_run(hostile["run"]).cfg
    (tmp_path / "split_manifest.csv").write_text("file,label,split\nloop/x.jpg,glass,test\n")
    (tmp_path / "data" / "trashnet").mkdir(parents=True)
    (tmp_path / "data" / "trashnet" / "loop").symlink_to(tmp_path / "data" / "trashnet" / "loop")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONLAB_DATA", str(tmp_path / "data"))
        assert example_files(SimpleNamespace(run_dir=tmp_path, cfg=cfg)) == []


# ---- 3. decompression bombs: refused from the header, quickly, without decoding ---------------------------------

def test_bomb_upload_is_refused_quickly(served, hostile):
    _, client = served
    bomb = bomb_png(hostile["base"] / "bomb.png")
    assert bomb.stat().st_size < 300_000                    # small enough to pass the 1 MiB upload limit
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss          # KiB on Linux
    t0 = time.perf_counter()
    out = classify(client, bomb)
    took = time.perf_counter() - t0
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert "Cannot classify bomb.png: too large" in out["status"] and "144.0 Mpx" in out["status"]
    assert "over the 40 Mpx limit" in out["status"] and "VISIONLAB_MAX_PIXELS" in out["status"]
    assert not out["label"] and out["files"] is None
    assert took < 5 and grown_mib < 150, (took, grown_mib)     # was 8 s and 1.4 GB: decoded twice, in full


def test_pixel_limit_from_environment(tmp_path):
    from visionlab.app.upload import TooLarge, open_upload
    from visionlab.utils import ConfigError

    Image.new("RGB", (300, 200), (9, 99, 199)).save(tmp_path / "small.png")
    assert open_upload(tmp_path / "small.png").size == (300, 200)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONLAB_MAX_PIXELS", "50000")
        with pytest.raises(TooLarge, match="300x200 = 0.1 Mpx, over the 0.05 Mpx limit"):
            open_upload(tmp_path / "small.png")
        mp.setenv("VISIONLAB_MAX_PIXELS", "many")
        with pytest.raises(ConfigError, match="VISIONLAB_MAX_PIXELS"):
            open_upload(tmp_path / "small.png")


def test_large_jpeg_is_decoded_reduced(tmp_path):
    from visionlab.app.upload import DECODE_MAX, open_upload

    Image.fromarray(np.full((400, 9000, 3), 120, np.uint8)).save(tmp_path / "wide.jpg", quality=80)
    im = open_upload(tmp_path / "wide.jpg")
    assert DECODE_MAX <= max(im.size) < 2 * DECODE_MAX and im.mode == "RGB"     # JPEG draft: 1/4 while decoding


# ---- 6. file names that a spreadsheet would run as formulas -------------------------------------------------------

@pytest.mark.parametrize("name", ["=1+1.jpg", "+1.jpg", "-1.jpg", "@SUM(A1).jpg"])
def test_formula_file_names_are_escaped_in_csv(served, hostile, data_dir, name):
    _, client = served
    upload = hostile["base"] / "uploads" / name
    upload.parent.mkdir(exist_ok=True)
    shutil.copy(data_dir / "trashnet" / "paper" / "paper101.jpg", upload)
    out = classify(client, upload)
    with open(out["files"][1], newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["file"] == "'" + name for r in rows)


def test_csv_cell():
    from visionlab.app.infer import csv_cell

    assert [csv_cell(s) for s in ("=HYPERLINK(\"http://x\")", "\tx", "\rx", "glass120.jpg", "")] == \
        ["'=HYPERLINK(\"http://x\")", "'\tx", "'\rx", "glass120.jpg", ""]


# ---- 4. nothing left in Gradio's temp folder once the app closes; the webcam stores nothing -------------------

def test_uploads_and_outputs_deleted_on_close(trashnet_run, data_dir, tmp_path):
    from gradio_client import Client

    from visionlab.app.main import serve

    cache = tmp_path / "gradio"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONLAB_DATA", str(data_dir))
        mp.setenv("GRADIO_TEMP_DIR", str(cache))
        app = serve([trashnet_run], port=free_port(), block=False)
        client = Client(app.url, verbose=False, download_files=str(tmp_path / "client"))
        try:
            out = classify(client, data_dir / "trashnet" / "glass" / "glass120.jpg")
            assert out["label"]["label"] and len(out["files"]) == 3
            stored = files_under(cache)
            assert any(p.endswith("/glass120.jpg") for p in stored)             # the upload ...
            assert any(p.endswith("/prediction.csv") for p in stored)           # ... and Gradio's copies of outputs
            assert app.demo.delete_cache                                        # periodic deletion while running
        finally:
            client.close()
            app.close()
    assert files_under(cache) == []
    assert not app.downloads.root.exists()


def test_webcam_stores_nothing(trashnet_run, data_dir, tmp_path):
    import tempfile

    from visionlab.app.infer import Downloads, load_app_runs
    from visionlab.app.main import build_app
    from visionlab.app.tabs.webcam import make_frame_fn

    frame = np.asarray(Image.open(data_dir / "trashnet" / "plastic" / "plastic11.jpg").convert("RGB"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
        mp.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
        (tmp_path / "tmp").mkdir()
        runs = load_app_runs([trashnet_run])
        downloads = Downloads()
        try:
            demo = build_app(runs, downloads)            # (Gradio caches the example images here)
            out = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "webcam-output")
            before = files_under(tmp_path)
            html, label = make_frame_fn(runs)(frame, None)
            shown = out.postprocess(html)                # what Gradio sends to the browser for the frame
            after = files_under(tmp_path)
        finally:
            downloads.close()
    assert label and "data:image/jpeg;base64," in shown
    assert after == before                               # no frame on disk: not in tempfile's nor Gradio's folder
