"""Export a run (ONNX, int8 ONNX, TorchScript) with accuracy parity on its test split, and run any backend on raw
frames (frame_classifier, used by the video stream). Files go to RUN_DIR/export/; RUN_DIR/export.json records each
file's sha256 when it is written (a TorchScript file is loaded only when it still matches) and the parity.

Detection runs export one letterboxed canvas per call -> (boxes, scores, labels) (tasks.detection export_module);
their parity is COCO mAP plus the share of eager detections each backend reproduces (``detection_parity``)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from visionlab.data import build_splits
from visionlab.data.box_transforms import unpad
from visionlab.data.decode import convert_array, letterbox, letterbox_top_left, to_rgb_or_l, try_load
from visionlab.data.split import limit_indices
from visionlab.deploy.export import DEFAULT_OPSET, export_onnx, export_spec, export_torchscript, quantize_onnx
from visionlab.metrics.detection import DetectionMetrics
from visionlab.metrics.segmentation import SegmentationMetrics
from visionlab.deploy.runtime import file_sha256, load_torchscript, onnx_runner, ort_session, softmax
from visionlab.run import LoadedRun, _eval_loader, load_run
from visionlab.utils import ConfigError, UserError, read_json, write_json

FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx", "torchscript": "model.torchscript.pt"}
BACKENDS = ("eager",) + tuple(FILES)
CALIBRATION_IMAGES = 128         # train images for int8 calibration; 64 missed rare large activations here
AGREE_IOU, AGREE_SCORE = 0.9, 0.01     # an eager detection is reproduced: same class, IoU >= 0.9, score within 0.01
AGREE_PX = 0.5                         # ... or, for zero-area boxes (IoU 0/0), every coordinate within 0.5 px
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


def output_names(run: LoadedRun) -> list[str]:
    """The names of what the run's export returns: ["logits"], or e.g. ["boxes", "scores", "labels"]."""
    return export_spec(run.task.export_module())[1]


def backends_for(run_dir) -> tuple[str, ...]:
    """The backends a run exports to: all of BACKENDS, less int8 for a module with several outputs (a detector)."""
    return BACKENDS if len(output_names(as_run(run_dir))) == 1 else tuple(b for b in BACKENDS if b != "onnx-int8")


def export(run_dir, backend: str, opset: int = DEFAULT_OPSET, calibration: np.ndarray | None = None) -> Path:
    """Write one export of the run (``backend``: onnx | onnx-int8 | torchscript); returns the file path.
    onnx-int8 quantizes model.onnx (exported first when missing or stale) with ``calibration`` images
    (uint8 NHWC; default: CALIBRATION_IMAGES seeded train images)."""
    run = as_run(run_dir)
    path = export_path(run.run_dir, backend)
    info, size = run.info, tuple(run.info.image_size)
    if backend not in backends_for(run):
        raise UserError(f"{run.run_dir}: format={backend} is not available for task={run.cfg.task} runs; use "
                        f"{' or '.join(f'format={b}' for b in backends_for(run) if b != 'eager')}")
    if backend == "onnx-int8":
        src = export_path(run.run_dir, "onnx")
        if _stale(run, src):
            export(run, "onnx", opset)
        quantize_onnx(src, path, _calibration(run) if calibration is None else calibration)
    elif backend == "onnx":
        module = run.task.export_module()
        export_onnx(module, path, info.channels, size, opset, onnx_metadata(run, module))
    else:
        export_torchscript(run.task.export_module(), path, info.channels, size)
    _record(run.run_dir, backend, path)
    return path


def onnx_metadata(run: LoadedRun, module: torch.nn.Module) -> dict:
    """What model.onnx (``module``, the run's export module) says about itself in its metadata_props: the task, the
    class names (JSON), the input and the outputs, the run's name, and the task's own facts (``export_metadata``: a
    detector's display threshold)."""
    h, w = run.info.image_size
    return {"visionlab_task": run.cfg.task, "classes": json.dumps(list(run.classes)),
            "input": f"uint8 NHWC [batch, {h}, {w}, {run.info.channels}], preprocessing inside the graph",
            "outputs": ", ".join(export_spec(module)[1]), "run": run.run_dir.name, **run.task.export_metadata()}


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


def module_runner(module) -> Callable[[np.ndarray], np.ndarray | tuple]:
    """uint8 NHWC numpy batch -> the module's output as numpy: one array, or a tuple (a module with several
    outputs); for eager modules and loaded TorchScript alike (CPU)."""

    @torch.inference_mode()
    def run(images: np.ndarray):
        out = module(torch.from_numpy(np.require(images, np.uint8, "CW")))    # writable: torch shares it
        return tuple(o.numpy() for o in out) if isinstance(out, (tuple, list)) else out.numpy()

    return run


def runner(run_dir, backend: str) -> Callable[[np.ndarray], np.ndarray | tuple]:
    """uint8 NHWC numpy batch (the run's input size) -> float32 logits (per image, or per pixel for segmentation),
    for eager or an exported backend. A detection run: one image [1, S, S, C] -> (boxes, scores, labels) arrays."""
    run = as_run(run_dir)
    if backend == "eager":
        return module_runner(run.task.export_module())          # the training code's own eval path, fp32
    if backend not in FILES:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    path = ensure_export(run, backend)
    if backend == "torchscript":                                 # pickled code inside: only our own file
        return module_runner(load_torchscript(path, sha256=recorded_sha256(run.run_dir, backend)))
    if len(output_names(run)) == 1:
        return onnx_runner(path)
    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    return lambda images: tuple(sess.run(None, {name: np.ascontiguousarray(images, dtype=np.uint8)}))


# ---- raw frames (video stream, app) ------------------------------------------------------------------------------

