"""Export a run (ONNX, int8 ONNX, TorchScript) with accuracy parity on its test split, and run any backend on raw
frames (frame_classifier, used by the video stream). Files go to RUN_DIR/export/; RUN_DIR/export.json records each
file's sha256 when it is written (a TorchScript file is loaded only when it still matches) and the parity."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from visionlab.data import build_splits
from visionlab.data.decode import convert_array, letterbox, to_rgb_or_l, try_load
from visionlab.data.split import limit_indices
from visionlab.deploy.export import DEFAULT_OPSET, export_onnx, export_torchscript, quantize_onnx
from visionlab.metrics.segmentation import SegmentationMetrics
from visionlab.deploy.runtime import file_sha256, load_torchscript, onnx_runner, softmax, torch_runner
from visionlab.run import LoadedRun, _eval_loader, load_run
from visionlab.utils import ConfigError, UserError, read_json, write_json

FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx", "torchscript": "model.torchscript.pt"}
BACKENDS = ("eager",) + tuple(FILES)
CALIBRATION_IMAGES = 128         # train images for int8 calibration; 64 missed rare large activations here
METHODS = {"onnx": "torch.onnx.export (legacy TorchScript-based exporter), fp32",
           "onnx-int8": "onnxruntime quantize_static: QDQ, per-channel int8 weights, uint8 activations, "
                        "min-max calibration",
           "torchscript": "torch.jit.trace + torch.jit.freeze, fp32"}


def as_run(run_dir) -> LoadedRun:
    """A loaded run on the CPU (exports and their comparisons are CPU work); the task says what is exported."""
    return run_dir if isinstance(run_dir, LoadedRun) else load_run(run_dir, device="cpu")


def export_path(run_dir, backend: str) -> Path:
    """Where ``backend``'s file lives: RUN_DIR/export/model.onnx, model.int8.onnx or model.torchscript.pt."""
    if backend not in FILES:
        raise ConfigError(f"format must be one of {', '.join(FILES)}, got {backend!r}")
    return Path(run_dir) / "export" / FILES[backend]


def _calibration(run: LoadedRun, n: int = CALIBRATION_IMAGES, splits=None) -> np.ndarray:
    """A seeded sample of ``n`` train images (uint8 NHWC), decoded like the data pipeline."""
    train = (splits or build_splits(run.cfg.data)).train
    rows = np.sort(np.random.default_rng(run.cfg.seed).permutation(len(train))[:n])
    if train.images is not None:
        return train.images[rows]
    arrays = [try_load(train.paths[i], run.info.preprocess)[0] for i in rows]
    arrays = [a for a in arrays if a is not None]
    return np.stack(arrays) if arrays else np.zeros((0,), np.uint8)


def export(run_dir, backend: str, opset: int = DEFAULT_OPSET, calibration: np.ndarray | None = None) -> Path:
    """Write one export of the run (``backend``: onnx | onnx-int8 | torchscript); returns the file path.
    onnx-int8 quantizes model.onnx (exported first when missing or stale) with ``calibration`` images
    (uint8 NHWC; default: CALIBRATION_IMAGES seeded train images)."""
    run = as_run(run_dir)
    path = export_path(run.run_dir, backend)
    info, size = run.info, tuple(run.info.image_size)
    if backend == "onnx-int8":
        src = export_path(run.run_dir, "onnx")
        if _stale(run, src):
            export(run, "onnx", opset)
        quantize_onnx(src, path, _calibration(run) if calibration is None else calibration)
    elif backend == "onnx":
        export_onnx(run.task.export_module(), path, info.channels, size, opset)
    else:
        export_torchscript(run.task.export_module(), path, info.channels, size)
    _record(run.run_dir, backend, path)
    return path


def _record(run_dir: Path, backend: str, path: Path) -> None:
    """Note a file just written in export.json (file, bytes, sha256); the parity numbers of an older file go."""
    merged = _export_json(run_dir)
    merged[backend] = {"file": str(path.relative_to(run_dir)), "bytes": path.stat().st_size,
                       "sha256": file_sha256(path)}
    write_json(run_dir / "export.json", merged)


def _export_json(run_dir) -> dict:
    """RUN_DIR/export.json as a dict ({} when missing)."""
    out = Path(run_dir) / "export.json"
    if not out.is_file():
        return {}
    try:
        data = read_json(out)
    except (OSError, ValueError) as e:
        raise UserError(f"{out}: unreadable ({e}); delete it and run `visionlab export {run_dir}` again") from None
    return data if isinstance(data, dict) else {}


