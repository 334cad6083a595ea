"""Dataset health checks (`visionlab data check ROOT`: class folders, or images/ + masks/ segmentation folders) and
the per-run data report (data_report.json / .md)."""
from __future__ import annotations

import hashlib
import warnings
from collections import Counter, defaultdict
from pathlib import Path

from ..utils import atomic_write_text, write_json
from .decode import map_files
from .folder import scan_folder


def _inspect(path: str) -> dict:
    """sha1 of the bytes, and size/mode or the reason the file does not decode."""
    from PIL import Image

    from .decode import DecodeError, _open
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return {"sha1": None, "error": f"unreadable: {e}"}
    out = {"sha1": hashlib.sha1(data).hexdigest(), "error": None}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as raw:
                out["mode"] = raw.mode                 # the stored mode, before any conversion
            im = _open(path)
        out["size"] = f"{im.size[0]}x{im.size[1]}"
    except DecodeError as e:
        out["error"] = str(e)
    except Exception as e:
        out["error"] = f"unreadable: {type(e).__name__}: {e}"[:160]
    return out


def _inspect_chunk(paths):
    return [_inspect(p) for p in paths]


def _duplicates(groups: dict, split_of: dict):
    within, across = [], []
    for files in groups.values():
        if len(files) < 2:
            continue
        splits = {split_of[f] for f in files}
        (across if len(splits) > 1 else within).append(sorted(files))
    return sorted(within), sorted(across)


def check_dataset(root) -> dict:
    """Inspect an image-folder dataset: counts per split and class, balance, corrupt files, duplicates, sizes.

    Duplicates are byte-identical files (sha1); ``duplicates_across_splits`` lists leakage between splits.
    Folders without split folders are reported as the single split 'all'.
    """
    listing = scan_folder(root)
    files = [e.rel for e in listing.entries]
    split_of = {e.rel: e.split or "all" for e in listing.entries}
    infos = map_files(_inspect_chunk, [str(listing.root / f) for f in files])
    counts: dict = defaultdict(Counter)
    for e in listing.entries:
        counts[split_of[e.rel]][listing.classes[e.label]] += 0
    corrupt, sizes, modes, by_hash = [], Counter(), Counter(), defaultdict(list)
    for e, info in zip(listing.entries, infos):
        if info["sha1"]:
            by_hash[info["sha1"]].append(e.rel)
        if info["error"]:
            corrupt.append({"file": e.rel, "reason": info["error"]})
            continue
        counts[split_of[e.rel]][listing.classes[e.label]] += 1
        sizes[info["size"]] += 1
        modes[info["mode"]] += 1
    within, across = _duplicates(by_hash, split_of)
    per_split = {s: {c: c_counts.get(c, 0) for c in listing.classes} for s, c_counts in sorted(counts.items())}
    balance = {}
    for s, cc in per_split.items():
        lo, hi = min(cc.values()), max(cc.values())
        balance[s] = {"min": lo, "max": hi, "ratio": round(lo / hi, 4) if hi else 0.0}
    return {"root": str(listing.root), "layout": listing.layout, "classes": listing.classes,
            "num_files": len(files), "counts": per_split, "balance": balance, "corrupt": corrupt,
            "ignored": listing.ignored, "duplicates_within_split": within, "duplicates_across_splits": across,
            "sizes": dict(sizes.most_common()), "modes": dict(modes.most_common())}


# ---------------------------------------------------------------- segmentation folders (images/ + masks/)

def is_mask_folder(root) -> bool:
    """A segmentation layout: ROOT/images/ and ROOT/masks/ (data/segmentation.py scan_pairs)."""
    return (Path(root) / "images").is_dir() and (Path(root) / "masks").is_dir()


def _inspect_pair(pair: tuple[str, str]) -> dict:
    """The image's decode check and size, the mask's raw value histogram and size (or why it does not read)."""
    import numpy as np

    from .decode import DecodeError
    from .masks import read_mask

    image = _inspect(pair[0])
    out = {"image_error": image["error"], "image_size": image.get("size"), "mask_error": None, "mask_size": None,
           "hist": None}
    try:
        m = read_mask(pair[1])
        out["mask_size"] = f"{m.shape[1]}x{m.shape[0]}"
        out["hist"] = np.bincount(m.ravel(), minlength=256).astype(np.int64).tolist()
    except DecodeError as e:
        out["mask_error"] = str(e)
    except Exception as e:                       # anything else PIL throws at a hostile file
        out["mask_error"] = f"unreadable mask: {type(e).__name__}: {e}"[:160]
    return out


