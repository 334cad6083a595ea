"""Pretrained detectors that ship inside their PyPI packages, behind one small interface:
``detect(frame_bgr) -> [(x1, y1, x2, y2, score, label), ...]`` in frame pixels, split into preprocess / infer /
postprocess so that the stream can time each stage. OpenCV HOG people, OpenCV Haar faces, facenet-pytorch MTCNN."""
from __future__ import annotations

import sys
from typing import Callable

import numpy as np

from ..utils import ConfigError, UserError, closest

Detection = tuple[float, float, float, float, float, str]
DETECTORS = ("hog", "haar", "mtcnn")
CV2_HINT = 'pip install "opencv-python-headless<5"'
MTCNN_HINT = "pip install --no-deps facenet-pytorch requests"


def _cv2():
    try:
        import cv2
    except ImportError:
        raise UserError(f"the OpenCV detectors need OpenCV: {CV2_HINT}") from None
    return cv2


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes (N, 4 as x1, y1, x2, y2) kept by greedy non-maximum suppression at ``iou``,
    best score first (OpenCV's cv2.dnn.NMSBoxes: no torch import on the hot path)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    xywh = [[float(x1), float(y1), float(x2 - x1), float(y2 - y1)] for x1, y1, x2, y2 in boxes]
    ranks = np.asarray(scores, np.float64) - np.min(scores) + 1.0   # NMSBoxes keeps scores > its threshold >= 0
    keep = _cv2().dnn.NMSBoxes(xywh, ranks.tolist(), 0.0, float(iou))
    return np.asarray(keep, np.int64).reshape(-1)


class Detector:
    """Base: resize the frame to ``input_size`` (a width, keeping the aspect; None = as captured), run the model,
    map boxes back to frame pixels, drop those under ``min_score`` and suppress overlaps above ``iou``."""

    name, label = "detector", "object"
    min_score, iou = 0.0, 0.45

    def __init__(self, input_size: int | None = None, min_score: float | None = None, iou: float | None = None):
        self.cv2 = _cv2()
        self.input_size = int(input_size) if input_size else None
        self.min_score = self.min_score if min_score is None else float(min_score)
        self.iou = self.iou if iou is None else float(iou)

    def preprocess(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, float]:
        """(model input, frame pixels per input pixel)."""
        h, w = frame_bgr.shape[:2]
        if not self.input_size or self.input_size == w:
            return self._convert(frame_bgr), 1.0
        size = (self.input_size, max(1, round(h * self.input_size / w)))
        interp = self.cv2.INTER_AREA if self.input_size < w else self.cv2.INTER_LINEAR
        return self._convert(self.cv2.resize(frame_bgr, size, interpolation=interp)), w / self.input_size

    def _convert(self, image: np.ndarray) -> np.ndarray:
        return image

    def infer(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw (boxes (N, 4) x1 y1 x2 y2 in input pixels, scores (N,))."""
        raise NotImplementedError

    def postprocess(self, raw: tuple[np.ndarray, np.ndarray], scale: float) -> list[Detection]:
        boxes, scores = raw
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4) * scale
        scores = np.asarray(scores, np.float32).reshape(-1)
        ok = scores >= self.min_score
        boxes, scores = boxes[ok], scores[ok]
        keep = nms(boxes, scores, self.iou)
        return [(*(round(float(v), 1) for v in boxes[i]), round(float(scores[i]), 4), self.label) for i in keep]

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        """Boxes in frame pixels, best first: [(x1, y1, x2, y2, score, label), ...]."""
        x, scale = self.preprocess(frame_bgr)
        return self.postprocess(self.infer(x), scale)

    def describe(self) -> dict:
        return {"detector": self.name, "input_size": self.input_size, "min_score": self.min_score, "iou": self.iou}


class HOGPeople(Detector):
    """OpenCV's HOG + linear SVM pedestrian detector (Dalal & Triggs, 64x128 window). People smaller than about
    100 px tall in the input are missed, so shrinking the input buys speed with recall. ``win_stride`` (pixels, a
    multiple of 8) and ``scale`` (pyramid step) are the speed knobs; ``levels`` caps the pyramid depth."""

    name, label = "hog", "person"
    min_score, iou = 0.3, 0.45           # grouped SVM margins of people on vtest.avi: 1.1-4; 0.3 drops stray windows

    def __init__(self, input_size=None, min_score=None, iou=None, win_stride: int = 8, scale: float = 1.1,
                 levels: int = 64):
        super().__init__(input_size, min_score, iou)
        cv2 = self.cv2
        if win_stride < 8 or win_stride % 8 or scale <= 1.0 or levels < 1:
            raise ConfigError(f"HOG needs win_stride a multiple of 8 (got {win_stride}), scale > 1 (got {scale}), "
                              f"levels >= 1 (got {levels})")
        self.win_stride, self.scale, self.levels = int(win_stride), float(scale), int(levels)
        self.hog = cv2.HOGDescriptor((64, 128), (16, 16), (8, 8), (8, 8), 9, 1, -1.0,
                                     cv2.HOGDescriptor_L2Hys, 0.2, False, self.levels)
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def infer(self, image):
        rects, weights = self.hog.detectMultiScale(image, winStride=(self.win_stride,) * 2, padding=(8, 8),
                                                   scale=self.scale)
        rects = np.asarray(rects, np.float32).reshape(-1, 4)
        rects[:, 2:] += rects[:, :2]                                   # x, y, w, h -> x1, y1, x2, y2
        return rects, np.asarray(weights, np.float32).reshape(-1)

    def describe(self) -> dict:
        return {**super().describe(), "win_stride": self.win_stride, "scale": self.scale, "levels": self.levels}


class HaarFaces(Detector):
    """OpenCV's Viola-Jones frontal-face cascade on the equalized gray frame; the score is the cascade's last-stage
    weight (detectMultiScale3), which ranks faces for NMS."""

    name, label = "haar", "face"
    min_score = -np.inf                  # the neighbour vote already filters; the weights are not probabilities

    def __init__(self, input_size=None, min_score=None, iou=None, min_size: int = 20, neighbours: int = 5):
        super().__init__(input_size, min_score, iou)
        self.cascade = self.cv2.CascadeClassifier(self.cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        if self.cascade.empty():
            raise UserError(f"OpenCV's haarcascade_frontalface_default.xml did not load: reinstall with {CV2_HINT}")
        self.min_size, self.neighbours = int(min_size), int(neighbours)

    def _convert(self, image):
        return self.cv2.equalizeHist(self.cv2.cvtColor(image, self.cv2.COLOR_BGR2GRAY))

    def infer(self, image):
        rects, _, weights = self.cascade.detectMultiScale3(image, scaleFactor=1.1, minNeighbors=self.neighbours,
                                                           minSize=(self.min_size,) * 2, outputRejectLevels=True)
        rects = np.asarray(rects, np.float32).reshape(-1, 4)
        rects[:, 2:] += rects[:, :2]
        return rects, np.asarray(weights, np.float32).reshape(-1)


class MTCNNFaces(Detector):
    """facenet-pytorch's MTCNN (P/R/O-Net cascade, weights bundled in the wheel); score = face probability."""

    name, label = "mtcnn", "face"
    min_score = 0.9                      # below it were mostly faces in posters and textures

    def __init__(self, input_size=None, min_score=None, iou=None, min_size: int = 20):
        super().__init__(input_size, min_score, iou)
        from facenet_pytorch import MTCNN              # ImportError handled by build_detector

        self.model = MTCNN(keep_all=True, min_face_size=max(int(min_size), 12), device="cpu")

    def _convert(self, image):
        return self.cv2.cvtColor(image, self.cv2.COLOR_BGR2RGB)

    def infer(self, image):
        boxes, probs = self.model.detect(image)
        if boxes is None:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        return np.asarray(boxes, np.float32), np.asarray([p if p is not None else 0.0 for p in probs], np.float32)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def build_detector(name: str, input_size: int | None = None, log: Callable[[str], None] = _stderr,
                   **params) -> Detector:
    """A detector by name: 'hog' (people), 'haar' or 'mtcnn' (faces). ``params`` go to its class (e.g. win_stride,
    scale for HOG). mtcnn without facenet-pytorch installed falls back to haar and says so through ``log``."""
    if name not in DETECTORS:
        hint = closest(name, DETECTORS)
        raise UserError(f"unknown detector {name!r}" + (f"; did you mean {hint!r}?" if hint else "") +
                        f" (detectors: {', '.join(DETECTORS)}, or none)")
    if name == "mtcnn":
        try:
            return MTCNNFaces(input_size, **params)
        except ImportError as e:
            log(f"detector=mtcnn: facenet-pytorch is not importable ({e}); using OpenCV's Haar face cascade "
                f"instead. For MTCNN: {MTCNN_HINT}")
            name = "haar"
    cls = {"hog": HOGPeople, "haar": HaarFaces}[name]
    try:
        return cls(input_size, **params)
    except TypeError as e:
        raise ConfigError(f"detector={name}: {e}") from None
