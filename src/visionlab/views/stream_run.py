"""Video streams end to end: build the pipeline from a run (classification: the top class per frame; segmentation:
the mask overlaid on each frame; detection: the run's boxes on each frame; any export backend; FRAME_MODELS is the
one task -> frame model table) and/or a detector (HOG, Haar, MTCNN), run it over a webcam, video file or image folder
into OUT (annotated video, frames.csv, stream.json), and sweep capture size x detector input size -> true FPS and
detections (sweep.csv + sweep.md)."""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from visionlab.deploy.detectors import build_detector
from visionlab.deploy.stream import FrameClassifier, FrameDetector, FrameSegmenter, run_stream, save_stream, summarize
from visionlab.deploy.video import FrameSource, VideoWriter, build_display, parse_size, target_size
from visionlab.utils import ConfigError, UserError, atomic_write_text

SWEEP_CAPTURES = (None, 640, 480)           # None = the source's own size (768x576 for vtest.avi)
SWEEP_INPUTS = (None, 640, 512, 384)        # None = the captured frame as is
SWEEP_FIELDS = ["capture", "input", "frames", "true_fps", "requested_fps", "detections_mean",
                "frames_with_detections", "infer_p50_ms", "total_p50_ms", "total_p95_ms", "dominant_stage"]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def set_threads(n: int) -> None:
    """Threads for PyTorch (eager; ONNX Runtime sessions made afterwards take the same count) and OpenCV (HOG)."""
    import cv2
    import torch

    torch.set_num_threads(int(n))
    cv2.setNumThreads(int(n))


def build_classifier(run, backend: str = "eager") -> FrameClassifier:
    """The run's classifier on whole frames: the data pipeline's own preprocessing (export_run.frame_preprocess)
    timed as preprocess, the backend (eager | torchscript | onnx | onnx-int8, exported on demand) as infer."""
    from .export_run import frame_preprocess, runner

    return FrameClassifier(frame_preprocess(run), runner(run, backend), run.classes, name=backend)


def build_segmenter(run, backend: str = "eager") -> FrameSegmenter:
    """The run's segmenter on whole frames: resized so the short side is the run's (data/decode.py's rule, PIL
    bilinear; an exported backend gets its fixed input size), the mask drawn in views.segmentation's colours."""
    from PIL import Image

    from visionlab.data.decode import short_side_size, to_rgb_or_l

    from .export_run import runner
    from .segmentation import palette

    pre, gray = run.info.preprocess, run.info.channels == 1
    fixed = None if backend == "eager" else tuple(run.info.image_size)     # exports have one (H, W)

    def prepare(frame):
        im = to_rgb_or_l(Image.fromarray(np.asarray(frame, dtype=np.uint8)), gray)
        h, w = fixed or short_side_size(im.size[1], im.size[0], int(pre.get("short_side") or 0))
        if im.size != (w, h):
            im = im.resize((w, h), Image.BILINEAR)
        arr = np.array(im, dtype=np.uint8)               # a writable copy: torch.from_numpy shares it
        return arr.reshape(arr.shape[0], arr.shape[1], -1)

    return FrameSegmenter(prepare, runner(run, backend), run.classes, palette(len(run.classes)), name=backend)


def build_frame_detector(run, backend: str = "eager") -> FrameDetector:
    """The run's detector on whole frames: the frame on the run's letterboxed canvas (export_run.frame_preprocess)
    as preprocess, the backend (eager | torchscript | onnx, exported on demand) as infer, its detections at the
    display threshold (detection.score_threshold) mapped back to frame pixels as postprocess, drawn in
    views.detection's class colours."""
    from .detection import class_colors
    from .export_run import frame_preprocess, runner

    return FrameDetector(frame_preprocess(run), runner(run, backend), run.classes, class_colors(),
                         int(run.info.preprocess["letterbox"]), run.cfg.detection.score_threshold, name=backend)


# The one task -> frame model table: what a run's task draws on each frame of a stream.
FRAME_MODELS = {"classification": build_classifier, "ssl": build_classifier, "dg": build_classifier,
                "segmentation": build_segmenter, "detection": build_frame_detector}


def build_frame_model(run_dir, backend: str = "eager"):
    """The run's frame model for its task (FRAME_MODELS); a UserError naming the supported tasks otherwise."""
    from .export_run import BACKENDS, as_run

    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    run = as_run(run_dir)
    if run.cfg.task not in FRAME_MODELS:
        raise UserError(f"{run.run_dir}: stream runs {', '.join(FRAME_MODELS)} runs, not task={run.cfg.task}")
    return FRAME_MODELS[run.cfg.task](run, backend)


def build_pipeline(run_dir=None, backend: str = "eager", detector: str | None = "hog", input_size: int | None = None,
                   log: Callable[[str], None] = _stderr, **detector_params):
    """(detector or None, classifier or None); at least one of ``run_dir`` and ``detector`` must be given."""
    det = build_detector(detector, input_size, log=log, **detector_params) if detector not in (None, "", "none") \
        else None
    clf = build_frame_model(run_dir, backend) if run_dir else None
    if det is None and clf is None:
        raise UserError("nothing to run: give a detector (detector=hog|haar|mtcnn) and/or a classifier run "
                        "(run=RUN_DIR)")
    return det, clf


