"""Export (ONNX, int8 ONNX, TorchScript) of a real TrashNet run: accuracy parity, dynamic batch, latency bench,
raw-frame classification and clean CLI errors."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli  # noqa: E402 - the CLI runner, as a user runs it

pytest.importorskip("onnxruntime", reason="export tests need the deploy extra (onnx, onnxruntime)")

PARITY_IMAGES = 64      # a stratified part of the test split: parity on 4 backends stays a few seconds


@pytest.fixture(autouse=True)
def _data_env(monkeypatch, data_dir):
    monkeypatch.setenv("VISIONLAB_DATA", str(data_dir))     # in-process calls rebuild the run's test split


@pytest.fixture(scope="module")
def exported(trashnet_run, tmp_path_factory) -> Path:
    """A private copy of the shared run (best checkpoint, config, summary) exported to every format by the CLI."""
    run = tmp_path_factory.mktemp("export") / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "summary.json", "metrics.csv"):
        shutil.copy(trashnet_run / name, run / name)
    for f in (trashnet_run / "checkpoints").glob("best.*"):
        shutil.copy(f, run / "checkpoints" / f.name)
    r = run_cli("export", str(run), "format=onnx,torchscript", "quantize=int8", "calib=16",
                f"limit={PARITY_IMAGES}", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "onnx-int8" in r.stdout and "torchscript" in r.stdout, r.stdout
    return run


def test_export_parity_onnx_torchscript_int8(exported):
    files = {p.name for p in (exported / "export").iterdir()}
    assert {"model.onnx", "model.int8.onnx", "model.torchscript.pt"} <= files
    res = json.loads((exported / "export.json").read_text())
    assert set(res) == {"onnx", "onnx-int8", "torchscript"}
    for fmt in ("onnx", "torchscript"):
        r = res[fmt]
        assert r["test_images"] == PARITY_IMAGES
        assert r["agree"] >= 0.99, (fmt, r)
        assert abs(r["diff_points"]) <= 0.5, (fmt, r)
        assert math.isclose(r["diff_points"], 100 * (r["top1"] - r["eager_top1"]), abs_tol=1e-9)
        assert r["max_abs_logit_diff"] < 1e-2, (fmt, r)            # fp32 graphs: rounding-level differences
    q = res["onnx-int8"]
    assert 0.0 <= q["top1"] <= 1.0 and 0.0 < q["agree"] <= 1.0 and np.isfinite(q["max_abs_logit_diff"])
    assert q["bytes"] < 0.5 * res["onnx"]["bytes"]                    # int8 weights: about a quarter of fp32
    assert "16 train images" in q["method"]
    import onnxruntime as ort

    for name in ("model.onnx", "model.int8.onnx"):                   # the files describe themselves
        meta = ort.InferenceSession(str(exported / "export" / name)).get_modelmeta().custom_metadata_map
        assert meta["visionlab_task"] == "classification" and len(json.loads(meta["classes"])) == 6, (name, meta)
        assert meta["outputs"] == "logits" and meta["input"].startswith("uint8 NHWC [batch, ") and meta["run"], meta
    assert "score_threshold" not in meta                               # a classifier has no display threshold


def _test_images(run: Path, n: int) -> np.ndarray:
    from visionlab.data import build_splits
    from visionlab.views.export_run import as_run
    from visionlab.run import _eval_loader

    loaded = as_run(run)
    test = build_splits(loaded.cfg.data).test
    images = next(iter(_eval_loader(test.subset(np.arange(n)), loaded.cfg, loaded.info)))[0]
    return images.numpy()


def test_dynamic_batch_one_and_seven(exported):
    from visionlab.deploy.runtime import load_torchscript, onnx_runner, torch_runner
    from visionlab.views.export_run import runner

    images = _test_images(exported, 7)
    eager = runner(exported, "eager")(images)
    backends = {"onnx": onnx_runner(exported / "export" / "model.onnx"),
                "torchscript": torch_runner(load_torchscript(exported / "export" / "model.torchscript.pt")),
                "onnx-int8": onnx_runner(exported / "export" / "model.int8.onnx")}
    for name, fn in backends.items():
        one, seven = fn(images[:1]), fn(images)
        assert one.shape == (1, eager.shape[1]) and seven.shape == eager.shape, name
        np.testing.assert_allclose(seven[:1], one, rtol=1e-4, atol=1e-3 * max(1.0, np.abs(one).max()))
        if name != "onnx-int8":
            np.testing.assert_allclose(seven, eager, rtol=1e-4, atol=1e-3 * max(1.0, np.abs(eager).max()))


def test_bench_writes_all_backends_and_report_shows_tables(exported):
    r = run_cli("bench", str(exported), "batch_sizes=1,4", "iters=3", "warmup=1", "threads=1", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    bench = json.loads((exported / "bench.json").read_text())
    got = {(row["backend"], row["batch_size"]) for row in bench["results"]}
    backends = ("eager-fp32", "eager-bf16-cl", "torchscript", "onnx", "onnx-int8")
    assert got == {(b, bs) for b in backends for bs in (1, 4)}
    for row in bench["results"]:
        assert 0 < row["p50_ms"] <= row["p95_ms"] and row["img_per_s"] > 0 and row["iters"] == 3, row
    m = bench["machine"]
    assert m["cpu"] and m["torch_threads"] == 1 and m["torch"] and m["onnxruntime"]
    md = (exported / "bench.md").read_text()
    assert "ONNX Runtime int8" in md and "channels_last + bf16" in md and md.count("\n| ") >= 11

    rep = run_cli("report", str(exported))
    assert rep.returncode == 0, rep.stderr[-3000:]
    text = (exported / "report.md").read_text()
    assert "## Export and latency" in text and "same argmax" in text and "ONNX Runtime fp32" in text
    assert "Export and latency" in (exported / "report.html").read_text()


def test_frame_classifier_eager_matches_onnx_and_predict_on_real_files(exported, data_dir):
    from visionlab.views.export_run import frame_classifier
    from visionlab.run import predict

    files = sorted((data_dir / "trashnet").glob("*/*.jpg"))[::400][:5]
    assert len(files) == 5
    frames = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    frames.append(frames[0][10:90, 5:200])                 # any size: a non-square crop, letterboxed like the data
    eager_fn, classes = frame_classifier(exported, "eager")
    onnx_fn, classes_onnx = frame_classifier(exported, "onnx")
    pe, po = eager_fn(frames), onnx_fn(frames)
    assert classes == classes_onnx and pe.shape == (6, len(classes)) == po.shape
    np.testing.assert_allclose(pe.sum(1), 1.0, atol=1e-5)
    assert (pe.argmax(1) == po.argmax(1)).all()
    np.testing.assert_allclose(pe, po, atol=1e-4)
    # the same preprocessing as the data pipeline: file decode + letterbox + resize in visionlab.predict
    top = predict(exported, [str(f) for f in files], topk=1)
    assert [t[0][0] for t in top] == [classes[i] for i in pe[:5].argmax(1)]
    np.testing.assert_allclose([t[0][1] for t in top], pe[:5].max(1), atol=1e-5)
    assert eager_fn([]).shape == (0, len(classes))


def test_cli_bad_input_is_a_clean_error(tmp_path, exported):
    from visionlab.cli.deploy import cmd_bench, cmd_export
    from visionlab.utils import ConfigError

    not_run = tmp_path / "not_a_run"
    not_run.mkdir()
    for args, message in [(("export", str(not_run)), "not a run directory"),
                          (("export", str(exported), "format=tflite"), "format must be onnx or torchscript")]:
        r = run_cli(*args)                                     # as a user runs it: message, exit code, no traceback
        assert r.returncode != 0, (args, r.stdout)
        assert message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr[-2000:])
    for cmd, args, message in [(cmd_export, ["format=torchscript", "quantize=int8"], "ONNX only"),
                               (cmd_export, ["opset=x"], "opset must be an integer"),
                               (cmd_bench, ["batch_sizes=0"], "batch_sizes must be"),
                               (cmd_bench, ["backends=tensorrt"], "unknown 'tensorrt'")]:
        with pytest.raises(ConfigError, match=message):         # options are checked before the run is loaded
            cmd(["ignored_dir", *args])
    with pytest.raises(Exception, match="not a run directory"):
        cmd_bench([str(not_run)])


def _copy_run(exported: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(exported, run)                     # copy2: mtimes kept, so the exports are not stale
    return run


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_is_loaded_only_as_the_file_export_wrote(exported, tmp_path):
    """A TorchScript archive holds pickled code: runs load model.torchscript.pt only when its sha256 matches the
    one export.json recorded; a swapped or unlisted file is refused, a file the user names is loaded."""
    import torch

    from visionlab.deploy.runtime import file_sha256, load_torchscript
    from visionlab.views.export_run import runner
    from visionlab.utils import UserError

    run = _copy_run(exported, tmp_path)
    path = run / "export" / "model.torchscript.pt"
    record = json.loads((run / "export.json").read_text())
    assert record["torchscript"]["sha256"] == file_sha256(path)
    assert record["onnx"]["sha256"] == file_sha256(run / "export" / "model.onnx")
    images = _test_images(run, 2)
    assert runner(run, "torchscript")(images).shape[0] == 2          # our own file loads

    class Other(torch.nn.Module):                                   # someone else's archive, dropped in its place
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.float().mean(dim=(1, 2))

    torch.jit.save(torch.jit.script(Other()), str(path))
    with pytest.raises(UserError, match="pickled code"):
        runner(run, "torchscript")
    assert load_torchscript(path)(torch.zeros(1, 4, 4, 3, dtype=torch.uint8)).shape == (1, 3)   # named by the user

    del record["torchscript"]["sha256"]
    (run / "export.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="no sha256 for it in export.json"):
        runner(run, "torchscript")


@pytest.mark.parametrize("flags,emulated", [({"fpu", "avx", "avx2", "fma"}, True),
                                            ({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, False)])
def test_bench_says_when_bf16_is_emulated(exported, tmp_path, monkeypatch, flags, emulated):
    from visionlab.deploy import latency
    from visionlab.views.bench_run import bench_run, format_bench

    monkeypatch.setattr(latency, "cpu_flags", lambda: set(flags))       # an AVX2-only or a native-bf16 CPU
    run = _copy_run(exported, tmp_path)
    result = bench_run(run, [1], iters=1, warmup=0, backends=("eager-fp32", "eager-bf16-cl"))
    bench = json.loads((run / "bench.json").read_text())
    assert bench["machine"]["bf16_native"] is (not emulated)
    rows = {r["backend"]: r for r in bench["results"]}
    assert ("emulated" in rows["eager-bf16-cl"].get("note", "")) is emulated and "note" not in rows["eager-fp32"]
    md = (run / "bench.md").read_text()
    assert ("bf16 emulated" in md and "Note: eager channels_last + bf16 autocast: bf16 is emulated" in md) is emulated
    assert ("bf16 is emulated" in format_bench(result)) is emulated
