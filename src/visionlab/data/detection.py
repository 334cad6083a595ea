"""Object-detection sources (NEU-DET, COCO128, a user's VOC / YOLO / COCO folder) -> Splits whose ImageSets carry
``boxes``: float32 [N, M, 5], per image its boxes as rows (x0, y0, x1, y1, class) in pixels of the stored image,
padded with rows of -1 (class -1 = padding); M = max(1, most boxes in any image of the dataset), for every split.

Images are letterboxed: resized (bilinear, antialiased) so that the long side is S = data.image_size, aspect kept,
at the top-left of an S x S canvas of grey 114 (Splits.preprocess ``letterbox``: decode.try_load makes the same canvas
of a new image); boxes are multiplied by the same factor, decode.letterbox_scale(h, w, S), so a box predicted on the
canvas maps back to the original image as box / scale. data.image_size=0 keeps the native size when every image has
the same size (NEU-DET: 200x200). ``ImageSet.labels`` = each image's dominant class (most boxes, ties -> lowest id),
num_classes for an image without boxes (a negative, kept): seeded splits and data.limit stratify on it.

Labels are read by data/boxes.py and cleaned in one place, ``clean_boxes``, which never raises: what it clips or drops
lands in Splits.label_issues; label files without an image and unreadable files land in Splits.skipped. Two passes,
both cached through data/cache.py: the cleaned labels with each image's size (headers only), then the letterboxed
pixels of the images kept after data.limit.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import data_root
from ..utils import UserError, closest
from . import cache
from .base import ImageSet, Splits
from .boxes import FORMATS, Annotations, Item, detect_format, load_names, read_coco, read_voc, read_yolo
from .decode import decode_files, letterbox_scale, letterbox_size, probe_files
from .masks import valid_stats
from .segmentation import COCO_SPLIT_DIRS, SPLIT_DIRS
from .split import hold_out_val, limit_indices, missing_data_error, split_names

NEU_DET_CLASSES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
EDGE_TOL = 0.01      # px: normalized YOLO coordinates overshoot the edge by ~1e-4 px; clipped without a report
NEGATIVE = "kept as a negative"


@dataclass
class BoxTable:
    """Every usable image of a source with its cleaned boxes in original pixels (the cached label pass)."""

    names: list[str]                 # path relative to the root (reports, manifest, folder splits)
    paths: list[str]
    sizes: np.ndarray                # int64 [N, 2] (H, W) as decoded (EXIF orientation applied)
    boxes: list[np.ndarray]          # float32 [K, 5] per image
    classes: list[str]
    issues: list[dict]
    skipped: list[dict]

    def labels(self) -> np.ndarray:
        """int64 [N]: the dominant class of each image, len(classes) for an image without boxes."""
        c = len(self.classes)
        return np.array([np.bincount(b[:, 4].astype(np.int64), minlength=c).argmax() if len(b) else c
                         for b in self.boxes], np.int64)


# ---------------------------------------------------------------- validation

def clean_boxes(item: Item, size: tuple[int, int], class_ids: dict[str, int],
                left_out: frozenset = frozenset()) -> tuple[np.ndarray, list[dict]]:
    """(float32 [K, 5] rows x0, y0, x1, y1, class in pixels, issue rows) of one image of ``size`` (W, H).

    The one place labels are judged; it never raises. Crowd boxes, unparsable coordinates, classes not in
    ``class_ids`` (``left_out``: known classes that data.box_classes does not select, reported as such), zero-area or
    inverted boxes and boxes wholly outside the image are dropped; boxes partly outside are
    clipped to the image; exact duplicates (same class, same coordinates at 0.1 px) are dropped but one. An image left
    without boxes is kept as a negative. Rows: {"file", "issue", "action", "box"} (the box as read, in pixels; None
    when unparsable; "unknown class" rows add the "label" read), or {"file", "issue", "action", "count"} for the
    image (count = its boxes in the label file).
    """
    w, h = size
    scale = (w, h, w, h) if item.normalized else (1, 1, 1, 1)
    rows, issues, seen = [], [], set()

    def report(issue, action, box, **extra):
        box = None if box is None else [round(v, 2) for v in box]
        issues.append({"file": item.name, "issue": issue, "action": action, "box": box, **extra})

    for b in item.boxes:
        raw = None if b.coords is None else [float(v) * s for v, s in zip(b.coords, scale)]
        if b.crowd:
            report("crowd box", "dropped", raw)
        elif raw is None or not all(math.isfinite(v) for v in raw):
            report("unparsable coordinates", "dropped", None)
        elif b.label in left_out:
            report("class not in data.box_classes", "dropped", raw, label=b.label)
        elif b.label not in class_ids:
            report("unknown class", "dropped", raw, label=b.label)
        elif raw[2] <= raw[0] or raw[3] <= raw[1]:
            report("zero-area or inverted box", "dropped", raw)
        else:
            box = [min(max(v, 0.0), lim) for v, lim in zip(raw, (w, h, w, h))]
            if box[2] <= box[0] or box[3] <= box[1]:
                report("box outside the image", "dropped", raw)
                continue
            if max(abs(a - r) for a, r in zip(box, raw)) > EDGE_TOL:
                report("box partly outside the image", "clipped", raw)
            key = (class_ids[b.label], *(round(v, 1) for v in box))
            if key in seen:
                report("duplicate box", "dropped", raw)
                continue
            seen.add(key)
            rows.append([*box, class_ids[b.label]])
    if not item.boxes:
        issues.append({"file": item.name, "issue": "empty label file", "action": NEGATIVE, "count": 0})
    elif not rows:
        issues.append({"file": item.name, "issue": "no valid box left", "action": NEGATIVE, "count": len(item.boxes)})
    return np.array(rows, np.float32).reshape(-1, 5), issues


# ---------------------------------------------------------------- the label pass (cached)

def read_labels(root: Path, fmt: str, names=None) -> tuple[Annotations, list[str]]:
    """(annotations, class names) of a folder: YOLO names from ``names`` (a YAML/txt file, by id); VOC/COCO names
    from ``names`` when given, else the labels found, sorted."""
    if fmt == "yolo":
        if not names:
            raise UserError(f"{root}: YOLO labels carry class ids only: set data.names=FILE (a YAML with a `names:` "
                            "list or dict, or a text file with one name a line)")
        table = load_names(names)
        return read_yolo(root, table), [table[i] for i in sorted(table)]
    ann = read_voc(root) if fmt == "voc" else read_coco(root)
    if names:
        table = load_names(names)
        return ann, [table[i] for i in sorted(table)]
    return ann, sorted({b.label for it in ann.items for b in it.boxes if b.label})


def _tree_identity(root: Path) -> list:
    """[(path, size, mtime_ns)] of every file under ``root``: the label pass's cache key."""
    out = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            st = os.stat(os.path.join(d, f))
            out.append((os.path.relpath(os.path.join(d, f), root), st.st_size, st.st_mtime_ns))
    return out