def stream(source, out=None, run_dir=None, backend: str = "eager", detector: str | None = "hog",
           fps: float | None = None, capture=None, input_size: int | None = None, max_frames: int | None = None,
           display="auto", log: Callable[[str], None] = _stderr, pipeline=None, **detector_params) -> dict:
    """Run the pipeline over ``source``; with ``out``, write OUT/stream.mp4 (or .avi), frames.csv and stream.json.
    ``fps``: the requested rate (default: the source's own); returns the summary (see deploy.stream.summarize)."""
    src = FrameSource(source, capture)                      # a bad source fails before any model is built
    try:
        win = build_display(display)                        # the window opens at the first frame shown
        det, clf = pipeline or build_pipeline(run_dir, backend, detector, input_size, log, **detector_params)
        requested = float(fps) if fps else src.fps
        writer = VideoWriter(Path(out) / "stream", requested or 10.0) if out else None
        try:
            res = run_stream(src, det, clf, writer, win, max_frames)
        finally:
            video = writer.close() if writer else None
            if win is not None:
                win.close()
    finally:
        src.close()
    if not res.rows:
        raise UserError(f"{source}: no frame could be read" + (f" (unreadable: {', '.join(src.skipped[:5])})"
                                                                 if src.skipped else ""))
    summary = summarize(res, requested)
    summary.update({"source": str(source), "source_kind": src.kind, "source_fps": src.fps,
                    "capture": list(src.last_size),
                    "detector": det.describe() if det else None, "classifier": clf.name if clf else None,
                    "run_dir": str(run_dir) if run_dir else None, "skipped_images": src.skipped,
                    "video": str(video) if video else None, "video_frames": writer.frames if writer else 0})
    if out:
        save_stream(res, summary, out)
    return summary


def sweep(source, out, captures=SWEEP_CAPTURES, inputs=SWEEP_INPUTS, run_dir=None, backend: str = "eager",
          detector: str | None = "hog", max_frames: int = 60, fps: float | None = None,
          log: Callable[[str], None] = _stderr, **detector_params) -> list[dict]:
    """Every capture size x detector input size over the first ``max_frames`` frames: true FPS and detections per
    frame. Writes OUT/sweep.csv and OUT/sweep.md (and each point's frames.csv/stream.json in OUT/<capture>_<input>/);
    an input larger than the captured frame is skipped (upscaling only adds cost). The pipeline is built once."""
    with FrameSource(source) as src:                        # the native size, to place each capture size
        first = src.read()
    if first is None:
        raise UserError(f"{source}: no frame could be read")
    base_det, clf = build_pipeline(run_dir, backend, detector, None, log, **detector_params)
    rows = []
    for cap in captures:
        width = target_size(parse_size(cap), first.shape[1], first.shape[0])[0]
        # an input wider than the capture would only upscale; without a detector the input size changes nothing
        sizes = sorted({min(i or width, width) for i in inputs}, reverse=True) if base_det else [width]
        for inp in sizes:
            det = build_detector(base_det.name, inp, **detector_params) if base_det else None
            name = f"{_label(cap)}_{_label(inp)}"
            s = stream(source, Path(out) / name, fps=fps, capture=cap, max_frames=max_frames, display="false",
                       pipeline=(det, clf), log=log)
            st = s["stages_ms"]
            rows.append({"capture": "x".join(map(str, s["capture"])), "input": inp,
                         "frames": s["timed_frames"], "true_fps": s["true_fps"], "requested_fps": s["requested_fps"],
                         "detections_mean": s["detections_mean"], "frames_with_detections": s["frames_with_detections"],
                         "infer_p50_ms": st["infer"]["p50"], "total_p50_ms": st["total"]["p50"],
                         "total_p95_ms": st["total"]["p95"], "dominant_stage": s["dominant_stage"]})
            log(f"capture {rows[-1]['capture']:>9} input {rows[-1]['input']:>4}: {s['true_fps']:6.1f} fps, "
                f"{s['detections_mean']:.2f} detections/frame")
    _write_sweep(rows, Path(out))
    return rows


def _label(size) -> str:
    return "native" if not size else ("x".join(map(str, size)) if isinstance(size, tuple) else str(size))


def _write_sweep(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SWEEP_FIELDS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "sweep.csv", buf.getvalue())
    atomic_write_text(out / "sweep.md", format_sweep(rows) + "\n")


def format_sweep(rows: list[dict]) -> str:
    """The sweep as a markdown table: capture x input -> true FPS, detections, where the time goes."""
    lines = ["| capture | input | true fps | requested | detections/frame | frames with any | infer p50 ms | "
             "frame p50 ms | frame p95 ms | dominant |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        req = f"{r['requested_fps']:g}" if r["requested_fps"] else "-"
        lines.append(f"| {r['capture']} | {r['input']} | {r['true_fps']:.1f} | {req} | {r['detections_mean']:.2f} | "
                     f"{r['frames_with_detections']}/{r['frames']} | {r['infer_p50_ms']:.1f} | {r['total_p50_ms']:.1f}"
                     f" | {r['total_p95_ms']:.1f} | {r['dominant_stage']} |")
    return "\n".join(lines)
