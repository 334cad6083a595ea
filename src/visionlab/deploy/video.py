"""Video in and out for the real-time loop: frame sources (webcam index, video file, image folder), the annotated-video
writer (the first codec OpenCV can open here), and a display window that opens only where a display exists."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..utils import ConfigError, UserError, commit_temp

CV2_HINT = 'pip install "opencv-python-headless<5"'
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
# mp4v writes .mp4 with the FFmpeg that opencv-python-headless bundles; MJPG/.avi is the fallback every build has
CODECS = (("mp4v", ".mp4"), ("MJPG", ".avi"), ("XVID", ".avi"))


def cv2_or_fail():
    """Import OpenCV or fail with the pip line that installs it."""
    try:
        import cv2
    except ImportError:
        raise UserError(f"video streams need OpenCV: {CV2_HINT}") from None
    return cv2


def parse_size(text: str | int | None, what: str = "capture") -> tuple[int, int] | int | None:
    """'640x480' -> (640, 480); '640' -> 640 (a width; the height keeps the source's aspect); ''/None/0 -> None."""
    if text in (None, "", 0, "0", "native", "none"):
        return None
    if isinstance(text, (int, tuple)):
        return text
    try:
        if "x" in text.lower():
            w, h = (int(v) for v in text.lower().split("x"))
            if w > 0 and h > 0:
                return w, h
        elif int(text) > 0:
            return int(text)
    except ValueError:
        pass
    raise ConfigError(f"{what}={text!r}: expected WIDTHxHEIGHT (e.g. {what}=640x480) or a width (e.g. {what}=640)")


def target_size(size, width: int, height: int) -> tuple[int, int]:
    """The (w, h) a frame of ``width`` x ``height`` becomes under ``size`` (None, a width, or (w, h))."""
    if size is None:
        return width, height
    if isinstance(size, int):
        return size, max(1, round(height * size / width))
    return size


class FrameSource:
    """Frames as BGR uint8 arrays from a webcam index ('0'), a video file or a folder of images, resized to
    ``capture`` (None, a width, or (w, h)). Iterate with ``read()``, which returns None at the end."""

    def __init__(self, source: str | int, capture=None):
        self.cv2 = cv2_or_fail()
        self.capture = parse_size(capture)
        self.name = str(source)
        self.skipped: list[str] = []              # unreadable images of a folder source, by name
        self._cap, self._files, self._next = None, [], 0
        self.last_size = (0, 0)                   # (w, h) of the last frame read, after the capture resize
        path = Path(str(source))
        if str(source).isdigit() and not path.exists():
            self.kind = "webcam"
            self._open_camera(int(source))
        elif path.is_dir():
            self.kind = "folder"
            self._files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
            if not self._files:
                raise UserError(f"{path}: no images found (expected {', '.join(IMAGE_EXTS)} files)")
            self.fps, self.frame_count = None, len(self._files)
        elif path.is_file():
            self.kind = "file"
            self._cap = self.cv2.VideoCapture(str(path))
            ok = self._cap.isOpened()
            if ok:
                ok, first = self._cap.read()       # some containers open but hold no decodable frame
                self._cap.set(self.cv2.CAP_PROP_POS_FRAMES, 0)
            if not ok:
                raise UserError(f"{path}: OpenCV cannot decode this as a video (supported e.g. "
                                f"{', '.join(VIDEO_EXTS)}); for still images pass their folder")
            self.fps = self._cap.get(self.cv2.CAP_PROP_FPS) or None
            self.frame_count = int(self._cap.get(self.cv2.CAP_PROP_FRAME_COUNT)) or None
        else:
            raise UserError(f"video source not found: {source} (expected a webcam index such as 0, a video file, "
                            "or a folder of images)")

    def _open_camera(self, index: int) -> None:
        cv2 = self.cv2
        self._cap = cv2.VideoCapture(index)
        if not self._cap.isOpened():
            raise UserError(f"no camera at index {index}: check that one is connected and not in use, or pass a video "
                            "file or image folder instead")
        if isinstance(self.capture, tuple):       # ask the camera for the size so that it need not be resized
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.capture[0])
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.capture[1])
        self.fps = self._cap.get(cv2.CAP_PROP_FPS) or None
        self.frame_count = None

    def read(self):
        """The next frame (BGR uint8, resized to the capture size), or None when the source is exhausted."""
        frame = self._read_raw()
        if frame is None:
            return None
        h, w = frame.shape[:2]
        size = target_size(self.capture, w, h)
        if size != (w, h):
            frame = self.cv2.resize(frame, size, interpolation=self.cv2.INTER_AREA)
        self.last_size = size
        return frame

    def _read_raw(self):
        if self._cap is not None:
            ok, frame = self._cap.read()
            return frame if ok else None
        while self._next < len(self._files):
            p = self._files[self._next]
            self._next += 1
            frame = self.cv2.imread(str(p), self.cv2.IMREAD_COLOR)
            if frame is not None:
                return frame
            self.skipped.append(p.name)
        return None

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class VideoWriter:
    """Annotated frames -> ``stem`` + .mp4 (mp4v) or .avi (MJPG), the first codec this OpenCV build opens.
    Frames of another size (image folders) are resized to the first frame's size. The frames go to a hidden
    partial file that replaces the video only on ``close``: a killed stream leaves the previous video whole."""

    def __init__(self, stem: str | os.PathLike, fps: float):
        self.cv2 = cv2_or_fail()
        self.stem, self.fps = Path(stem), float(fps) if fps and fps > 0 else 10.0
        self.path: Path | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self._w = None

    def _open(self, size: tuple[int, int]) -> None:
        cv2 = self.cv2
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        for fourcc, ext in CODECS:
            path = self.stem.with_suffix(ext)
            partial = path.with_name(f".{path.stem}.partial{ext}")     # OpenCV picks the container by extension
            w = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*fourcc), self.fps, size)
            if w.isOpened():
                self._w, self.path, self._partial, self.size = w, path, partial, size
                return
            w.release()
            partial.unlink(missing_ok=True)
        raise UserError(f"OpenCV could not open a video writer for any of {[c for c, _ in CODECS]}: "
                        f"reinstall with {CV2_HINT}, or run with out= empty to skip the video")

    def write(self, frame) -> None:
        h, w = frame.shape[:2]
        if self._w is None:
            self._open((w, h))
        if (w, h) != self.size:
            frame = self.cv2.resize(frame, self.size, interpolation=self.cv2.INTER_AREA)
        self._w.write(frame)
        self.frames += 1

    def close(self) -> Path | None:
        """Finish the file; its path (None when no frame was written)."""
        if self._w is not None:
            self._w.release()
            self._w = None
            commit_temp(self._partial, self.path)
        return self.path


