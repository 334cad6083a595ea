"""The real-time loop: capture -> preprocess -> infer -> postprocess/NMS -> draw -> write, with a timer per stage,
p50/p95 per stage, and the true frame rate against the requested one, explained (which stage eats the budget)."""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..utils import atomic_write_text, write_json

STAGES = ("capture", "preprocess", "infer", "postprocess", "draw", "write")
FIELDS = ["frame", *(f"{s}_ms" for s in STAGES), "total_ms", "detections", "label", "score", "boxes"]
# what to turn when a stage eats the frame budget
KNOBS = {"capture": "a smaller capture size (capture=WxH; a camera may also be capped at its own rate), or a source "
                    "that decodes faster",
         "preprocess": "a smaller capture size (less to convert and resize)",
         "infer": "a coarser HOG pyramid (scale=1.2 levels=3), a smaller detector input (input=WIDTH; HOG misses "
                  "people under ~100 px tall in it), an exported model (backend=onnx; classifiers also onnx-int8), a "
                  "trained detector at a smaller canvas (data.image_size), threads=N",
         "postprocess": "a higher score threshold (fewer boxes into NMS)",
         "draw": "fewer overlays, or a smaller capture size",
         "write": "no video file (out= only for the log) or a smaller capture size; mp4v encodes per frame"}


class FrameClassifier:
    """A whole-frame classifier in the loop's stages: ``prepare`` (uint8 RGB frame -> uint8 model input,
    e.g. export_run.frame_preprocess), ``run_batch`` (uint8 NHWC -> logits, any backend), class names.
    The loop's frame-model contract (FrameSegmenter and FrameDetector have it too): preprocess, infer, postprocess ->
    the result, summary(result) -> (label, score) for frames.csv, boxes(result) -> the frame's boxes for frames.csv
    (x1, y1, x2, y2, score, name) in frame pixels, draw(frame, result) for the task's own picture."""

    def __init__(self, prepare: Callable, run_batch: Callable, classes: list[str], name: str = "classifier"):
        import cv2

        self.cv2, self.prepare, self.run_batch, self.classes, self.name = cv2, prepare, run_batch, list(classes), name

    def preprocess(self, frame_bgr: np.ndarray) -> np.ndarray:
        return self.prepare(self.cv2.cvtColor(frame_bgr, self.cv2.COLOR_BGR2RGB))

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.run_batch(x[None])

    def postprocess(self, logits: np.ndarray) -> tuple[str, float]:
        z = logits[0].astype(np.float64)
        p = np.exp(z - z.max())
        k = int(p.argmax())
        return self.classes[k], float(p[k] / p.sum())

    def summary(self, result: tuple[str, float]) -> tuple[str, float]:
        return result

    def boxes(self, result) -> list[tuple]:
        """None of its own: a whole-frame model finds no boxes."""
        return []

    def draw(self, frame: np.ndarray, result) -> None:
        """Nothing of its own: the banner (module-level ``draw``) shows the top class and its probability."""


class FrameSegmenter(FrameClassifier):
    """A semantic segmenter in the loop's stages: per-pixel logits -> a class-id mask (postprocess), blended onto
    the frame in the class colours (draw); frames.csv gets the largest class and its share of the pixels.
    ``colors``: uint8 [>= num_classes, 3] RGB, one colour per class id (views.segmentation.palette)."""

    def __init__(self, prepare: Callable, run_batch: Callable, classes: list[str], colors: np.ndarray,
                 name: str = "segmenter", alpha: float = 0.5):
        super().__init__(prepare, run_batch, classes, name)
        self.bgr = np.ascontiguousarray(np.asarray(colors, np.uint8)[:, ::-1])     # the loop's frames are BGR
        self.alpha = alpha

    def postprocess(self, logits: np.ndarray) -> np.ndarray:
        return logits[0].argmax(0).astype(np.uint8)            # [C, h, w] -> class ids [h, w]

    def summary(self, mask: np.ndarray) -> tuple[str, float]:
        counts = np.bincount(mask.ravel(), minlength=len(self.classes))
        k = int(counts.argmax())
        return self.classes[k], float(counts[k] / mask.size)

    def draw(self, frame: np.ndarray, mask: np.ndarray) -> None:
        """The mask, scaled to the frame (nearest: class ids never blend), blended in place."""
        h, w = frame.shape[:2]
        full = self.cv2.resize(mask, (w, h), interpolation=self.cv2.INTER_NEAREST)
        self.cv2.addWeighted(self.bgr[full], self.alpha, frame, 1 - self.alpha, 0, dst=frame)


