"""The web app in a real browser: headless Debian Chromium driven by Playwright against `visionlab app` in a
subprocess. Upload a photo and see the predicted class, stream Chromium's fake camera through the Webcam tab,
visit the Generate tab, keep a screenshot of each tab."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from visionlab import api

pytest.importorskip("gradio", reason="the web app is the optional extra: pip install -e '.[app]'")
import httpx  # noqa: E402  (comes with gradio)

CHROMIUM = Path("/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_url(trashnet_run, data_dir, tmp_path):
    """`visionlab app RUN port=N` as a user starts it; the URL once it answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "visionlab", "app", str(trashnet_run), f"port={port}"]
    log = (tmp_path / "app.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "VISIONLAB_DATA": str(data_dir)})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"visionlab app exited ({proc.returncode}):\n{(tmp_path / 'app.log').read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"visionlab app did not answer on {url}:\n{(tmp_path / 'app.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium; its absence is a failure that says how to install it (before the app is started)."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: install Debian's Chromium with `apt-get install chromium` "
                    "(`make test` does it as root); the browser test never downloads a browser")
    return CHROMIUM


def _browser(p, chromium: Path):
    # a fake camera (a test pattern) and auto-accepted permission prompts, so the Webcam tab can stream headless
    return p.chromium.launch(executable_path=str(chromium), headless=True,
                             args=["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    with Image.open(path) as im:
        assert im.width > 100 and im.height > 100


@pytest.mark.slow
def test_browser_tabs(chromium, app_url, trashnet_run, data_dir, tmp_path):
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: install the test extras (pip install -e '.[test]')")
    photo = data_dir / "trashnet" / "glass" / "glass120.jpg"
    top = api.predict(trashnet_run, [photo], topk=1)[0][0][0]
    with sync_playwright() as p:
        browser = _browser(p, chromium)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(app_url)
        expect(page.get_by_role("heading", name="visionlab")).to_be_visible()

        page.locator("#image-upload input[type=file]").set_input_files(str(photo))
        expect(page.locator("#image-status")).to_contain_text(f"{top} (")
        expect(page.locator("#image-label")).to_contain_text(top)
        expect(page.locator("#image-card")).to_contain_text("Which bin")
        page.screenshot(path=str(tmp_path / "image.png"), full_page=True)

        page.get_by_role("tab", name="Webcam").click()
        page.locator("#webcam-input").get_by_text("Click to Access Webcam").click()
        page.locator("#webcam-input").get_by_role("button", name="capture photo").click()     # Record: stream
        expect(page.locator("#webcam-output img")).to_be_visible()          # an annotated frame came back
        expect(page.locator("#webcam-label")).to_contain_text("%")
        page.screenshot(path=str(tmp_path / "webcam.png"), full_page=True)

        page.get_by_role("tab", name="Generate").click()
        expect(page.locator("#generate-message")).to_contain_text("No generative run loaded")
        page.screenshot(path=str(tmp_path / "generate.png"), full_page=True)
        browser.close()
    for name in ("image", "webcam", "generate"):
        _assert_png(tmp_path / f"{name}.png")