def recorded_sha256(run_dir, backend: str) -> str:
    """The sha256 export.json recorded when ``backend``'s file was written; a UserError when there is none (the
    file in export/ was not written by `visionlab export`, or before hashes were recorded)."""
    entry = _export_json(run_dir).get(backend)
    sha = entry.get("sha256") if isinstance(entry, dict) else None
    if not isinstance(sha, str):
        raise UserError(f"{export_path(run_dir, backend)}: no sha256 for it in export.json, so it is not loaded "
                        "(TorchScript archives contain pickled code). Delete it and run `visionlab export RUN_DIR "
                        f"format={backend}`, or, if you trust the file, load it yourself with "
                        "visionlab.deploy.runtime.load_torchscript(PATH)")
    return sha


def _stale(run: LoadedRun, path: Path) -> bool:
    """True when the export is missing or older than the best checkpoint (a resumed run moved on)."""
    ckpt = run.run_dir / "checkpoints" / "best.safetensors"
    return not path.is_file() or (ckpt.is_file() and path.stat().st_mtime < ckpt.stat().st_mtime)


def ensure_export(run_dir, backend: str) -> Path:
    """The export file of ``backend``, created on demand (missing or stale)."""
    run = as_run(run_dir)
    path = export_path(run.run_dir, backend)
    return export(run, backend) if _stale(run, path) else path


