"""Dataset health checks (`visionlab data check ROOT`) and the per-run data report (data_report.json / .md)."""
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


def data_summary(splits) -> dict:
    """Counts per split and class, skipped files and source of a Splits, as a JSON-able dict."""
    counts = {}
    for name in ("train", "val", "test"):
        part = getattr(splits, name)
        if part is not None:
            hist = Counter(int(v) for v in part.labels)
            counts[name] = {c: hist.get(i, 0) for i, c in enumerate(splits.classes)}
    return {"source": splits.source, "classes": splits.classes, "channels": splits.channels,
            "image_size": list(splits.image_size), "mean": list(splits.mean), "std": list(splits.std),
            "preprocess": splits.preprocess, "counts": counts,
            "totals": {k: sum(v.values()) for k, v in counts.items()}, "skipped": splits.skipped}


def write_data_report(splits, run_dir) -> dict:
    """Write run_dir/data_report.json and data_report.md for a run's Splits; returns the summary dict."""
    s = data_summary(splits)
    run_dir = Path(run_dir)
    write_json(run_dir / "data_report.json", s)
    names = list(s["counts"])
    rows = [[c] + [s["counts"][n][c] for n in names] for c in s["classes"]]
    rows.append(["total"] + [s["totals"][n] for n in names])
    md = [f"# Data report\n", f"Source: {s['source']}  ", f"Images: {s['channels']} channel(s), "
          f"{s['image_size'][0]}x{s['image_size'][1]}; preprocess: {s['preprocess']}\n",
          "| class | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    md += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
    md.append(f"\n## Skipped files ({len(s['skipped'])})\n")
    md += [f"- `{k['file']}`: {k['reason']}" for k in s["skipped"]] or ["none"]
    atomic_write_text(run_dir / "data_report.md", "\n".join(md) + "\n")
    return s
