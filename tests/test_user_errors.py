"""User mistakes end in one line that names the file or key and the fix (exit 1, or 2 for config values), never a
traceback: out-of-range values, non-UTF-8 YAML, one-class folders, link loops, bad predict arguments, decompression
bombs, read-only and full output folders."""
from __future__ import annotations

import errno
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from visionlab import cli
from visionlab.data import decode
from visionlab.data.folder import scan_folder


def _one_line_error(r, code: int) -> str:
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def _bomb_png(path: Path, w: int, h: int) -> Path:
    """A valid grayscale PNG of w x h zeros: a few hundred KB on disk, w*h bytes once decoded."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    rows = zlib.compress(b"".join(b"\0" + bytes(w) for _ in range(h)), 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) +
                     chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


def _folder(root: Path, classes=("a", "b"), n=6, sizes=((8, 8),)) -> Path:
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(n):
            h, w = sizes[(i + k) % len(sizes)]
            Image.fromarray(np.full((h, w, 3), 20 * i + 100 * k, np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.fixture
def cli_run():
    """conftest's run_cli: a real `python -m visionlab` subprocess (the `cli` fixture's name is taken here)."""
    from conftest import run_cli

    return run_cli


@pytest.fixture
def main_run(capsys):
    """cli.main in this process (no interpreter and torch start-up per call); a CompletedProcess-like result.
    An exception escaping cli.main (what a user would see as a traceback) fails the test."""
    def run(*args: str):
        code = cli.main(list(args))
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A real run: the embedded MNIST demo on 100 images, one epoch (about 15 s)."""
    from conftest import run_cli

    out = tmp_path_factory.mktemp("runs")
    r = run_cli("train", "data.limit=100", "train.epochs=1", "train.threads=1", "train.progress=false",
                "train.tensorboard=false", f"out_dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    return Path(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory) -> Path:
    """Enough of a run folder for the argument checks that come before the run is loaded."""
    run = tmp_path_factory.mktemp("run")
    (run / "config.yaml").write_text("name: fake\n")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(run / "img.png")
    return run


# ---------------------------------------------------------------- item 7 / 10: ranges at config time

@pytest.mark.parametrize("arg, key", [("train.epochs=0", "train.epochs"), ("train.epochs=-1", "train.epochs"),
                                      ("train.batch_size=0", "train.batch_size"), ("optim.lr=0", "optim.lr")])
def test_out_of_range_values_fail_before_anything_runs(main_run, tmp_path, arg, key):
    line = _one_line_error(main_run("train", arg, f"out_dir={tmp_path / 'runs'}"), 2)
    assert f"{key}=" in line and "out of range" in line and "e.g." in line
    assert not (tmp_path / "runs").exists()            # no half-made run folder


def test_batch_size_0_from_the_command_line(cli_run, tmp_path):
    line = _one_line_error(cli_run("train", "train.batch_size=0", f"out_dir={tmp_path / 'runs'}"), 2)
    assert "train.batch_size=0 is out of range: it must be >= 1" in line       # was a ZeroDivisionError traceback
    assert not (tmp_path / "runs").exists()


def test_fractions_and_counts_are_checked_in_config():
    from visionlab import config as C
    from visionlab.utils import ConfigError

    for bad in ("data.val_fraction=1", "data.val_fraction=-0.1", "data.mix_prob=1.5", "train.label_smoothing=1",
                "train.eval_batch_size=0", "optim.lr=nan", "model.drop_path=1", "data.limit=-1"):
        with pytest.raises(ConfigError, match="out of range"):
            C.load_config(None, [bad])
    C.load_config(None, ["data.val_fraction=0", "data.mix_prob=1", "train.label_smoothing=0.1"])   # edges allowed


def test_one_class_folder_exit_2(main_run, tmp_path):
    root = _folder(tmp_path / "ds", classes=("only",))
    line = _one_line_error(main_run("train", "data.name=folder", f"data.root={root}", f"out_dir={tmp_path}"), 2)
    assert str(root) in line and "at least 2 classes" in line


def test_one_class_task_refused():
    from visionlab import config as C
    from visionlab.data.base import DataInfo
    from visionlab.tasks import TASKS
    from visionlab.utils import ConfigError
    import torch

    info = DataInfo(["only"], 1, (28, 28), (0.5,), (0.25,))
    with pytest.raises(ConfigError, match="at least 2 classes"):
        TASKS.get("classification")(C.load_config(None), info, torch.Generator())


# ---------------------------------------------------------------- item 10: files and folders

def test_non_utf8_yaml(main_run, tmp_path):
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    line = _one_line_error(main_run("train", str(cfg)), 2)
    assert str(cfg) in line and "UTF-8" in line


def test_symlink_loop_is_skipped_and_listed(main_run, tmp_path):
    root = _folder(tmp_path / "ds")
    (root / "a" / "back").symlink_to("..")                 # a/back/a/back/... : ELOOP before this fix
    (root / "b" / "me").symlink_to("me")                   # a link to itself
    listing = scan_folder(root)
    assert len(listing.entries) == 12
    reasons = {Path(i["file"]).name: i["reason"] for i in listing.ignored}
    assert "link loop" in reasons["back"] and "symbolic link" in reasons["me"]
    r = main_run("data", "check", str(root))
    assert r.returncode == 0 and f"{root / 'a' / 'back'}: ignored: symbolic link" in r.stdout, r.stdout


def test_predict_arguments(cli_run, main_run, fake_run, tmp_path):
    line = _one_line_error(cli_run("predict", str(fake_run), str(tmp_path / "nope.png")), 1)
    assert "nope.png" in line and "not found" in line and "corrupt" not in line
    for k in ("0", "-1"):
        line = _one_line_error(main_run("predict", str(fake_run), str(fake_run / "img.png"), f"topk={k}"), 2)
        assert f"topk={k}" in line and ">= 1" in line


def test_missing_image_reason_says_not_found(tmp_path):
    assert decode.try_load(str(tmp_path / "nope.png"), {})[1] == "file not found"


def test_report_on_truncated_errors_npz(main_run, tmp_path):
    from test_report import make_run

    run = make_run(tmp_path / "run")
    data = (run / "errors.npz").read_bytes()
    (run / "errors.npz").write_bytes(data[: len(data) // 2])
    r = main_run("report", str(run))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "errors.npz could not be read" in (run / "report.md").read_text()


def _ro_prefix(mnt: Path, opts: str) -> list[str] | None:
    """Run inside a private mount namespace with a tmpfs at ``mnt`` (root only); None where that is not allowed."""
    if not shutil.which("unshare"):
        return None
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o {opts} tmpfs {mnt}"], capture_output=True)
    return None if probe.returncode else ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o {opts} tmpfs {mnt} && "$@"',
                                          "sh"]


@pytest.mark.parametrize("opts, words", [("ro", "read-only"), ("size=200k", "no space")])
def test_read_only_or_full_runs_folder(tmp_path, opts, words):
    from conftest import run_cli

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    prefix = _ro_prefix(mnt, opts)
    if prefix is None:
        pytest.skip("needs unshare -m (root) to mount a read-only or tiny tmpfs")
    r = run_cli("train", "data.limit=100", "train.epochs=1", "train.threads=1", "train.progress=false",
                "train.tensorboard=false", f"out_dir={mnt / 'runs'}", prefix=prefix)
    line = _one_line_error(r, 1)
    assert str(mnt / "runs") in line and words in line and "out_dir=" in line


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space"), (errno.EACCES, "permission"),
                                         (errno.EROFS, "read-only"), (errno.ELOOP, "symbolic links")])