def runner(run_dir, backend: str) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 NHWC numpy batch (the run's input size) -> float32 logits (per image, or per pixel for segmentation),
    for eager or an exported backend."""
    run = as_run(run_dir)
    if backend == "eager":
        module = run.task.export_module()                        # the training code's own eval path, fp32

        @torch.inference_mode()
        def eager(images: np.ndarray) -> np.ndarray:
            return module(torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))).numpy()
        return eager
    if backend not in FILES:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    path = ensure_export(run, backend)
    if backend == "torchscript":                                 # pickled code inside: only our own file
        return torch_runner(load_torchscript(path, sha256=recorded_sha256(run.run_dir, backend)))
    return onnx_runner(path)


# ---- raw frames (video stream, app) ------------------------------------------------------------------------------

def frame_preprocess(run_dir) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 HxWx3 RGB (any size; also HxW gray or HxWx4) -> uint8 HxWxC at the run's input size, with the data
    pipeline's own steps (data/decode.py: mode conversion, letterbox when pad_square, PIL bilinear resize)."""
    run = as_run(run_dir)
    pre = dict(run.info.preprocess)
    h, w = run.info.image_size
    if h != w:
        raise UserError(f"{run.run_dir}: frames need a square input size, the run uses {h}x{w}")
    pre["image_size"] = int(pre.get("image_size") or h)      # native-size datasets: the size the model saw
    gray = run.info.channels == 1

    def prepare(frame: np.ndarray) -> np.ndarray:
        im = to_rgb_or_l(Image.fromarray(np.asarray(frame, dtype=np.uint8)), gray)
        if pre.get("pad_square"):
            im = letterbox(im)
        arr = np.asarray(im, dtype=np.uint8)
        return convert_array(arr.reshape(arr.shape[0], arr.shape[1], -1)[None], pre)[0]

    return prepare


def frame_classifier(run_dir, backend: str = "eager") -> tuple[Callable[[list], np.ndarray], list[str]]:
    """(predict_fn, classes): predict_fn(frames: list of uint8 HxWx3 RGB arrays of any size) -> float32
    (N, num_classes) probabilities. ``backend``: eager | torchscript | onnx | onnx-int8 (exported on demand)."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    run = as_run(run_dir)
    prepare, run_batch = frame_preprocess(run), runner(run, backend)
    k = run.info.num_classes

    def predict_fn(frames) -> np.ndarray:
        if len(frames) == 0:
            return np.zeros((0, k), np.float32)
        return softmax(run_batch(np.stack([prepare(f) for f in frames])))

    return predict_fn, list(run.classes)


# ---- accuracy parity -----------------------------------------------------------------------------------------

def _test_logits(run: LoadedRun, backends: list[str], test) -> tuple[dict, np.ndarray]:
    """Logits of eager and of each backend over the same test batches (``test``: an ImageSet), plus the labels."""
    runs = {b: runner(run, b) for b in ["eager"] + backends}
    out, labels = {b: [] for b in runs}, []
    for images, y in _eval_loader(test, run.cfg, run.info):
        batch = images.numpy()
        for b, fn in runs.items():
            out[b].append(fn(batch))
        labels.append(y.numpy())
    if not labels:
        raise UserError(f"{run.run_dir}: the test split is empty; nothing to compare the export against")
    return {b: np.concatenate(v) for b, v in out.items()}, np.concatenate(labels)


def _score(logits: np.ndarray, y: np.ndarray) -> tuple[str, float]:
    """The figure export must keep: top-1 accuracy for per-image logits, mIoU (void ignored) for per-pixel ones."""
    if logits.ndim == 4:
        m = SegmentationMetrics(logits.shape[1])
        m.update(torch.from_numpy(logits.argmax(1)), torch.from_numpy(y.astype(np.int64)))
        return "miou", m.compute()["miou"]
    return "top1", float((logits.argmax(1) == y).mean())


def parity(run: LoadedRun, backends: list[str], test=None) -> dict:
    """Per backend: the task's score (top-1, or mIoU for segmentation; named by "metric") of eager fp32 and of the
    export on the test split, their difference in points, the fraction of identical argmax predictions (images or
    pixels) and the max |logit difference|."""
    logits, y = _test_logits(run, backends, test if test is not None else build_splits(run.cfg.data).test)
    ref = logits["eager"]
    metric, eager_score = _score(ref, y)
    res = {}
    for b in backends:
        score = _score(logits[b], y)[1]
        res[b] = {"metric": metric, metric: score, f"eager_{metric}": eager_score,
                  "diff_points": 100.0 * (score - eager_score),
                  "agree": float((logits[b].argmax(1) == ref.argmax(1)).mean()),
                  "max_abs_logit_diff": float(np.abs(logits[b] - ref).max()), "test_images": int(len(y))}
    return res


def export_run(run_dir, formats: list[str], opset: int = DEFAULT_OPSET,
               calibration_images: int = CALIBRATION_IMAGES, test_limit: int = 0) -> dict:
    """Export the run in each of ``formats`` (onnx, onnx-int8, torchscript), check parity against eager on the
    test split (a seeded stratified ``test_limit`` images when > 0, for a quick check) and merge the results into
    RUN_DIR/export.json; returns {format: result}."""
    run = as_run(run_dir)
    if run.task.generates:
        raise UserError(f"{run.run_dir} is a generative run (task={run.cfg.task}): export it with "
                        "`visionlab export RUN_DIR format=onnx` (views/export_generative.export_generative)")
    for fmt in formats:
        export_path(run.run_dir, fmt)                       # an unknown format fails before any work
    splits = build_splits(run.cfg.data)                     # once: decoding a folder dataset is the slow part
    results = {}
    for fmt in formats:
        t0 = time.perf_counter()
        calib = _calibration(run, calibration_images, splits) if fmt == "onnx-int8" else None
        path = export(run, fmt, opset, calib)
        results[fmt] = {"file": str(path.relative_to(run.run_dir)), "bytes": path.stat().st_size,
                        "sha256": recorded_sha256(run.run_dir, fmt), "export_s": round(time.perf_counter() - t0, 2),
                        "opset": int(opset) if fmt.startswith("onnx") else None,
                        "method": METHODS[fmt] + (f" on {len(calib)} train images" if calib is not None else "")}
    test = splits.test.subset(limit_indices(splits.test.labels, test_limit, run.cfg.seed))
    for fmt, r in parity(run, formats, test).items():
        results[fmt].update(r)
    merged = _export_json(run.run_dir)
    merged.update(results)
    write_json(run.run_dir / "export.json", merged)
    return results


def format_parity(results: dict) -> str:
    """A short fixed-width table of export_run results."""
    m = next(iter(results.values()))["metric"] if results else "top1"
    lines = [f"{'format':<12} {'eager ' + m:>10} {'export ' + m:>11} {'diff (pts)':>10} {'agree':>8} "
             f"{'max|dlogit|':>11} {'MB':>7}"]
    for fmt, r in results.items():
        lines.append(f"{fmt:<12} {100 * r['eager_' + m]:>9.2f}% {100 * r[m]:>10.2f}% {r['diff_points']:>+10.2f} "
                     f"{100 * r['agree']:>7.2f}% {r['max_abs_logit_diff']:>11.2e} {r['bytes'] / 1e6:>7.2f}")
    return "\n".join(lines)
