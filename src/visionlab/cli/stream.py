"""CLI mode `visionlab stream SOURCE [run=RUN_DIR] [detector=hog|haar|mtcnn|none] [fps=N] [capture=WxH] [input=N]
[max_frames=N] [out=DIR] [display=auto|true|false] [sweep=true]`: real-time detection / classification /
segmentation on video (a segmentation run draws its mask on every frame; views.stream_run.FRAME_MODELS)."""
from __future__ import annotations

from pathlib import Path

from .args import split_options
from ..utils import ConfigError, UserError

USAGE = ("usage: visionlab stream SOURCE [run=RUN_DIR] [backend=eager|torchscript|onnx|onnx-int8] "
         "[detector=hog|haar|mtcnn|none]\n"
         "       [fps=N] [capture=WxH|WIDTH] [input=WIDTH] [max_frames=N] [out=DIR] [display=auto|true|false]\n"
         "       [win_stride=8] [scale=1.1] [levels=64] [threads=N] [sweep=true]\n"
         "SOURCE: a webcam index such as 0 (Ctrl-C or q stops it), a video file, or an image folder. RUN_DIR: a\n"
         "classification run (top class per frame) or a segmentation run (mask overlay per frame). With sweep=true,\n"
         "capture= and input= take comma lists. win_stride, scale, levels: HOG's speed knobs.")
OPTIONS = ("run", "backend", "detector", "fps", "capture", "input", "max_frames", "out", "display", "sweep",
           "win_stride", "scale", "levels", "threads")


def _number(kv: dict, key: str, cast, low):
    if key not in kv or kv[key] in ("", "none"):
        return None
    try:
        v = cast(kv[key])
    except ValueError:
        v = None
    if v is None or v < low:
        raise ConfigError(f"{key} must be a number >= {low}, got {kv[key]!r}\n{USAGE}")
    return v


def _detector_params(kv: dict, detector: str) -> dict:
    params = {k: v for k, v in (("win_stride", _number(kv, "win_stride", int, 8)),
                                ("scale", _number(kv, "scale", float, 1.0)),
                                ("levels", _number(kv, "levels", int, 1))) if v is not None}
    if params and detector != "hog":
        raise ConfigError(f"win_stride=, scale= and levels= are options of detector=hog, not {detector}")
    return params


def _sizes(text: str | None, parse) -> list:
    return [parse(t.strip()) for t in text.split(",")] if text else [None]


def cmd_stream(args: list[str]) -> int:
    """Run a detector and/or a run's classifier over SOURCE; print the per-stage table and write OUT/stream.mp4,
    frames.csv and stream.json. sweep=true: capture size x input size -> true FPS and detections (sweep.md)."""
    from ..deploy.stream import format_summary
    from ..deploy.video import parse_size
    from ..views import stream_run

    pos, kv = split_options(args, "stream", OPTIONS, USAGE)
    if len(pos) != 1:
        raise UserError(USAGE)
    source, run_dir = pos[0], kv.get("run") or None
    detector = kv.get("detector", "none" if run_dir else "hog")
    params = _detector_params(kv, detector)
    fps = _number(kv, "fps", float, 0.1)
    max_frames = _number(kv, "max_frames", int, 1)
    if "threads" in kv:
        stream_run.set_threads(_number(kv, "threads", int, 1))
    out = kv.get("out") or str(Path("runs") / "stream" / (Path(source).stem or "webcam"))
    sweeping = kv.get("sweep", "false").lower()
    if sweeping not in ("true", "false", "1", "0"):
        raise ConfigError(f"sweep must be true or false, got {kv['sweep']!r}")
    if sweeping in ("true", "1"):
        inputs = [None if v is None else _number({"input": str(v)}, "input", int, 16)
                  for v in _sizes(kv.get("input"), lambda t: t)]
        rows = stream_run.sweep(source, out, _sizes(kv.get("capture"), parse_size) if "capture" in kv
                                else stream_run.SWEEP_CAPTURES, inputs if "input" in kv else stream_run.SWEEP_INPUTS,
                                run_dir, kv.get("backend", "eager"), detector, max_frames or 60, fps, **params)
        print(stream_run.format_sweep(rows))
        print(Path(out) / "sweep.md")
        return 0
    summary = stream_run.stream(source, out, run_dir, kv.get("backend", "eager"), detector, fps,
                                parse_size(kv.get("capture")), _number(kv, "input", int, 16), max_frames,
                                kv.get("display", "auto"), **params)
    print(format_summary(summary))
    print(f"video: {summary['video']} ({summary['video_frames']} frames)")
    print(Path(out))
    return 0
