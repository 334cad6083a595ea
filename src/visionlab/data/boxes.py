"""Box labels of detection datasets: Pascal VOC XML, COCO JSON and YOLO txt, read into one form (Item, Box).

Also format detection and the YOLO class-names file. Used by crop.py (`visionlab data crop`).
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..utils import UserError
from .decode import IMAGE_EXTS

FORMATS = ("voc", "coco", "yolo")


@dataclass
class Box:
    index: int               # position in the image's annotation: the <k> of <stem>_<k>.png
    label: str | None        # None: a class id the names do not cover
    coords: tuple | None     # (x0, y0, x1, y1) in pixels, or normalized for YOLO; None when unparsable
    crowd: bool = False


@dataclass
class Item:
    name: str                # how reports name the image (path relative to SRC, or the annotation's name)
    path: Path | None
    boxes: list[Box]
    normalized: bool = False  # YOLO: coords in [0, 1], scaled by the image size once it is opened


@dataclass
class Annotations:
    items: list[Item] = field(default_factory=list)
    missing: list[dict] = field(default_factory=list)     # annotations whose image is not there
    unlabeled: list[str] = field(default_factory=list)    # images without an annotation file
    bad: list[dict] = field(default_factory=list)         # annotation files that do not parse


# ---------------------------------------------------------------- listing and formats

def _walk(root: Path) -> list[str]:
    """Every non-hidden file under ``root``, relative with '/', sorted."""
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        rel = os.path.relpath(d, root)
        out += [f if rel == "." else f"{rel}/{f}".replace(os.sep, "/") for f in files if not f.startswith(".")]
    return sorted(out)


def _is_image(rel: str) -> bool:
    return os.path.splitext(rel)[1].lower() in IMAGE_EXTS


def _coco_jsons(root: Path, files: list[str]) -> list[str]:
    cands = [f for f in files if f.endswith(".json") and f.count("/") <= 1]
    out = []
    for f in cands:
        try:
            with open(root / f, encoding="utf-8") as fh:
                d = json.load(fh)
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and "images" in d and "annotations" in d:
            out.append(f)
    return out


def _yolo_labels(files: list[str]) -> list[str]:
    """.txt files under a 'labels' folder, or beside an image of the same stem."""
    stems = {os.path.splitext(f)[0] for f in files if _is_image(f)}
    return [f for f in files if f.endswith(".txt") and ("labels" in f.split("/")[:-1]
                                                        or os.path.splitext(f)[0] in stems)]


def detect_format(src) -> str:
    """'voc', 'coco' or 'yolo' from what SRC holds; a UserError when none or several kinds are found."""
    src = Path(src)
    if src.is_file():
        if src.suffix.lower() == ".json":
            return "coco"
        raise UserError(f"{src}: expected a folder of images and labels, or a COCO .json file")
    files = _walk(src)
    found = [k for k, hit in (("voc", any(f.endswith(".xml") for f in files)),
                              ("coco", bool(_coco_jsons(src, files))),
                              ("yolo", bool(_yolo_labels(files)))) if hit]
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(f"no box labels found in {src}: expected Pascal VOC .xml files, a COCO .json "
                        "(with images/annotations), or YOLO labels/*.txt; or pass format=voc|coco|yolo")
    raise UserError(f"{src} holds several label formats ({', '.join(found)}): pass format=" + "|".join(found))


# ---------------------------------------------------------------- readers

def _image_index(root: Path, files: list[str]) -> tuple[dict, dict]:
    by_name, by_stem = {}, {}
    for f in files:
        if _is_image(f):
            base = f.rsplit("/", 1)[-1]
            by_name.setdefault(base.lower(), f)
            by_stem.setdefault(os.path.splitext(base)[0].lower(), f)
    return by_name, by_stem


def _unlabeled(files: list[str], used: set, key=lambda f: f) -> list[str]:
    """Images without labels, in folders where other images have labels (masks/, previews/ are not ours)."""
    folders = {key(f).rsplit("/", 1)[0] if "/" in key(f) else "" for f in used}
    return [f for f in files if _is_image(f) and f not in used
            and (key(f).rsplit("/", 1)[0] if "/" in key(f) else "") in folders]


def _voc_boxes(ann) -> list[Box]:
    boxes = []
    for k, obj in enumerate(ann.findall("object")):
        bb = obj.find("bndbox")
        try:
            coords = tuple(float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            coords = None
        boxes.append(Box(k, (obj.findtext("name") or "").strip() or None, coords))
    return boxes


def read_voc(src) -> Annotations:
    """Pascal VOC: every *.xml under SRC; the image is its <filename>, else the XML's stem, anywhere under SRC.

    Box coordinates are used as given: the crop spans xmin..xmax, ymin..ymax in pixel edges.
    """
    root = Path(src)
    files = _walk(root)
    by_name, by_stem = _image_index(root, files)
    out, used = Annotations(), set()
    for rel in (f for f in files if f.endswith(".xml")):
        try:
            ann = ET.parse(root / rel).getroot()
        except (ET.ParseError, OSError) as e:
            out.bad.append({"name": rel, "reason": f"not readable XML: {e}"[:160]})
            continue
        if ann.tag != "annotation":
            continue                          # some other XML file: not ours to judge
        fname = (ann.findtext("filename") or "").strip().rsplit("/", 1)[-1]
        stem = os.path.splitext(rel.rsplit("/", 1)[-1])[0]
        img = by_name.get(fname.lower()) or by_stem.get(os.path.splitext(fname)[0].lower()) or by_stem.get(stem.lower())
        if img is None:
            out.missing.append({"name": fname or rel, "reason": f"no image for {rel}"})
            continue
        used.add(img)
        out.items.append(Item(img, root / img, _voc_boxes(ann)))
    out.unlabeled = _unlabeled(files, used)
    return out


def read_coco(src, images=None) -> Annotations:
    """COCO JSON: bbox [x, y, w, h] in pixels; iscrowd boxes are skipped (reported as 'crowd').

    Images resolve from ``images`` (a folder), else relative to the JSON's folder, its parent, their images/
    folders, else by file name anywhere under SRC.
    """
    src = Path(src)
    if src.is_dir():
        found = _coco_jsons(src, _walk(src))
        if len(found) != 1:
            raise UserError(f"{src}: expected one COCO .json (with images and annotations), found "
                            f"{len(found)}{': ' + ', '.join(found) if found else ''}; pass the JSON file as SRC")
        jpath, root = src / found[0], src
    else:
        jpath = src
        root = src.parent.parent if src.parent.name.lower() == "annotations" else src.parent
    try:
        d = json.loads(jpath.read_text(encoding="utf-8"))
        cats = {c["id"]: str(c["name"]) for c in d.get("categories", [])}
        imgs = {im["id"]: str(im["file_name"]) for im in d["images"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{jpath}: not a COCO detection JSON ({type(e).__name__}: {e})") from None
    dirs = ([Path(images)] if images else []) + [jpath.parent, jpath.parent / "images", root, root / "images"]
    by_name, _ = _image_index(root, _walk(root))
    per_image: dict = {i: [] for i in imgs}
    for a in d.get("annotations", []):
        bb = a.get("bbox") or []
        coords = (bb[0], bb[1], bb[0] + bb[2], bb[1] + bb[3]) if len(bb) == 4 else None
        if a.get("image_id") in per_image:
            boxes = per_image[a["image_id"]]
            boxes.append(Box(len(boxes), cats.get(a.get("category_id")), coords, bool(a.get("iscrowd"))))
    out = Annotations()
    for i, fname in imgs.items():
        path = next((p / fname for p in dirs if (p / fname).is_file()), None)
        if path is None and fname.rsplit("/", 1)[-1].lower() in by_name:
            path = root / by_name[fname.rsplit("/", 1)[-1].lower()]
        if path is None:
            out.missing.append({"name": fname, "reason": f"listed in {jpath.name}, not found"})
        else:
            out.items.append(Item(fname, path, per_image[i]))
    return out


def load_names(path) -> dict[int, str]:
    """Class names for YOLO ids: a YAML with `names:` (list or {id: name}), or a text file with one name a line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"names file not found: {path} (a YAML with a `names:` list or dict, or one name a line)")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() not in (".yaml", ".yml"):
        return {i: n.strip() for i, n in enumerate(l for l in text.splitlines() if l.strip())}
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e})") from None
    names = doc.get("names") if isinstance(doc, dict) else None
    if isinstance(names, list):
        return {i: str(n) for i, n in enumerate(names)}
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    raise UserError(f"{path}: no `names:` list or dict (e.g. `names: {{0: person, 1: bicycle}}`)")