def _relative(path: Path, root: Path, fallback: str) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return fallback


def select_classes(classes: list[str], wanted: list) -> list[str]:
    """``wanted`` (data.box_classes) checked against the dataset's classes, in the order given; [] keeps them all."""
    wanted = [str(c) for c in wanted or []]
    unknown = [c for c in wanted if c not in classes]
    if unknown:
        hints = [f"{c!r} (did you mean {closest(c, classes)!r}?)" if closest(c, classes) else repr(c) for c in unknown]
        raise UserError(f"data.box_classes names classes this dataset does not have: {', '.join(hints)}; it has "
                        f"{', '.join(classes[:20])}{' ...' if len(classes) > 20 else ''}")
    if len(set(wanted)) != len(wanted):
        raise UserError(f"data.box_classes={wanted} names a class twice")
    return wanted or list(classes)


def _build_table(root: Path, fmt: str, names, classes, wanted=()) -> tuple[dict, dict]:
    """Read, size and clean every image's labels: (arrays, meta) for the cache."""
    ann, found = read_labels(root, fmt, names)
    every = list(classes or found)
    classes = select_classes(every, list(wanted))
    class_ids = {c: i for i, c in enumerate(classes)}
    left_out = frozenset(every) - set(classes)
    skipped = [{"file": str(root / m["name"]), "reason": m["reason"]} for m in ann.missing + ann.bad]
    items = sorted([(_relative(it.path, root, it.name), it) for it in ann.items]
                   + [(rel, None) for rel in ann.unlabeled], key=lambda t: t[0])
    sizes = probe_files([str(root / rel if it is None else it.path) for rel, it in items], oriented=True)
    out = {"names": [], "paths": [], "sizes": [], "counts": [], "boxes": [], "issues": []}
    for (rel, it), (size, reason) in zip(items, sizes):
        path = root / rel if it is None else it.path
        if size is None or rel in out["names"][-1:]:
            skipped.append({"file": str(path), "reason": reason or "a second label file for this image: ignored"})
            continue
        if it is None:                             # an image without a label file: a negative
            boxes, issues = np.zeros((0, 5), np.float32), [{"file": rel, "issue": "no label file", "action": NEGATIVE,
                                                             "count": 0}]
        else:
            it.name = rel
            boxes, issues = clean_boxes(it, size, class_ids, left_out)
        out["names"].append(rel)
        out["paths"].append(str(path))
        out["sizes"].append((size[1], size[0]))
        out["counts"].append(len(boxes))
        out["boxes"].append(boxes)
        out["issues"] += issues
    arrays = {"sizes": np.array(out["sizes"], np.int64).reshape(-1, 2), "counts": np.array(out["counts"], np.int64),
              "boxes": np.concatenate(out["boxes"]) if out["boxes"] else np.zeros((0, 5), np.float32)}
    meta = {"names": out["names"], "paths": out["paths"], "classes": classes, "issues": out["issues"],
            "skipped": skipped}
    return arrays, meta