def _inspect_pair_chunk(pairs):
    return [_inspect_pair(p) for p in pairs]


def _class_names(spec, values: list[int], origin: str = "the classes file") -> tuple[dict, list[int], str]:
    """({raw value: class name or 'void'}, out-of-range values, where the names came from)."""
    from .masks import IGNORE, class_table

    if spec is None:
        k = max([v for v in values if v != IGNORE], default=-1) + 1
        names = {v: (f"class_{v}" if v < k else "ignore") for v in values}
        return names, [], (f"no classes.txt/classes.yaml: values 0..{k - 1} are taken as {k} classes, "
                           f"{IGNORE} = ignore")
    try:
        names, lut, void = class_table(spec)
    except ValueError as e:
        return {}, [], f"classes file unusable: {e}"
    named = {v: names[lut[v]] for v in range(256) if lut[v] != IGNORE}
    out = {v: named.get(v, "void" if v in void else "OUT OF RANGE") for v in values}
    return out, [v for v in values if v not in named and v not in void], f"{len(names)} classes from {origin}"


def check_mask_folder(root) -> dict:
    """Inspect a segmentation folder: image/mask pairs per split, images without masks, masks without images,
    unreadable images and masks, image/mask size mismatches, mask values seen with their pixel counts and class
    names (classes.txt/classes.yaml), and values outside the classes (they become 255 = ignore in training)."""
    import numpy as np

    from .masks import read_class_file
    from .segmentation import scan_pairs

    listing = scan_pairs(root)
    infos = map_files(_inspect_pair_chunk, [(str(listing.root / p.image), str(listing.root / p.mask))
                                            for p in listing.pairs])
    unreadable_images, unreadable_masks, mismatches = [], [], []
    per_split, hist = Counter(), np.zeros(256, np.int64)
    for p, info in zip(listing.pairs, infos):
        if info["image_error"]:
            unreadable_images.append({"file": p.image, "reason": info["image_error"]})
        if info["mask_error"]:
            unreadable_masks.append({"file": p.mask, "reason": info["mask_error"]})
            continue
        hist += np.asarray(info["hist"], np.int64)
        if info["image_size"] and info["mask_size"] != info["image_size"]:
            mismatches.append({"image": p.image, "mask": p.mask, "image_size": info["image_size"],
                               "mask_size": info["mask_size"]})
        if not info["image_error"]:
            per_split[p.split or "all"] += 1
    rel = lambda f: Path(f).relative_to(listing.root).as_posix()          # noqa: E731
    no_mask = [rel(i["file"]) for i in listing.ignored if i["reason"].startswith("no mask")]
    no_image = [rel(i["file"]) for i in listing.ignored if i["reason"] == "ignored: mask without an image"]
    other = [{"file": rel(i["file"]), "reason": i["reason"]} for i in listing.ignored
             if rel(i["file"]) not in set(no_mask) | set(no_image)]
    values = [int(v) for v in np.flatnonzero(hist)]
    spec, origin = read_class_file(listing.root), "the classes file"
    if spec is None and listing.root.resolve().name.lower() == "camvid":     # the shipped CamVid has no classes file
        from .segmentation import CAMVID_CLASSES
        spec, origin = {**dict(enumerate(CAMVID_CLASSES)), 11: "void"}, "CamVid's class table (value 11 = void)"
    names, out_of_range, source = _class_names(spec, values, origin)
    total = int(hist.sum())
    return {"root": str(listing.root), "kind": "segmentation", "layout": listing.layout, "pairs": len(listing.pairs),
            "usable_pairs": per_split, "images_without_masks": no_mask, "masks_without_images": no_image,
            "ignored": other, "unreadable_images": unreadable_images, "unreadable_masks": unreadable_masks,
            "size_mismatches": mismatches, "classes_source": source,
            "values": [{"value": v, "class": names.get(v, ""), "pixels": int(hist[v]),
                        "fraction": round(float(hist[v]) / total, 6) if total else 0.0} for v in values],
            "out_of_range": [{"value": v, "pixels": int(hist[v])} for v in out_of_range]}