def test_file_system_errors_in_cli_main(monkeypatch, capsys, code, words):
    def fail(args):
        raise OSError(code, "boom", "/some/runs/x")

    monkeypatch.setitem(cli.MODES, "train", fail)
    assert cli.main(["train"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: /some/runs/x: ") and words in err and "\n" not in err


def test_other_os_errors_are_not_hidden(monkeypatch):
    monkeypatch.setitem(cli.MODES, "train", lambda args: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError):
        cli.main(["train"])


# ---------------------------------------------------------------- item 3: decompression bombs

def test_predict_refuses_a_bomb_naming_the_env_var(cli_run, tiny_run, tmp_path):
    bomb = _bomb_png(tmp_path / "bomb.png", 12000, 12000)
    line = _one_line_error(cli_run("predict", str(tiny_run), str(bomb)), 1)
    assert "bomb.png" in line and "too large" in line and "VISIONLAB_MAX_PIXELS" in line


def test_mixed_sizes_get_a_default_size_recorded_in_the_run(cli_run, tmp_path):
    from visionlab import load_run

    root = _folder(tmp_path / "mixed", sizes=((20, 16), (16, 20)))
    r = cli_run("train", "data.name=folder", f"data.root={root}", "data.split='4:1:1'", "train.epochs=1",
                "train.threads=1", "train.progress=false", "train.tensorboard=false", f"out_dir={tmp_path / 'runs'}",
                f"data.cache_dir={tmp_path / 'cache'}")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    said = [ln for ln in r.stdout.splitlines() if ln.startswith("data.image_size=")]
    assert len(said) == 1 and "224" in said[0] and "16x20" in said[0], r.stdout
    run_dir = Path(r.stdout.strip().splitlines()[-1])
    assert run_dir.name == "mixed-mnist_cnn"                         # item 15: named after the data and model
    assert load_run(run_dir).cfg.data.image_size == 224              # the checkpoint's config records it


def test_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    import resource

    bomb = _bomb_png(tmp_path / "bomb.png", 12000, 12000)         # 144 Mpx, ~140 KB on disk
    assert bomb.stat().st_size < 500_000
    monkeypatch.delenv(decode.MAX_PIXELS_ENV, raising=False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    arr, reason = decode.try_load(str(bomb), {})
    assert arr is None and "too large" in reason and decode.MAX_PIXELS_ENV in reason
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000      # KB: nothing decoded
    assert decode.max_pixels() == decode.MAX_PIXELS == 40_000_000


def test_pixel_limit_env_var(tmp_path, monkeypatch):
    img = tmp_path / "img.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(img)
    monkeypatch.setenv(decode.MAX_PIXELS_ENV, "1000")
    assert decode.max_pixels() == 1000
    assert "40x30 = 0.0 Mpx" in decode.verify(img)
    monkeypatch.setenv(decode.MAX_PIXELS_ENV, "0")                 # 0: no limit
    assert decode.verify(img) is None
    monkeypatch.setenv(decode.MAX_PIXELS_ENV, "lots")
    from visionlab.utils import ConfigError

    with pytest.raises(ConfigError, match=decode.MAX_PIXELS_ENV):
        decode.try_load(str(img), {})


def test_bomb_in_a_dataset_is_skipped_and_listed(tmp_path):
    from visionlab.config import DataConfig
    from visionlab.data import build_splits

    root = _folder(tmp_path / "ds")
    _bomb_png(root / "a" / "bomb.png", 9000, 9000)               # 81 Mpx: under Pillow's own error, over ours
    s = build_splits(DataConfig(name="folder", root=str(root), cache_dir=str(tmp_path / "c")))
    skipped = {Path(k["file"]).name: k["reason"] for k in s.skipped}
    assert "too large" in skipped["bomb.png"] and len(s.train) + len(s.test) + len(s.val or []) == 12