def box_table(cfg, name: str, root: Path, fmt: str, names=None, classes=None) -> BoxTable:
    """The cleaned labels of every image under ``root`` (cached; any changed file under root gives a new key)."""
    names_id = cache.file_identity([names]) if names and Path(names).is_file() else str(names)   # load_names says why
    wanted = list(cfg.box_classes or [])
    key = cache.make_key(name, fmt, _tree_identity(root), names_id, classes, wanted)
    slot = cache.make_key(name, str(root.resolve()), "labels", wanted)
    arrays, meta, _ = cache.cached(cfg, name + "-labels", slot, key,
                                   lambda: _build_table(root, fmt, names, classes, wanted))
    boxes = np.split(arrays["boxes"], np.cumsum(arrays["counts"])[:-1]) if len(arrays["counts"]) else []
    return BoxTable(meta["names"], meta["paths"], arrays["sizes"], boxes, meta["classes"], meta["issues"],
                    meta["skipped"])


# ---------------------------------------------------------------- splits, size, decoding

def _folder_split(name: str, split_dirs: dict) -> str | None:
    """The split named by the first folder of ``name`` found in ``split_dirs`` (images/train/x.jpg -> train)."""
    return next((split_dirs[d.lower()] for d in name.split("/")[:-1] if d.lower() in split_dirs), None)


def assign_splits(table: BoxTable, labels: np.ndarray, cfg, split_dirs: dict, root: Path):
    """(split per image, skipped): from split folders (val held out of train when missing), else a seeded cfg.split."""
    folders = np.array([_folder_split(n, split_dirs) for n in table.names], dtype=object)
    if not any(f is not None for f in folders):
        return split_names(labels, cfg), []
    skipped = [{"file": p, "reason": "ignored: outside the split folders"}
               for p, f in zip(table.paths, folders) if f is None]
    have = set(folders.tolist())
    for need in ("train", "test"):
        if need not in have:
            raise UserError(f"{root} has split folders but no {need}/ images: add a {need}/ folder, or put every "
                            f"image in one folder (visionlab then makes a seeded data.split={cfg.split} split)")
    return hold_out_val(folders, labels, cfg), skipped


def _canvas_size(cfg, sizes: np.ndarray, root: Path) -> int:
    """S: data.image_size, else the native long side when every image has the same size."""
    if cfg.image_size:
        return int(cfg.image_size)
    shapes = sorted({(int(h), int(w)) for h, w in sizes}, key=lambda s: -s[0] * s[1])
    if len(shapes) == 1:
        return max(shapes[0])
    examples = ", ".join(f"{w}x{h}" for h, w in shapes[:3])
    raise UserError(f"{root}: the images come in {len(shapes)} sizes ({examples}, ...): set data.image_size=N, the "
                    f"side of the square letterbox canvas (e.g. data.image_size={max(max(s) for s in shapes)})")