def _yolo_boxes(text: str, names: dict) -> list[Box]:
    boxes = []
    for k, line in enumerate(l for l in text.splitlines() if l.strip()):
        parts = line.split()
        try:
            cls, vals = int(float(parts[0])), [float(v) for v in parts[1:]]
        except (ValueError, IndexError):
            boxes.append(Box(k, None, None))
            continue
        if len(vals) == 4:
            cx, cy, w, h = vals
            coords = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        elif len(vals) >= 6 and len(vals) % 2 == 0:      # a segment polygon: its bounding box
            coords = (min(vals[0::2]), min(vals[1::2]), max(vals[0::2]), max(vals[1::2]))
        else:
            coords = None
        boxes.append(Box(k, names.get(cls), coords))
    return boxes


def read_yolo(src, names) -> Annotations:
    """YOLO: labels/<...>/<stem>.txt (class cx cy w h, normalized) pairs with images/<...>/<stem>.<ext>."""
    if names is None:
        raise UserError("YOLO labels carry class ids only: pass names=FILE.yaml (a `names:` list or dict, "
                        "e.g. ../shared/data/coco128/object_detection.yaml) or names=FILE.txt (one name a line)")
    names = names if isinstance(names, dict) else load_names(names)
    root = Path(src)
    files = _walk(root)

    def key(rel: str) -> str:
        parts = rel.split("/")
        dirs = ["labels" if p == "images" else p for p in parts[:-1]]
        return "/".join(dirs + [os.path.splitext(parts[-1])[0]])

    images = {key(f): f for f in files if _is_image(f)}
    out, used = Annotations(), set()
    for rel in _yolo_labels(files):
        img = images.get(key(rel))
        if img is None:
            out.missing.append({"name": rel, "reason": "label file without an image"})
            continue
        used.add(img)
        try:
            boxes = _yolo_boxes((root / rel).read_text(encoding="utf-8"), names)
        except (OSError, UnicodeDecodeError) as e:
            out.bad.append({"name": rel, "reason": f"unreadable: {e}"[:160]})
            continue
        out.items.append(Item(img, root / img, boxes, normalized=True))
    out.unlabeled = _unlabeled(files, used, key)
    return out