class FrameDetector(FrameClassifier):
    """A trained detector in the loop's stages: preprocess puts the RGB frame on the run's letterboxed canvas
    (``prepare``: long side S at the top-left, e.g. export_run.frame_preprocess), infer runs the backend on it
    (``run_batch``: uint8 [1, S, S, C] -> boxes in canvas pixels, scores, labels 0-based), postprocess keeps the
    scores >= ``score_threshold`` and maps the boxes back to frame pixels (box / letterbox scale, clipped); draw puts
    them on the frame in ``colors`` (uint8 [>= num_classes, 3] RGB, views.detection.class_colors) with class and
    score. frames.csv gets the best box's class and score, and every box."""

    def __init__(self, prepare: Callable, run_batch: Callable, classes: list[str], colors: np.ndarray,
                 canvas: int, score_threshold: float, name: str = "detector"):
        super().__init__(prepare, run_batch, classes, name)
        self.bgr = [tuple(int(v) for v in c) for c in np.asarray(colors, np.uint8)[:, ::-1]]   # frames are BGR
        self.canvas, self.score_threshold = int(canvas), float(score_threshold)

    def preprocess(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        return super().preprocess(frame_bgr), frame_bgr.shape[:2]

    def infer(self, x: tuple[np.ndarray, tuple[int, int]]) -> tuple[tuple, tuple[int, int]]:
        canvas, size = x
        return self.run_batch(canvas[None]), size

    def postprocess(self, out: tuple[tuple, tuple[int, int]]) -> dict:
        """{"boxes" float [N, 4] xyxy in frame pixels, "scores" [N], "labels" int64 [N]}, best first."""
        (boxes, scores, labels), (h, w) = out
        keep = np.flatnonzero(np.asarray(scores) >= self.score_threshold)
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        xyxy = np.asarray(boxes, np.float32)[keep] * (max(h, w) / self.canvas)     # / data.decode.letterbox_scale
        np.clip(xyxy[:, 0::2], 0, w, out=xyxy[:, 0::2])
        np.clip(xyxy[:, 1::2], 0, h, out=xyxy[:, 1::2])
        return {"boxes": xyxy, "scores": np.asarray(scores, np.float32)[keep],
                "labels": np.asarray(labels, np.int64)[keep]}

    def summary(self, result: dict) -> tuple[str | None, float | None]:
        if not len(result["scores"]):
            return None, None
        return self.classes[int(result["labels"][0])], float(result["scores"][0])

    def boxes(self, result: dict) -> list[tuple]:
        return [(*(round(float(v), 1) for v in b), round(float(s), 4), self.classes[int(k)])
                for b, s, k in zip(result["boxes"], result["scores"], result["labels"])]

    def draw(self, frame: np.ndarray, result: dict) -> None:
        draw_boxes(frame, self.boxes(result), [self.bgr[int(k) % len(self.bgr)] for k in result["labels"]])


@dataclass
class StreamResult:
    """Per-frame rows (stage times in ms, detections, label) and the timed wall clock after warm-up."""

    rows: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    warmup: int = 1
    t_start: float = 0.0                         # perf_counter at the first timed (post-warm-up) frame
    stopped_by_user: bool = False


def draw_boxes(frame: np.ndarray, dets: list, colors: list | None = None) -> np.ndarray:
    """``dets`` (x1, y1, x2, y2, score, name) drawn on the BGR ``frame`` in place: a rectangle and "name score" above
    it, in one BGR colour per box (``colors``; default green)."""
    import cv2

    for i, (x1, y1, x2, y2, s, name) in enumerate(dets):
        color = colors[i] if colors else (0, 220, 0)
        p1, p2 = (int(x1), int(y1)), (int(x2), int(y2))
        cv2.rectangle(frame, p1, p2, color, 2)
        cv2.putText(frame, f"{name} {s:.2f}", (p1[0], max(12, p1[1] - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    color, 1, cv2.LINE_AA)
    return frame


def draw(frame: np.ndarray, dets: list, label: str | None, score: float | None, fps: float | None) -> np.ndarray:
    """Boxes with label and score, the frame's class (if any) and the running FPS, drawn on ``frame`` in place."""
    import cv2

    draw_boxes(frame, dets)
    text = " | ".join(t for t in (f"{label} {score:.2f}" if label else "", f"{fps:.1f} fps" if fps else "") if t)
    if text:
        cv2.rectangle(frame, (0, 0), (9 * len(text) + 8, 22), (0, 0, 0), -1)
        cv2.putText(frame, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return frame


def run_stream(source, detector=None, classifier=None, writer=None, display=None, max_frames: int | None = None,
               warmup: int = 1) -> StreamResult:
    """Process frames of ``source`` (deploy.video.FrameSource) until it ends or ``max_frames``; every frame is
    processed (none dropped, no sleeping), so the frame rate is what the pipeline itself sustains.
    ``detector`` has preprocess/infer/postprocess; ``classifier`` is the run's frame model (FrameClassifier,
    FrameSegmenter, FrameDetector; its boxes join the detector's in frames.csv); ``writer``/``display`` take
    annotated frames.
    The first ``warmup`` frames (lazy initialisation, first-call compilation) are logged but left out of the stats."""
    res = StreamResult(warmup=warmup, t_start=time.perf_counter())
    try:
        _loop(res, source, detector, classifier, writer, display, max_frames)
    except KeyboardInterrupt:                    # Ctrl-C ends a webcam stream; what ran so far is still reported
        res.stopped_by_user = True
    res.wall_s = time.perf_counter() - res.t_start
    return res


def _loop(res: StreamResult, source, detector, classifier, writer, display, max_frames) -> None:
    clock, warmup = time.perf_counter, res.warmup
    while max_frames is None or len(res.rows) < max_frames:
        if len(res.rows) == warmup:
            res.t_start = clock()
        t = [clock()]
        frame = source.read()
        t.append(clock())
        if frame is None:
            break
        xd = detector.preprocess(frame) if detector else None
        xc = classifier.preprocess(frame) if classifier else None
        t.append(clock())
        rd = detector.infer(xd[0]) if detector else None
        rc = classifier.infer(xc) if classifier else None
        t.append(clock())
        dets = detector.postprocess(rd, xd[1]) if detector else []
        out = classifier.postprocess(rc) if classifier else None
        label, score = classifier.summary(out) if classifier else (None, None)
        found = dets + classifier.boxes(out) if classifier else dets
        t.append(clock())
        done = len(res.rows) - warmup
        fps = done / (t[0] - res.t_start) if done > 0 else None
        if classifier:
            classifier.draw(frame, out)          # the task's own picture (a mask overlay) under the boxes
        draw(frame, dets, label, score, fps)
        t.append(clock())
        if writer is not None:
            writer.write(frame)
        if display is not None and not display.show(frame):
            res.stopped_by_user = True
        t.append(clock())
        res.rows.append(_row(len(res.rows), t, found, label, score))
        if res.stopped_by_user:
            break


def _row(index: int, t: list[float], dets: list, label, score) -> dict:
    ms = {f"{s}_ms": round(1000 * (t[i + 1] - t[i]), 4) for i, s in enumerate(STAGES)}
    boxes = ";".join(" ".join(f"{v:g}" for v in d[:5]) + f" {d[5]}" for d in dets)
    return {"frame": index, **ms, "total_ms": round(1000 * (t[-1] - t[0]), 3), "detections": len(dets),
            "label": label or "", "score": "" if score is None else round(score, 4), "boxes": boxes}


def summarize(res: StreamResult, requested_fps: float | None) -> dict:
    """p50/p95/mean per stage (ms, after warm-up), true FPS, requested FPS and the explanation of the gap."""
    rows = res.rows[res.warmup:] or res.rows          # a run shorter than the warm-up still reports something
    timed = len(rows)
    stages = {}
    for s in (*STAGES, "total"):
        v = np.array([r[f"{s}_ms"] for r in rows], np.float64)
        stages[s] = {"p50": round(float(np.percentile(v, 50)), 3), "p95": round(float(np.percentile(v, 95)), 3),
                     "mean": round(float(v.mean()), 3)} if timed else {"p50": 0.0, "p95": 0.0, "mean": 0.0}
    wall = res.wall_s if len(res.rows) > res.warmup else sum(r["total_ms"] for r in rows) / 1000
    true_fps = timed / wall if wall > 0 else 0.0
    counts = [r["detections"] for r in rows]
    out = {"frames": len(res.rows), "timed_frames": timed, "warmup_frames": min(res.warmup, len(res.rows)),
           "wall_s": round(wall, 3), "true_fps": round(true_fps, 2),
           "requested_fps": round(float(requested_fps), 2) if requested_fps else None,
           "stages_ms": stages, "dominant_stage": max(STAGES, key=lambda s: stages[s]["mean"]),
           "detections_mean": round(float(np.mean(counts)), 3) if counts else 0.0,
           "frames_with_detections": int(sum(c > 0 for c in counts)), "stopped_by_user": res.stopped_by_user}
    out["explanation"] = explain(stages, out["true_fps"], requested_fps)     # the same (rounded) figure as logged
    return out


def explain(stages: dict, true_fps: float, requested_fps: float | None) -> str:
    """One paragraph: does the pipeline keep the requested rate, which stage dominates, what the rate would need."""
    frame_ms = 1000 / true_fps if true_fps > 0 else float("inf")
    dom = max(STAGES, key=lambda s: stages[s]["mean"])
    dom_ms = stages[dom]["mean"]
    share = 100 * dom_ms / frame_ms if frame_ms < float("inf") else 0.0
    head = f"{true_fps:.1f} fps end to end ({frame_ms:.1f} ms per frame; {dom} dominates with {dom_ms:.1f} ms, " \
           f"{share:.0f} % of the frame"
    if not requested_fps:
        return head + "). No rate was requested (fps=N) and the source declares none."
    budget = 1000 / requested_fps
    if true_fps >= requested_fps:
        return head + f"). That meets the requested {requested_fps:g} fps: the budget is {budget:.1f} ms per frame, " \
                      f"{budget - frame_ms:.1f} ms to spare."
    rest = frame_ms - dom_ms
    text = head + f"). Requested {requested_fps:g} fps needs <= {budget:.1f} ms per frame, " \
                  f"{frame_ms - budget:.1f} ms less ({frame_ms / budget:.2f}x the time it has). "
    if rest >= budget:
        text += f"Even with {dom} free, the other stages take {rest:.1f} ms, over the budget: every stage must shrink" \
                f", e.g. a smaller capture size."
    else:
        text += f"With the other stages unchanged ({rest:.1f} ms), {dom} must drop from {dom_ms:.1f} to " \
                f"{budget - rest:.1f} ms ({dom_ms / (budget - rest):.1f}x faster)."
    return text + f" Knobs for {dom}: {KNOBS[dom]}."


def save_stream(res: StreamResult, summary: dict, out: str | Path) -> dict:
    """Write OUT/frames.csv (one row per frame) and OUT/stream.json (the summary); returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS)
    w.writeheader()
    w.writerows(res.rows)
    atomic_write_text(out / "frames.csv", buf.getvalue())
    write_json(out / "stream.json", summary)
    return {"frames_csv": out / "frames.csv", "stream_json": out / "stream.json"}


def format_summary(summary: dict) -> str:
    """The printed table: p50 / p95 / mean per stage, then true vs requested FPS and the explanation."""
    lines = [f"{'stage':<12} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8}"]
    for s, v in summary["stages_ms"].items():
        lines.append(f"{s:<12} {v['p50']:>8.2f} {v['p95']:>8.2f} {v['mean']:>8.2f}")
    req = summary["requested_fps"]
    lines.append(f"frames {summary['frames']} (timed {summary['timed_frames']}), true fps {summary['true_fps']:.1f}"
                 + (f", requested {req:g}" if req else "") +
                 f", detections per frame {summary['detections_mean']:.2f} "
                 f"({summary['frames_with_detections']}/{summary['timed_frames']} frames with any)")
    lines.append(summary["explanation"])
    return "\n".join(lines)