def format_mask_check(report: dict) -> str:
    """A readable text version of a check_mask_folder() report."""
    lines = [f"segmentation dataset: {report['root']} ({report['layout']} layout, {report['pairs']} image/mask "
             "pairs found)", ""]
    lines += _table(["split", "usable pairs"], [[s, n] for s, n in sorted(report["usable_pairs"].items())]) + [""]
    for key, title in (("images_without_masks", "images without masks"),
                       ("masks_without_images", "masks without images")):
        lines.append(f"{title}: {len(report[key])}")
        lines += [f"  {f}" for f in report[key][:20]]
    for key, title in (("unreadable_images", "unreadable images"), ("unreadable_masks", "unreadable masks")):
        lines.append(f"{title}: {len(report[key])}")
        lines += [f"  {c['file']}: {c['reason']}" for c in report[key][:20]]
    lines.append(f"image/mask size mismatches: {len(report['size_mismatches'])}")
    lines += [f"  {m['image']} {m['image_size']} vs {m['mask']} {m['mask_size']}" for m in report["size_mismatches"][:20]]
    if report["ignored"]:
        lines.append(f"ignored files: {len(report['ignored'])}")
        lines += [f"  {i['file']}: {i['reason']}" for i in report["ignored"][:20]]
    lines += ["", f"mask values seen: {len(report['values'])} ({report['classes_source']})"]
    lines += _table(["value", "class", "pixels", "share"],
                    [[v["value"], v["class"], v["pixels"], f"{100 * v['fraction']:.2f}%"] for v in report["values"]])
    bad = report["out_of_range"]
    lines.append(f"values outside the classes (become 255 = ignore): {len(bad)}" +
                 (" (" + ", ".join(f"{b['value']}: {b['pixels']} px" for b in bad[:12]) + ")" if bad else ""))
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list]) -> list[str]:
    cols = [header] + [[str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    fmt = lambda r: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in cols[1:]]


def format_check(report: dict) -> str:
    """A readable text version of a check_dataset() report."""
    splits = list(report["counts"])
    lines = [f"dataset: {report['root']} ({report['layout']} layout, {report['num_files']} image files, "
             f"{len(report['classes'])} classes)", ""]
    rows = [[c] + [report["counts"][s][c] for s in splits] for c in report["classes"]]
    rows.append(["total"] + [sum(report["counts"][s].values()) for s in splits])
    rows.append(["min/max"] + [report["balance"][s]["ratio"] for s in splits])
    lines += _table(["class"] + splits, rows) + [""]
    lines.append(f"corrupt or unreadable: {len(report['corrupt'])}")
    lines += [f"  {c['file']}: {c['reason']}" for c in report["corrupt"]]
    if report.get("ignored"):
        lines.append(f"ignored (not image files, link loops): {len(report['ignored'])}")
        lines += [f"  {i['file']}: {i['reason']}" for i in report["ignored"] if "link" in i["reason"]][:20]
    lines.append(f"duplicate groups within a split: {len(report['duplicates_within_split'])}")
    lines += [f"  {' = '.join(g)}" for g in report["duplicates_within_split"][:20]]
    lines.append(f"duplicate groups ACROSS splits (leakage): {len(report['duplicates_across_splits'])}")
    lines += [f"  {' = '.join(g)}" for g in report["duplicates_across_splits"][:20]]
    lines.append("sizes: " + ", ".join(f"{k} x{v}" for k, v in list(report["sizes"].items())[:8]))
    lines.append("modes: " + ", ".join(f"{k} x{v}" for k, v in report["modes"].items()))
    return "\n".join(lines) + "\n"


NO_BOXES = "(no boxes)"       # the count row of box datasets' negatives (images without boxes)
ISSUE_ROWS = 1000             # label-issue rows kept in data_report.json (the summary counts them all)


def label_issue_summary(issues: list[dict]) -> list[dict]:
    """Splits.label_issues counted per (issue, action): [{"issue", "action", "count", "files"}], most frequent first;
    count = rows (boxes, or images for image-level issues), files = distinct images."""
    groups: dict = defaultdict(lambda: [0, set()])
    for r in issues:
        g = groups[(r["issue"], r["action"])]
        g[0] += 1
        g[1].add(r["file"])
    return [{"issue": i, "action": a, "count": n, "files": len(f)}
            for (i, a), (n, f) in sorted(groups.items(), key=lambda kv: (-kv[1][0], kv[0]))]


def data_summary(splits) -> dict:
    """Counts per split and class, skipped files and source of a Splits, as a JSON-able dict. Box datasets add the
    images without boxes (a "(no boxes)" count row), "boxes" per split and class, and their label issues."""
    counts, boxes = {}, {}
    for name in ("train", "val", "test"):
        part = getattr(splits, name)
        if part is not None:
            hist = Counter(int(v) for v in part.labels)
            counts[name] = {c: hist.get(i, 0) for i, c in enumerate(splits.classes)}
            if part.boxes is not None:
                counts[name][NO_BOXES] = hist.get(len(splits.classes), 0)
                per = Counter(int(c) for c in part.boxes[..., 4].ravel() if c >= 0)
                boxes[name] = {c: per.get(i, 0) for i, c in enumerate(splits.classes)}
    out = {"source": splits.source, "classes": splits.classes, "channels": splits.channels,
           "image_size": list(splits.image_size), "mean": list(splits.mean), "std": list(splits.std),
           "preprocess": splits.preprocess, "counts": counts,
           "totals": {k: sum(v.values()) for k, v in counts.items()}, "skipped": splits.skipped}
    if boxes:
        out["boxes"] = boxes
        out["box_totals"] = {k: sum(v.values()) for k, v in boxes.items()}
        out["label_issues"] = label_issue_summary(splits.label_issues)
        out["label_issue_rows"] = splits.label_issues[:ISSUE_ROWS]
    return out


def _count_table(classes: list[str], counts: dict, totals: dict) -> list[str]:
    names = list(counts)
    extra = sorted({c for v in counts.values() for c in v} - set(classes))
    rows = [[c] + [counts[n].get(c, 0) for n in names] for c in list(classes) + extra]
    rows.append(["total"] + [totals[n] for n in names])
    return ["| class | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"] + \
        ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]


