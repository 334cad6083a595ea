"""Generative runs through the faces, on a tiny conditional DCGAN and a tiny DDPM trained once: ONNX export with pixel
parity (`visionlab export RUN format=onnx`), other formats refused, the app's Generate tab (classes, seeds, steps,
downloads) and a generated example beside a guide card."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import visionlab.app  # noqa: F401  (sets the gradio environment before gradio is imported)
from visionlab import api
from visionlab.utils import UserError

from conftest import run_cli, shared_run

pytest.importorskip("gradio", reason="the web app is the optional extra: pip install -e '.[app]'")

TINY = ["data.name=mnist5k", "data.limit=200", "train.epochs=1", "train.batch_size=50", "fid.samples=50",
        "fid.val_samples=20", "fid.kid_subset_size=10", "fid.kid_subsets=2", "train.progress=false",
        "train.threads=1", "train.tensorboard=false"]


@pytest.fixture(scope="module")
def gan_run(data_dir, tmp_path_factory) -> Path:
    """A class-conditional DCGAN on 200 MNIST digits, one epoch, small widths."""
    return shared_run(tmp_path_factory, "gen_cgan", "task=dcgan", "dcgan.conditional=true", "dcgan.width=16",
                      "dcgan.latent_dim=32", *TINY)


@pytest.fixture(scope="module")
def ddpm_run(data_dir, tmp_path_factory) -> Path:
    """An unconditional DDPM (8-16 channel U-Net with attention, 100 timesteps, 4 DDIM steps), one epoch."""
    return shared_run(tmp_path_factory, "gen_ddpm", "task=ddpm", "ddpm.width=8", "ddpm.channel_mults=[1,2]",
                      "ddpm.timesteps=100", "ddpm.sample_steps=4", *TINY)


@pytest.fixture(scope="module")
def app_runs(gan_run, ddpm_run):
    from visionlab.app.infer import Downloads, load_app_runs

    downloads = Downloads()
    yield load_app_runs([gan_run, ddpm_run]), downloads
    downloads.close()


@pytest.mark.parametrize("which, file", [("gan_run", "generator.onnx")])   # DDPM: tests/test_tasks.py
def test_onnx_export_pixel_parity(request, which, file):
    from visionlab.deploy.runtime import file_sha256

    run = request.getfixturevalue(which)
    r = run_cli("export", str(run), "format=onnx")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"wrote {run}/export/{file}" in r.stdout and "uint8 pixels equal" in r.stdout
    rec = json.loads((run / "export.json").read_text())["onnx"]
    assert rec["file"] == f"export/{file}" and rec["metric"] == "pixels"
    assert rec["sha256"] == file_sha256(run / rec["file"]) and rec["bytes"] == (run / rec["file"]).stat().st_size
    assert rec["agree"] > 0.99 and rec["agree_1"] > 0.999 and rec["max_abs_diff"] < 1e-3
    assert rec["inputs"] == (["z", "labels"] if which == "gan_run" else ["x", "t"])
    if which == "ddpm_run":                  # the whole sampler ran with the ONNX Runtime denoiser
        assert rec["steps"] == 4 and "DDIM" in rec["check"]


@pytest.mark.parametrize("args", [["format=torchscript"], ["format=onnx", "quantize=int8"]])
def test_other_formats_refused(gan_run, args, capsys):
    from visionlab.cli.main import main

    assert main(["export", str(gan_run), *args]) != 0            # in-process: the CLI's own error path
    err = capsys.readouterr().err
    assert err.startswith("error: a generative run (task=dcgan) is exported to ONNX only")
    assert "format=onnx" in err and not (gan_run / "export" / "model.torchscript.pt").exists()


def test_export_run_points_to_generative_export(gan_run):
    from visionlab.views.export_run import export_run

    with pytest.raises(UserError, match="format=onnx"):
        export_run(gan_run, ["onnx"])


def test_generate_tab_class_seed_and_downloads(app_runs):
    from visionlab.app.tabs.generate import make_generate_files

    runs, downloads = app_runs
    gan = runs[0]
    cls = gan.run.classes[7]
    images, files, status = make_generate_files(runs, downloads)(gan.name, 5, 3, cls, None)
    assert len(images) == 5 and all(im.shape == tuple(gan.run.info.image_size) for im in images)
    assert f"class {cls}" in status
    want = api.generate(gan.run, 5, 3, cls)                     # the chosen class, the chosen seed
    assert np.array_equal(np.stack(images), want[..., 0])
    again, _, _ = make_generate_files(runs, downloads)(gan.name, 5, 3, cls, None)
    assert all(np.array_equal(a, b) for a, b in zip(images, again))
    other, _, _ = make_generate_files(runs, downloads)(gan.name, 5, 4, cls, None)
    assert not np.array_equal(np.stack(images), np.stack(other))
    grid, archive = map(Path, files)
    assert grid.name == "grid.png" and Image.open(grid).size[0] > 28
    with zipfile.ZipFile(archive) as zf:
        pngs = sorted(n for n in zf.namelist() if n.endswith(".png"))
        record = json.loads(zf.read("samples.json"))
        first = np.asarray(Image.open(io.BytesIO(zf.read(pngs[0]))))
    assert len(pngs) == 5 and record["seed"] == 3 and record["class"] == cls and record["run"] == "gen_cgan"
    assert np.array_equal(first, images[0])


@pytest.mark.filterwarnings("ignore:Cannot generate")     # gr.Warning outside a request is a UserWarning
def test_generate_tab_bad_input_is_a_message(app_runs):
    from visionlab.app.tabs.generate import make_generate, make_generate_files

    runs, downloads = app_runs
    images, files, status = make_generate_files(runs, downloads)(runs[0].name, 2, 0, "cat", None)
    assert images is None and files is None
    assert "'cat' is not one of this run's classes" in status and "0, 1, 2" in status
    with pytest.raises(UserError, match="Images must be a whole number from 1 to 16"):
        make_generate(runs)(runs[0].name, 0, 0)
    assert "not class-conditional" in make_generate_files(runs, downloads)(runs[1].name, 2, 0, "7", None)[2]


def test_generate_tab_steps_change_ddpm_output(app_runs):
    from visionlab.app.tabs.generate import make_generate

    runs, _ = app_runs
    ddpm = runs[1]
    sample = make_generate(runs)
    default, four, two = (np.stack(sample(ddpm.name, 2, 0, "any", s)) for s in (None, 4, 2))
    assert default.shape == (2, *ddpm.run.info.image_size)
    assert np.array_equal(default, four)                        # the run's ddpm.sample_steps=4
    assert not np.array_equal(four, two)


def test_generate_tab_controls_follow_the_run(app_runs):
    from visionlab.app.main import build_app
    from visionlab.app.tabs.generate import make_controls

    runs, downloads = app_runs
    demo = build_app(runs, downloads)
    by_id = {getattr(c, "elem_id", None): c for c in demo.blocks.values()}
    picker, steps = by_id["generate-class"], by_id["generate-steps"]
    assert picker.visible and [c[0] for c in picker.choices] == ["any", *runs[0].run.classes]
    assert not steps.visible and by_id["generate-run"].visible
    classes, steps = make_controls(runs)(runs[1].name)         # the DDPM: unconditional, DDIM steps
    assert not classes.visible and steps.visible and steps.value == 4


def test_guide_card_shows_a_generated_example(app_runs):
    import base64
    import re

    from visionlab.app.infer import EXAMPLE_SEED, AppRun, card_with_example, link_generators

    runs, _ = app_runs
    gan = runs[0]
    guide = {"title": "Digits", "note": "", "path": "digits.yaml", "name": "digits.yaml",
             "classes": {c: {"summary": f"the digit {c}"} for c in gan.run.classes}}
    clf = AppRun("clf", SimpleNamespace(classes=list(gan.run.classes), task=SimpleNamespace(generates=False)),
                 guide=guide)
    stranger = AppRun("other", SimpleNamespace(classes=["a", "b"], task=SimpleNamespace(generates=False)),
                      guide={**guide, "classes": {"a": {"summary": "A"}}})
    link_generators([clf, stranger, *runs])
    assert clf.generator is gan and stranger.generator is None      # the DDPM is unconditional: never linked
    card = card_with_example(clf, "3")
    assert "the digit 3" in card and "gen_cgan" in card
    data = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', card).group(1)
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))
    assert np.array_equal(shown, api.generate(gan.run, 1, EXAMPLE_SEED, "3")[0, ..., 0])
    assert card_with_example(stranger, "a") == "### Digits: a\n\nA"