def _decode(cfg, name: str, root: Path, paths: list[str], pre: dict):
    """(images uint8 [K, S, S, C], ok positions into paths, skipped) of the kept images, cached."""
    key = cache.make_key(name, paths, cache.file_identity(paths), pre)
    slot = cache.make_key(name, str(root.resolve()), pre, cfg.limit)     # a quick run keeps the full cache

    def build():
        res = decode_files(paths, pre)
        ok = [k for k, (a, _) in enumerate(res) if a is not None]
        c = 1 if pre["grayscale"] else 3
        images = np.stack([res[k][0] for k in ok]) if ok else np.zeros((0, pre["letterbox"], pre["letterbox"], c),
                                                                       np.uint8)
        skipped = [{"file": paths[k], "reason": r} for k, (a, r) in enumerate(res) if a is None]
        return {"images": images, "ok": np.array(ok, np.int64)}, {"skipped": skipped}

    arrays, meta, _ = cache.cached(cfg, name + "-images", slot, key, build)
    return arrays["images"], arrays["ok"], meta["skipped"]


def _check_memory(cfg, root: Path, n: int, pre: dict) -> None:
    nbytes = n * pre["letterbox"] ** 2 * (1 if pre["grayscale"] else 3)
    if not cache.want_memory(cfg, nbytes):
        raise UserError(f"{root}: {n} images need about {nbytes / 2**30:.1f} GiB decoded: set data.image_size=N "
                        "(smaller canvas), data.limit=N, or data.in_memory=true to decode anyway")


def _padded(boxes: list[np.ndarray], scales: np.ndarray, m: int) -> np.ndarray:
    """float32 [N, m, 5]: each image's boxes times its letterbox scale, padded with rows of -1."""
    out = np.full((len(boxes), m, 5), -1, np.float32)
    for k, (b, s) in enumerate(zip(boxes, scales)):
        out[k, :len(b), :4] = b[:, :4] * s
        out[k, :len(b), 4] = b[:, 4]
    return out


def load_detection(cfg, name: str, root: Path, fmt: str, names=None, classes=None, split_dirs: dict = SPLIT_DIRS,
                   source: str = "") -> Splits:
    """Splits of a box dataset under ``root`` in ``fmt`` (voc, coco, yolo): classes from ``classes``, else
    read_labels; splits from folders named in ``split_dirs``, else a seeded, stratified cfg.split; cfg.limit per split
    before decoding; letterboxed to S = cfg.image_size; mean/std over the train images' unpadded pixels."""
    if str(cfg.in_memory).lower() in ("false", "0", "no"):
        raise UserError("box datasets are decoded into memory (boxes have no lazy file path): drop "
                        "data.in_memory=false; shrink them with data.image_size=N (the canvas side) or data.limit=N")
    if cfg.pad_square:
        raise UserError("data.pad_square does not apply to box datasets: their images are letterboxed onto a square "
                        "canvas already (drop data.pad_square=true)")
    table = box_table(cfg, name, root, fmt, names, classes)
    if not table.names:
        raise UserError(f"{root}: no usable images with {fmt} labels found")
    labels = table.labels()
    split_of, outside = assign_splits(table, labels, cfg, split_dirs, root)
    keep = []
    for s in ("train", "val", "test"):             # data.limit before decoding, build_splits' rule: no-op later
        idx = np.flatnonzero(split_of == s)
        keep.append(idx[limit_indices(labels[idx], cfg.limit, cfg.split_seed)] if cfg.limit > 0 else idx)
    keep = np.concatenate(keep)                    # split by split: each split is a slice (a view) of the arrays
    used = np.array([s is not None for s in split_of], bool)
    size = _canvas_size(cfg, table.sizes[used], root)
    pre = {"image_size": 0, "letterbox": size, "pad_square": False, "grayscale": bool(cfg.grayscale)}
    _check_memory(cfg, root, len(keep), pre)
    images, ok, bad = _decode(cfg, name, root, [table.paths[i] for i in keep], pre)
    if not len(ok):
        raise UserError(f"{root}: none of the {len(keep)} images could be decoded")
    rows = keep[ok]
    scales = np.array([letterbox_scale(h, w, size) for h, w in table.sizes[rows]])
    boxes = _padded([table.boxes[i] for i in rows], scales, max(1, max(len(b) for b in table.boxes)))
    lab, spl, img_names = labels[rows], split_of[rows], [table.names[i] for i in rows]
    sets = {}
    for s in ("train", "val", "test"):
        i = np.flatnonzero(spl == s)
        part = slice(int(i[0]), int(i[-1]) + 1) if len(i) else slice(0, 0)
        sets[s] = None if s == "val" and not len(i) else ImageSet(
            labels=lab[part], images=images[part], names=img_names[part], boxes=boxes[part])
    if not len(sets["train"]):
        raise UserError(f"{root}: the train split has no readable images")
    content = np.array([letterbox_size(h, w, size) for h, w in table.sizes[rows]], np.int64).reshape(-1, 2)
    mean, std = valid_stats(sets["train"].images, content[spl == "train"])
    classes = table.classes
    manifest = [{"file": n, "label": classes[c] if c < len(classes) else "(no boxes)", "split": str(s)}
                for n, c, s in zip(img_names, lab, spl)]
    return Splits(train=sets["train"], val=sets["val"], test=sets["test"], classes=list(classes),
                  channels=int(images.shape[3]), image_size=(size, size), mean=mean, std=std,
                  source=source or f"{name}: {fmt} boxes in {root.resolve()} (letterbox {size}x{size})",
                  skipped=table.skipped + outside + bad, manifest=manifest, preprocess=pre,
                  label_issues=list(table.issues))


