"""Face crops from a folder of photos: OUT/<class or 'faces'>/<stem>_<k>.png (`visionlab data faces SRC OUT`).

Detectors that ship inside their PyPI package: OpenCV's Haar frontal-face cascade, or facenet-pytorch's MTCNN.
"""
from __future__ import annotations

import functools
from pathlib import Path

from ..utils import UserError, write_json
from .boxes import _is_image, _walk
from .crop import (MANIFEST_FIELDS, CropSpec, box_problem, crop_box, empty_result, merge_results, open_image,
                   prepare_out, save_png, stems, write_csv)
from .decode import DecodeError, map_files

DETECTORS = ("haar", "mtcnn")
CV2_HINT = 'pip install "opencv-python-headless<5"'
MTCNN_HINT = "pip install --no-deps facenet-pytorch"
MTCNN_THRESHOLD = 0.9        # MTCNN's own face probability; below it are mostly faces in posters and textures


def _haar(min_size: int):
    try:
        import cv2
    except ImportError:
        raise UserError(f"detector=haar needs OpenCV: {CV2_HINT} (or: pip install 'visionlab[faces]')") from None
    import numpy as np

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    if cascade.empty():
        raise UserError(f"OpenCV's haarcascade_frontalface_default.xml did not load: reinstall with {CV2_HINT}")

    def detect(im):
        gray = cv2.cvtColor(np.asarray(im.convert("RGB")), cv2.COLOR_RGB2GRAY)
        found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                         minSize=(max(min_size, 1), max(min_size, 1)))
        return [(float(x), float(y), float(x + w), float(y + h)) for x, y, w, h in found]
    return detect


def _mtcnn(min_size: int):
    try:
        from facenet_pytorch import MTCNN
    except ImportError:
        raise UserError(f"detector=mtcnn needs facenet-pytorch, which is optional: {MTCNN_HINT} (--no-deps: its "
                        "declared torch/numpy pins clash with ours, the code runs fine); or use detector=haar") from None
    model = MTCNN(keep_all=True, min_face_size=max(min_size, 12), device="cpu")

    def detect(im):
        boxes, probs = model.detect(im.convert("RGB"))
        if boxes is None:
            return []
        return [tuple(float(v) for v in b) for b, p in zip(boxes, probs) if p is not None and p >= MTCNN_THRESHOLD]
    return detect


@functools.lru_cache(maxsize=4)
def build_detector(name: str = "haar", min_size: int = 20):
    """A function PIL image -> [(x0, y0, x1, y1), ...] face boxes in pixels; 'haar' (OpenCV) or 'mtcnn'."""
    if name not in DETECTORS:
        raise UserError(f"detector={name!r}: expected haar (OpenCV, {CV2_HINT}) or mtcnn ({MTCNN_HINT})")
    return _haar(min_size) if name == "haar" else _mtcnn(min_size)


def _face_item(rel: str, stem: str, src: Path, out: Path, spec: CropSpec, detector: str, largest: bool) -> dict:
    res = empty_result()
    res["no_face"] = []
    try:
        im = open_image(src / rel)
    except DecodeError as e:
        res["unreadable_images"].append({"name": rel, "reason": str(e)})
        return res
    cls = rel.rsplit("/", 1)[0] if "/" in rel else "faces"
    boxes = [b for b in build_detector(detector, spec.min_size)(im) if not box_problem(b, *im.size, spec.min_size)]
    boxes.sort(key=lambda b: (b[1], b[0]))                 # top to bottom, left to right: stable <k>
    if largest and boxes:
        boxes = [max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))]
    if not boxes:
        res["no_face"].append(rel)
    for k, b in enumerate(boxes):
        crop, box = crop_box(im, b, spec)
        name = f"{cls}/{stem}_{k}.png"
        save_png(crop, out / name)
        res["rows"].append(dict(zip(MANIFEST_FIELDS, [name, cls, rel, k, *[round(v, 2) for v in b], *box])))
    return res


def _face_chunk(rels, **kw):
    return [_face_item(rel, stem, **kw) for rel, stem in rels]


def crop_faces(src, out, detector: str = "haar", margin: float = 0.2, pad_square: bool = True, size: int = 0,
               min_size: int = 20, largest: bool = False) -> dict:
    """Detect faces in every image under SRC and write each as OUT/<class>/<stem>_<k>.png.

    Images in SRC/<class>/ (any depth) keep their folder; images directly in SRC go to OUT/faces/.
    ``margin`` widens each box by that fraction of its size per side; ``min_size`` is the smallest face side in
    pixels; ``largest`` keeps one face per photo. Writes OUT/faces.csv and OUT/faces_report.json; the report
    lists photos with no face found and unreadable files by name.
    """
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"photo folder not found: {src}")
    build_detector(detector, int(min_size))           # fail early, before OUT is made, when a package is missing
    rels = [f for f in _walk(src) if _is_image(f)]
    if not rels:
        raise UserError(f"no images found under {src} (expected .jpg, .png, ... files, optionally in class folders)")
    out = prepare_out(out, src)
    spec = CropSpec(float(margin), bool(pad_square), int(size), int(min_size))
    stem_of = stems(rels)
    fn = functools.partial(_face_chunk, src=src, out=out, spec=spec, detector=detector, largest=bool(largest))
    results = map_files(fn, [(r, stem_of[r]) for r in rels])
    rep = merge_results(results)
    rep["no_face"] = [n for r in results for n in r.get("no_face", [])]
    write_csv(out / "faces.csv", rep.pop("rows"), MANIFEST_FIELDS)
    report = {"src": str(src), "out": str(out), "detector": detector, "images": len(rels), **rep,
              "manifest": str(out / "faces.csv")}
    write_json(out / "faces_report.json", report)
    return report
