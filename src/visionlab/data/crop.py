"""Per-box crops from detection labels (Pascal VOC XML, COCO JSON, YOLO txt) into a class-folder dataset.

`visionlab data crop SRC OUT` writes OUT/<class>/<stem>_<k>.png, OUT/crops.csv and OUT/crop_report.json.
"""
from __future__ import annotations

import csv
import functools
import io
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..utils import UserError, atomic_write_text, write_json
from .boxes import FORMATS, Item, detect_format, read_coco, read_voc, read_yolo
from .decode import DecodeError, _open, letterbox, map_files, to_rgb_or_l
from .folder import SPLIT_DIRS

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
MANIFEST_FIELDS = ["crop", "class", "source", "box_index", "x0", "y0", "x1", "y1",
                   "crop_x0", "crop_y0", "crop_x1", "crop_y1"]


@dataclass
class CropSpec:
    """How a box becomes a crop: margin (fraction of box w/h added per side), letterbox, resize, minimum box side."""
    margin: float = 0.0
    pad_square: bool = False
    size: int = 0            # 0 keeps the crop's own size
    min_size: int = 0        # boxes with a side (in pixels, after clipping) below this are skipped


# ---------------------------------------------------------------- geometry

def _floor(v: float) -> int:
    return math.floor(round(v, 6))       # 0.1 * 30 = 3.0000000000000004 must not cost a pixel


def _ceil(v: float) -> int:
    return math.ceil(round(v, 6))


def box_problem(coords, width: int, height: int, min_size: int = 0) -> str | None:
    """Why a pixel box cannot be cropped ('degenerate', 'out of image', 'too small'), or None."""
    if coords is None or not all(math.isfinite(c) for c in coords):
        return "degenerate"
    x0, y0, x1, y1 = coords
    if x1 <= x0 or y1 <= y0:
        return "degenerate"
    w, h = min(x1, width) - max(x0, 0), min(y1, height) - max(y0, 0)
    if w <= 0 or h <= 0:
        return "out of image"
    if min(w, h) < min_size:
        return "too small"
    return None


def expand_box(coords, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer crop box: the box grown by ``margin`` x its width/height on each side, clipped to the image."""
    x0, y0, x1, y1 = coords
    mw, mh = margin * (x1 - x0), margin * (y1 - y0)
    return (max(0, _floor(x0 - mw)), max(0, _floor(y0 - mh)),
            min(width, _ceil(x1 + mw)), min(height, _ceil(y1 + mh)))


def crop_box(im: Image.Image, coords, spec: CropSpec) -> tuple[Image.Image, tuple]:
    """(crop, integer crop box) of a pixel box: margin, clip, optional letterbox, optional resize to size x size."""
    box = expand_box(coords, spec.margin, *im.size)
    out = im.crop(box)
    if spec.pad_square:
        out = letterbox(out)
    if spec.size and out.size != (spec.size, spec.size):
        out = out.resize((spec.size, spec.size), Image.BILINEAR)
    return out, box


def class_folder(label: str) -> str:
    """A safe folder name for a class: [A-Za-z0-9._-] kept, others '_'; split names (train, val, test) get '_class'."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", label.strip()).lstrip(".") or "_"
    return f"{name}_class" if name.lower() in SPLIT_DIRS else name


# ---------------------------------------------------------------- writing

def prepare_out(out, src) -> Path:
    """Check OUT is new or empty and not inside SRC; create it."""
    out, src = Path(out).resolve(), Path(src).resolve()
    if out == src or src in out.parents:
        raise UserError(f"output folder {out} lies inside the source {src}: choose a folder outside it")
    if out.exists() and (not out.is_dir() or any(not e.startswith(".") for e in os.listdir(out))):
        raise UserError(f"output folder {out} exists and is not empty: choose a new folder or delete it")
    out.mkdir(parents=True, exist_ok=True)
    return out


def open_image(path) -> Image.Image:
    """Decode with EXIF orientation into 'L' (gray sources) or 'RGB'; raises DecodeError for bad files."""
    im = _open(path)
    return to_rgb_or_l(im, im.mode in GRAY_MODES)


def stems(names: list[str]) -> dict[str, str]:
    """Output stem per image name: the file stem, or the relative path joined by '_' where stems collide."""
    count = Counter(os.path.splitext(n.rsplit("/", 1)[-1])[0] for n in names)
    out = {}
    for n in names:
        s = os.path.splitext(n.rsplit("/", 1)[-1])[0]
        out[n] = s if count[s] == 1 else os.path.splitext(n)[0].replace("/", "_")
    return out


def write_csv(path, rows: list[dict], fields: list[str]) -> None:
    """Write rows as CSV (atomically)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def save_png(im: Image.Image, path: Path) -> None:
    """Write a crop as PNG (fast zlib level: crops are many and small)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="PNG", compress_level=1)


def empty_result() -> dict:
    """The per-image result that crop and face workers return and merge_results() adds up."""
    return {"rows": [], "skipped": [], "unreadable_images": [], "renamed_classes": {}}