# ---------------------------------------------------------------- builders

def build_neu_det_boxes(cfg) -> Splits:
    """NEU-DET steel-surface defects with their boxes at data_root(cfg, 'neu_det') (images/*.jpg,
    annotations/*.xml, 200x200 gray), 6 classes in a fixed order, split data.split (8:1:1) seeded by data.split_seed,
    stratified by each image's dominant class."""
    root = data_root(cfg, "neu_det")
    if not (root / "annotations").is_dir() or not (root / "images").is_dir():
        raise missing_data_error("neu_det_boxes", root, ["images/<class>_<n>.jpg", "annotations/<class>_<n>.xml"],
                                 "neu_det", downloadable=False)
    return load_detection(cfg, "neu_det_boxes", root, "voc", classes=NEU_DET_CLASSES, split_dirs={},
                          source=f"neu_det_boxes: NEU-DET images with Pascal VOC boxes in {root.resolve()}")


def build_coco128(cfg) -> Splits:
    """COCO128 detection at data_root(cfg, 'coco128'): images/<split>/*.jpg with YOLO labels/<split>/*.txt, 80
    classes named in object_detection.yaml; train2017 -> train (+ a seeded data.val_fraction hold-out as val),
    val2017 -> test. Its two label files without an image are in Splits.skipped, its two images without a label
    file are kept as negatives."""
    root = data_root(cfg, "coco128")
    names = root / "object_detection.yaml"
    if not names.is_file() or not (root / "labels").is_dir():
        raise missing_data_error("coco128", root, ["images/{train2017,val2017}/*.jpg",
                                                   "labels/{train2017,val2017}/*.txt", "object_detection.yaml"],
                                 "coco128", downloadable=False)
    return load_detection(cfg, "coco128", root, "yolo", names=names, split_dirs=COCO_SPLIT_DIRS,
                          source=f"coco128: COCO128 images with YOLO boxes in {root.resolve()}")


def build_box_folder(cfg) -> Splits:
    """A user's detection folder at data.root with Pascal VOC .xml, a COCO .json or YOLO labels/*.txt (data.box_format,
    else detected); class names from data.names (needed for YOLO), else the labels' names sorted. Split folders
    (train/, val/, test/ anywhere in the path) give the splits, else a seeded data.split."""
    if not cfg.root:
        raise UserError("data.name=box_folder needs data.root=PATH: a folder of images with Pascal VOC .xml, a COCO "
                        ".json or YOLO labels/*.txt (then also data.names=FILE)")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise UserError(f"box folder not found: {root} (data.root)")
    fmt = cfg.box_format
    if fmt and fmt not in FORMATS:
        raise UserError(f"data.box_format={fmt!r}: expected one of {', '.join(FORMATS)} (or empty to detect it)")
    if not fmt:
        try:
            fmt = detect_format(root)
        except UserError as e:
            raise UserError(f"{e} (here: data.box_format=" + "|".join(FORMATS) + ")") from None
    return load_detection(cfg, "box_folder", root, fmt, names=cfg.names or None)