def write_data_report(splits, run_dir) -> dict:
    """Write run_dir/data_report.json and data_report.md for a run's Splits; returns the summary dict."""
    s = data_summary(splits)
    run_dir = Path(run_dir)
    write_json(run_dir / "data_report.json", s)
    md = ["# Data report\n", f"Source: {s['source']}  ", f"Images: {s['channels']} channel(s), "
          f"{s['image_size'][0]}x{s['image_size'][1]}; preprocess: {s['preprocess']}\n"]
    md += _count_table(s["classes"], s["counts"], s["totals"])
    if "boxes" in s:
        md += ["\n## Boxes per class\n"] + _count_table(s["classes"], s["boxes"], s["box_totals"])
        issues = s["label_issues"]
        md.append(f"\n## Label issues ({sum(i['count'] for i in issues)})\n")
        md += ["| issue | action | count | files |", "|---|---|---|---|"] if issues else ["none"]
        md += [f"| {i['issue']} | {i['action']} | {i['count']} | {i['files']} |" for i in issues]
        if issues:
            md.append(f"\nFirst rows (all {len(splits.label_issues)} in data_report.json, up to {ISSUE_ROWS}):\n")
        md += [f"- `{r['file']}`: {r['issue']}, {r['action']}" + (f" {r['box']}" if r.get("box") else "")
               for r in splits.label_issues[:20]]
    md.append(f"\n## Skipped files ({len(s['skipped'])})\n")
    md += [f"- `{k['file']}`: {k['reason']}" for k in s["skipped"]] or ["none"]
    atomic_write_text(run_dir / "data_report.md", "\n".join(md) + "\n")
    return s