def _crop_item(item: Item, stem: str, out: Path, spec: CropSpec) -> dict:
    res = empty_result()
    try:
        im = open_image(item.path)
    except DecodeError as e:
        res["unreadable_images"].append({"name": item.name, "reason": str(e)})
        return res
    W, H = im.size
    for b in item.boxes:
        c = b.coords
        if c is not None and item.normalized:
            c = (c[0] * W, c[1] * H, c[2] * W, c[3] * H)
        reason = ("crowd" if b.crowd else None) or ("unknown class" if b.label is None else None) \
            or box_problem(c, W, H, spec.min_size)
        if reason:
            res["skipped"].append({"source": item.name, "box_index": b.index, "class": b.label, "reason": reason})
            continue
        cls = class_folder(b.label)
        if cls != b.label:
            res["renamed_classes"][b.label] = cls
        crop, box = crop_box(im, c, spec)
        rel = f"{cls}/{stem}_{b.index}.png"
        save_png(crop, out / rel)
        res["rows"].append(dict(zip(MANIFEST_FIELDS, [rel, b.label, item.name, b.index,
                                                      *[round(v, 2) for v in c], *box])))
    return res


def _crop_chunk(pairs, out, spec):
    return [_crop_item(item, stem, out, spec) for item, stem in pairs]


def merge_results(results: list[dict]) -> dict:
    """Add up per-image results: manifest rows, crops per class folder, skipped boxes, unreadable images."""
    rep = empty_result()
    for r in results:
        for k in ("rows", "skipped", "unreadable_images"):
            rep[k] += r[k]
        rep["renamed_classes"].update(r["renamed_classes"])
    rep["crops"] = dict(sorted(Counter(r["crop"].rsplit("/", 1)[0] for r in rep["rows"]).items()))
    rep["total"] = len(rep["rows"])
    rep["skipped_counts"] = dict(Counter(s["reason"] for s in rep["skipped"]))
    return rep


def crop_dataset(src, out, format: str = "auto", margin: float = 0.0, pad_square: bool = False, size: int = 0,
                 names=None, min_size: int = 0, images=None) -> dict:
    """Crop every labelled box of SRC into OUT/<class>/<stem>_<k>.png; returns the report (also OUT/crop_report.json).

    ``format``: auto|voc|coco|yolo. ``names``: YOLO class names file. ``images``: COCO image folder.
    Writes OUT/crops.csv (crop, class, source image, box, crop box). The report counts crops per class and
    lists skipped boxes (degenerate, out of image, too small, crowd, unknown class), images missing for an
    annotation, images without labels, unreadable images and unparsable annotation files, by name.
    """
    src = Path(src)
    if not src.exists():
        raise UserError(f"source not found: {src}")
    fmt = detect_format(src) if format == "auto" else format
    if fmt not in FORMATS:
        raise UserError(f"format={format!r}: expected auto, voc, coco or yolo")
    ann = {"voc": lambda: read_voc(src), "coco": lambda: read_coco(src, images),
           "yolo": lambda: read_yolo(src, names)}[fmt]()
    out = prepare_out(out, src if src.is_dir() else src.parent)
    spec = CropSpec(float(margin), bool(pad_square), int(size), int(min_size))
    stem_of = stems([it.name for it in ann.items])
    pairs = [(it, stem_of[it.name]) for it in ann.items]
    rep = merge_results(map_files(functools.partial(_crop_chunk, out=out, spec=spec), pairs))
    write_csv(out / "crops.csv", rep.pop("rows"), MANIFEST_FIELDS)
    report = {"src": str(src), "out": str(out), "format": fmt, "images": len(ann.items),
              "boxes": sum(len(it.boxes) for it in ann.items), **rep,
              "missing_images": ann.missing, "unlabeled_images": ann.unlabeled, "bad_annotations": ann.bad,
              "manifest": str(out / "crops.csv")}
    write_json(out / "crop_report.json", report)
    return report


def format_report(report: dict, what: str = "crops") -> str:
    """A short text summary of a crop (or faces) report."""
    lines = [f"{report['total']} {what} from {report['images']} images -> {report['out']}"]
    lines += [f"  {c}: {n}" for c, n in report["crops"].items()]
    if report.get("skipped_counts"):
        lines.append("skipped boxes: " + ", ".join(f"{r} {n}" for r, n in report["skipped_counts"].items()))
    for key, title in (("missing_images", "annotations without their image"),
                       ("unreadable_images", "unreadable images"), ("bad_annotations", "unparsable annotations"),
                       ("unlabeled_images", "images without labels"), ("no_face", "images with no face found")):
        items = report.get(key) or []
        if items:
            names = [i["name"] if isinstance(i, dict) else i for i in items]
            lines.append(f"{title} ({len(items)}): " + ", ".join(names[:20]) + (" ..." if len(names) > 20 else ""))
    renamed = report.get("renamed_classes") or {}
    if renamed:
        lines.append("class folders renamed: " + ", ".join(f"{o!r} -> {n}" for o, n in renamed.items()))
    return "\n".join(lines)