def display_available() -> bool:
    """True when a window can be shown: a display server (or a desktop OS) and an OpenCV build with a GUI
    (opencv-python-headless has none)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        import cv2

        info = cv2.getBuildInformation()
    except ImportError:
        return False
    gui = info.split("GUI:", 1)[1].split("\n", 1)[0].strip() if "GUI:" in info else "NONE"
    return gui.upper() not in ("NONE", "")


class Display:
    """A window showing annotated frames; ``show`` returns False when the user pressed q or Esc."""

    def __init__(self, title: str = "visionlab stream"):
        self.cv2, self.title = cv2_or_fail(), title

    def show(self, frame) -> bool:
        self.cv2.imshow(self.title, frame)
        return (self.cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)

    def close(self) -> None:
        self.cv2.destroyWindow(self.title)


def build_display(mode: str | bool = "auto") -> Display | None:
    """'auto': a window only where a display exists; 'true': a window or a UserError saying why not; 'false': none."""
    mode = str(mode).lower()
    if mode in ("false", "0", "no", "off"):
        return None
    if mode not in ("auto", "true", "1", "yes", "on"):
        raise ConfigError(f"display={mode!r}: expected auto, true or false")
    if display_available():
        return Display()
    if mode == "auto":
        return None
    raise UserError("display=true but no window can open here (no DISPLAY, or OpenCV built without a GUI such as "
                    "opencv-python-headless); use display=false and watch the written video")
