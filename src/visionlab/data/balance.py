"""Class balancing of a class-folder dataset into a new folder (`visionlab data balance SRC OUT ...`).

Cap each class at N files (seeded choice), or oversample every class up to the largest by hard-linked copies.
"""
from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from ..utils import UserError, write_json
from .crop import prepare_out, write_csv
from .folder import scan_folder

MODES = ("auto", "cap", "oversample")


def _plan_class(n: int, target: int, oversample: bool, rng) -> list[tuple[int, int]]:
    """(source index, copy number) pairs for one class of n files; copy 0 is the file itself."""
    if n >= target:
        keep = np.sort(rng.choice(n, target, replace=False)) if n > target else np.arange(n)
        return [(int(i), 0) for i in keep]
    plan = [(i, 0) for i in range(n)]
    if not oversample:
        return plan
    extra = target - n
    plan += [(i, r) for r in range(1, extra // n + 1) for i in range(n)]        # whole extra rounds first
    plan += [(int(i), extra // n + 1) for i in np.sort(rng.choice(n, extra % n, replace=False))]
    return plan


def balance_plan(counts: dict[str, int], mode: str = "auto", max_per_class: int | None = None,
                 seed: int = 0) -> dict[str, list[tuple[int, int]]]:
    """Per class, the (file index, copy number) pairs to write; seeded, so the same inputs give the same plan.

    mode=cap keeps a seeded random ``max_per_class`` files of each larger class. mode=oversample copies files
    of each smaller class up to the largest class (or up to ``max_per_class`` when given, capping larger ones).
    mode=auto is cap when ``max_per_class`` is given, else oversample.
    """
    if mode not in MODES:
        raise UserError(f"mode={mode!r}: expected auto, cap (with max_per_class=N) or oversample")
    if mode == "auto":
        mode = "cap" if max_per_class is not None else "oversample"
    if max_per_class is not None and max_per_class < 1:
        raise UserError(f"max_per_class={max_per_class}: expected a positive number of files per class")
    if mode == "cap" and max_per_class is None:
        raise UserError("mode=cap needs max_per_class=N (or use mode=oversample to copy up to the largest class)")
    target = max_per_class if max_per_class is not None else max(counts.values(), default=0)
    rng = np.random.default_rng(seed)
    return {c: _plan_class(n, target, mode == "oversample", rng) if n else [] for c, n in sorted(counts.items())}


def _dup_name(rel: str, copy: int) -> str:
    stem, ext = os.path.splitext(rel)
    return rel if copy == 0 else f"{stem}_dup{copy}{ext}"


def _place(src: Path, dst: Path, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:                 # another file system, or links not allowed: copy instead
            pass
    shutil.copy2(src, dst)


def balance_folder(src, out, mode: str = "auto", max_per_class: int | None = None, seed: int = 0,
                   link: bool = True) -> dict:
    """Write a balanced copy of the class-folder dataset SRC (SRC/<class>/*) into OUT/<class>/*.

    Files are hard-linked (``link=True``; copied where links fail) or copied; oversampled copies get a
    `_dup<k>` suffix. Writes OUT/balance.csv (file, class, source) and OUT/balance_report.json; returns the
    report with counts per class before and after.
    """
    listing = scan_folder(src)
    if listing.layout != "flat":
        raise UserError(f"{src} has split folders ({', '.join(sorted(listing.split_dirs.values()))}): balance "
                        f"one split, e.g. {Path(src) / listing.split_dirs.get('train', 'train')}, so that "
                        "copies never leak into val/test")
    if not listing.entries:
        raise UserError(f"no images found in {src} (expected {src}/<class>/*.jpg)")
    by_class: dict[str, list[str]] = {c: [] for c in listing.classes}
    for e in listing.entries:
        by_class[listing.classes[e.label]].append(e.rel)
    before = {c: len(v) for c, v in by_class.items()}
    if mode == "auto":
        mode = "cap" if max_per_class is not None else "oversample"
    plan = balance_plan(before, mode, max_per_class, seed)
    out = prepare_out(out, src)
    rows = []
    for cls, pairs in plan.items():
        for i, copy in pairs:
            rel = by_class[cls][i]
            name = _dup_name(rel, copy)
            _place(listing.root / rel, out / name, link)
            rows.append({"file": name, "class": cls, "source": rel})
    write_csv(out / "balance.csv", rows, ["file", "class", "source"])
    after = dict(Counter(r["class"] for r in rows))
    report = {"src": str(src), "out": str(out), "mode": mode, "max_per_class": max_per_class, "seed": seed,
              "before": before, "after": {c: after.get(c, 0) for c in before},
              "total_before": sum(before.values()), "total_after": len(rows),
              "copies": sum(1 for r in rows if r["file"] != r["source"]), "ignored": listing.ignored}
    write_json(out / "balance_report.json", report)
    return report


def format_balance(report: dict) -> str:
    """A short table of counts per class before and after balancing."""
    width = max([len(c) for c in report["before"]] + [5])
    lines = [f"{report['mode']}: {report['total_before']} -> {report['total_after']} files "
             f"({report['copies']} extra copies) -> {report['out']}", f"{'class':<{width}}  before  after"]
    lines += [f"{c:<{width}}  {b:>6}  {report['after'][c]:>5}" for c, b in report["before"].items()]
    return "\n".join(lines)