def frame_preprocess(run_dir) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 HxWx3 RGB (any size; also HxW gray or HxWx4) -> uint8 HxWxC at the run's input size, with the data
    pipeline's own steps (data/decode.py: mode conversion, the detection canvas (letterbox_top_left), letterbox when
    pad_square, PIL bilinear resize)."""
    run = as_run(run_dir)
    pre = dict(run.info.preprocess)
    h, w = run.info.image_size
    if h != w:
        raise UserError(f"{run.run_dir}: frames need a square input size, the run uses {h}x{w}")
    pre["image_size"] = int(pre.get("image_size") or h)      # native-size datasets: the size the model saw
    gray = run.info.channels == 1

    def prepare(frame: np.ndarray) -> np.ndarray:
        im = to_rgb_or_l(Image.fromarray(np.asarray(frame, dtype=np.uint8)), gray)
        if pre.get("letterbox"):                             # detection: long side S at the canvas' top-left
            im = letterbox_top_left(im, int(pre["letterbox"]))
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


def _detections(run: LoadedRun, backends: list[str], test) -> tuple[dict, list[dict]]:
    """Every test image's detections from eager and each backend (one image per call), plus its true boxes."""
    runs = {b: runner(run, b) for b in ["eager"] + backends}
    out, targets = {b: [] for b in runs}, []
    for images, boxes in _eval_loader(test, run.cfg, run.info):
        for image, target in zip(images.numpy(), unpad(boxes)):
            for b, fn in runs.items():
                xyxy, scores, labels = fn(image[None])
                out[b].append({"boxes": torch.from_numpy(xyxy), "scores": torch.from_numpy(scores),
                               "labels": torch.from_numpy(labels)})
            targets.append(target)
    if not targets:
        raise UserError(f"{run.run_dir}: the test split is empty; nothing to compare the export against")
    return out, targets


def _reproduced(ref: dict, other: dict, threshold: float) -> tuple[int, int, float]:
    """(eager detections at ``threshold`` that ``other`` reproduces (same class, IoU >= AGREE_IOU, score within
    AGREE_SCORE; a zero-area box, whose IoU is undefined: coordinates within AGREE_PX), how many there are, the
    largest box coordinate difference in px among the reproduced)."""
    from torchvision.ops import box_iou

    keep = ref["scores"] >= threshold
    boxes, scores, labels = ref["boxes"][keep], ref["scores"][keep], ref["labels"][keep]
    if not len(boxes) or not len(other["boxes"]):
        return 0, len(boxes), 0.0
    iou, diff = box_iou(boxes, other["boxes"]), (boxes[:, None] - other["boxes"][None]).abs().amax(2)
    ok = torch.where(iou.isnan(), diff <= AGREE_PX, iou >= AGREE_IOU) & (labels[:, None] == other["labels"][None]) \
        & ((scores[:, None] - other["scores"][None]).abs() <= AGREE_SCORE)
    diff = diff.masked_fill(~ok, float("inf")).amin(1)
    found = ok.any(1)
    return int(found.sum()), len(boxes), float(diff[found].max()) if found.any() else 0.0


def detection_parity(run: LoadedRun, backends: list[str], test) -> dict:
    """Per backend: COCO mAP (metrics.detection, the run's evaluation thresholds) of eager fp32 and of the export on
    ``test``, their difference in points, "agree" (the share of eager detections at the display threshold that the
    export reproduces; 1.0 when there are none) and the largest box difference among those (px)."""
    dets, targets = _detections(run, backends, test)
    p = run.cfg.detection
    res, scores = {}, {}
    for b in ["eager"] + backends:
        m = DetectionMetrics(run.classes, p.eval_score_threshold, p.score_threshold, p.max_detections)
        m.update(dets[b], targets)
        scores[b] = float(m.compute()["map"])
    for b in backends:
        counts = [_reproduced(ref, d, p.score_threshold) for ref, d in zip(dets["eager"], dets[b])]
        found, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
        res[b] = {"metric": "map", "map": scores[b], "eager_map": scores["eager"],
                  "diff_points": 100.0 * (scores[b] - scores["eager"]), "agree": found / total if total else 1.0,
                  "eager_detections": total, "max_box_diff_px": max(c[2] for c in counts),
                  "test_images": len(targets)}
    return res


def parity(run: LoadedRun, backends: list[str], test=None) -> dict:
    """Per backend: the task's score (top-1, or mIoU for segmentation; named by "metric") of eager fp32 and of the
    export on the test split, their difference in points, the fraction of identical argmax predictions (images or
    pixels) and the max |logit difference|. Detection runs: ``detection_parity``."""
    test = test if test is not None else build_splits(run.cfg.data).test
    if run.task.target == "boxes":
        return detection_parity(run, backends, test)
    logits, y = _test_logits(run, backends, test)
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
    """A short fixed-width table of export_run results (the last difference: max |logit| difference, or for
    detection the largest box coordinate difference in px among the reproduced detections)."""
    m = next(iter(results.values()))["metric"] if results else "top1"
    key, head = ("max_box_diff_px", "max|dbox|px") if m == "map" else ("max_abs_logit_diff", "max|dlogit|")
    lines = [f"{'format':<12} {'eager ' + m:>10} {'export ' + m:>11} {'diff (pts)':>10} {'agree':>8} "
             f"{head:>11} {'MB':>7}"]
    for fmt, r in results.items():
        lines.append(f"{fmt:<12} {100 * r['eager_' + m]:>9.2f}% {100 * r[m]:>10.2f}% {r['diff_points']:>+10.2f} "
                     f"{100 * r['agree']:>7.2f}% {r[key]:>11.2e} {r['bytes'] / 1e6:>7.2f}")
    return "\n".join(lines)
