"""What the tabs share: the loaded runs and their contained examples, an upload decoded once (upload.py) and
predicted through run.predict (top classes; a mask and each class's area; boxes in the image's own pixels), the top
class drawn on an image, the mask overlaid on it, prediction files to download, a generative run's samples and a
generated example beside a card."""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
import shutil
import tempfile
import time
import uuid
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..config import data_root, dataset_folder
from ..data.decode import IMAGE_EXTS, probe, to_rgb_or_l
from ..engine.rundir import unfinished
from ..run import LoadedRun, load_run, predict
from ..utils import UserError, png_bytes
from .guide import card_markdown, find_guide, load_guide
from .upload import model_input, open_upload

DISPLAY_MAX = 768           # longest side of the image shown back; the model sees its own preprocessing, not this
KEEP_DOWNLOADS_S = 3600     # prediction files older than this are deleted (they are offered, not archived)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")     # a spreadsheet cell starting so is a formula
EXAMPLE_SEED = 0            # the seed of the generated example shown beside a guide card (the same picture each time)
EXAMPLE_WIDTH = 96          # its width on the card, in CSS pixels (MNIST's 28 px scaled up, pixelated)


@dataclass
class AppRun:
    """One run as the app shows it: a display name, the loaded model, its guide and example images."""

    name: str
    run: LoadedRun
    guide: dict | None = None
    examples: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    generator: "AppRun | None" = None       # a conditional generative run over the same class names (card examples)
    generated: dict = field(default_factory=dict)   # class -> its generated example (uint8 HxWxC), made once

    @property
    def task(self) -> str:
        """The run's task (config ``task``): which row of the app's task -> tab table shows it."""
        return self.run.cfg.task

    @property
    def generative(self) -> bool:
        """A run whose task can sample images (the contract's ``generates`` and ``generate(n, seed)``)."""
        return bool(self.run.task.generates)


def _summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def _train_cwd(run_dir: Path) -> Path | None:
    try:
        cwd = json.loads((run_dir / "env.json").read_text()).get("cwd")
    except (OSError, ValueError):
        return None
    return Path(cwd) if cwd else None


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path``, symlinks followed, lies inside ``root`` (also resolved)."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):         # a symlink loop, an unreadable folder
        return False


def example_files(run: LoadedRun, per_class: int = 1, limit: int = 12) -> list[str]:
    """Files of the run's own test split (split_manifest.csv of a folder dataset), ``per_class`` per class.

    Run folders are shared, so the manifest is untrusted: a row is used only when it names an image file whose
    resolved path (symlinks followed) lies inside the resolved data root; these files become Gradio's allowed_paths."""
    manifest = run.run_dir / "split_manifest.csv"
    if not manifest.is_file():
        return []
    root = data_root(run.cfg.data, dataset_folder(run.cfg.data.name))
    if not root.is_absolute() and _train_cwd(run.run_dir) is not None:
        root = _train_cwd(run.run_dir) / root          # a relative data root is relative to where training ran
    with manifest.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("split") == "test" and r.get("file")]
    picked, seen = [], {}
    for r in rows:
        path = root / r["file"]
        if seen.get(r["label"], 0) < per_class and path.suffix.lower() in IMAGE_EXTS and _inside(path, root) \
                and path.is_file():
            seen[r["label"]] = seen.get(r["label"], 0) + 1
            picked.append(str(path.resolve()))
    return picked[:limit]


def load_app_runs(run_dirs: list[str | Path], guide: str | Path | None = None) -> list[AppRun]:
    """Load every run once (best checkpoint, eval mode) with its guide and test-split examples."""
    out = []
    for d in run_dirs:
        if unfinished(d):
            raise UserError(f"{d} is not a finished run ({unfinished(d)}); the app serves finished runs only")
        run = load_run(d)
        path = find_guide(run.run_dir, run.cfg.data.name, guide)
        out.append(AppRun(run.run_dir.name, run, load_guide(path) if path else None, example_files(run),
                          _summary(run.run_dir)))
    names = [r.name for r in out]
    for r in out:                       # seed-0 of two experiments: tell them apart by their parent folder
        if names.count(r.name) > 1:
            r.name = f"{r.run.run_dir.parent.name}/{r.run.run_dir.name}"
    names = [r.name for r in out]
    for k, r in enumerate(out):         # the same folder given twice: number them
        if names.count(r.name) > 1:
            r.name = f"{r.name} #{k + 1}"
    link_generators(out)
    return out


def link_generators(runs: list[AppRun]) -> None:
    """Give each non-generative run the first class-conditional generative run trained on the same class names
    (its guide cards then show a generated example of the predicted class)."""
    gens = [r for r in runs if r.generative and r.run.task.conditional]
    for r in runs:
        if not r.generative:
            r.generator = next((g for g in gens if set(g.run.classes) == set(r.run.classes)), None)


def classify_image(app_run: AppRun, im: Image.Image, topk: int = 10) -> list[tuple[str, float]]:
    """Top-k (class, probability) of a decoded image, preprocessed as the run's data (the same numbers as
    visionlab.predict gives for the file)."""
    return predict(app_run.run, [model_input(im, app_run.run.info.preprocess)], topk=topk)[0]


def classify_file(app_run: AppRun, path: str | Path, topk: int = 10) -> list[tuple[str, float]]:
    """Top-k of one file, decoded once (open_upload). Raises UserError with the reason for an empty, truncated,
    non-image or too large file."""
    return classify_image(app_run, open_upload(path), topk)


def classify_frame(app_run: AppRun, rgb: np.ndarray, topk: int = 10) -> list[tuple[str, float]]:
    """Top-k of a decoded RGB frame, in memory (nothing written): the same preprocessing as a lossless file of it."""
    return classify_image(app_run, Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)), topk)


def segment_image(app_run: AppRun, im: Image.Image) -> dict:
    """{"mask": uint8 [h, w] class ids at the model's size, "areas": {class: share of the pixels}} of a decoded
    image, preprocessed as the run's data (the same numbers as visionlab.predict gives for the file)."""
    return predict(app_run.run, [model_input(im, app_run.run.info.preprocess)])[0]


def segment_frame(app_run: AppRun, rgb: np.ndarray) -> dict:
    """segment_image of a decoded RGB frame, in memory (nothing written)."""
    return segment_image(app_run, Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)))


def display_threshold(app_run: AppRun) -> float:
    """A detection run's display threshold (``detection.score_threshold``): predict returns the boxes scoring at
    least this much."""
    return float(app_run.run.cfg.detection.score_threshold)


def detect_image(app_run: AppRun, im: Image.Image, size: tuple[int, int] | None = None) -> dict:
    """predict's detections of a decoded image: {"boxes" float [N, 4] xyxy in the image's pixels, "scores",
    "labels", "classes"} at the run's display threshold, best first (the same numbers as visionlab.predict gives for
    the file). The image goes in at its own size, RGB or grey as the run's data; the pipeline letterboxes it.
    ``size``: the file's (width, height) when ``im`` was decoded reduced (upload_size); the boxes are scaled to it."""
    rgb = to_rgb_or_l(im, bool(app_run.run.info.preprocess.get("grayscale")))
    result = predict(app_run.run, [np.asarray(rgb)])[0]
    if size is not None and tuple(size) != im.size:
        result["boxes"] = result["boxes"] * np.array([size[0] / im.width, size[1] / im.height] * 2, np.float32)
    return result


def detect_frame(app_run: AppRun, rgb: np.ndarray) -> dict:
    """detect_image of a decoded RGB frame, in memory (nothing written); boxes in the frame's pixels."""
    return detect_image(app_run, Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)))


def upload_size(path: str | Path, im: Image.Image) -> tuple[int, int]:
    """The (width, height) of an uploaded file as decoded at full size, EXIF turn applied: ``im``'s size unless
    open_upload decoded a very large file reduced."""
    size, _ = probe(path, oriented=True)
    return tuple(size) if size else im.size


def above(result: dict, threshold: float) -> dict:
    """The detections of ``result`` (detect_image) scoring at least ``threshold``, order kept."""
    keep = np.asarray(result["scores"]) >= threshold
    return {"boxes": result["boxes"][keep], "scores": result["scores"][keep], "labels": result["labels"][keep],
            "classes": [c for c, k in zip(result["classes"], keep) if k]}


def best_scores(result: dict, classes: list[str]) -> dict[str, float]:
    """Every class -> the best score among its boxes (0.0 without one): gr.Label's value, whose top class is the
    best detection's."""
    best = dict.fromkeys(classes, 0.0)
    for c, p in zip(result["classes"], result["scores"]):
        best[c] = max(best[c], float(p))
    return best


def sample_steps(app_run: AppRun) -> int | None:
    """The default sampling steps of a run whose task takes them (a diffusion model with DDIM); None otherwise
    (GAN, VAE, ancestral sampling over all steps)."""
    return app_run.run.task.sampling_steps


def sample_images(app_run: AppRun, n: int, seed: int, label: str | None = None,
                  steps: int | None = None) -> np.ndarray:
    """``n`` uint8 [n, H, W, C] images from a generative run, reproducible from ``seed``; ``label``: a class of a
    conditional model (UserError naming the classes otherwise); ``steps``: a diffusion model's sampling steps."""
    given = {k: v for k, v in (("label", label), ("steps", steps)) if v is not None}
    return np.asarray(app_run.run.task.generate(n, seed, **given), dtype=np.uint8)


def generated_example(app_run: AppRun, cls: str) -> np.ndarray | None:
    """A generated image of class ``cls`` by the run's linked generative run (link_generators), made once per
    class; None without one."""
    gen = app_run.generator
    if gen is None or cls not in gen.run.classes:
        return None
    if cls not in app_run.generated:
        app_run.generated[cls] = sample_images(gen, 1, EXAMPLE_SEED, cls)[0]
    return app_run.generated[cls]


def card_with_example(app_run: AppRun, cls: str | None) -> str:
    """The guide card of ``cls`` (guide.card_markdown) with a generated example of the class beside it when a
    conditional generative run over the same classes is loaded; the card alone otherwise, "" without a card."""
    card = card_markdown(app_run.guide, cls)
    image = generated_example(app_run, cls) if card else None
    if image is None:
        return card
    png = base64.b64encode(png_bytes(image)).decode()
    figure = (f'<img src="data:image/png;base64,{png}" alt="a generated {html.escape(cls)}" width="{EXAMPLE_WIDTH}" '
              f'align="right" style="image-rendering: pixelated">')
    note = f"*Beside: a {cls} drawn by the generative run `{app_run.generator.name}` (not a photo).*"
    return f"{figure}\n\n{card}\n\n{note}"


def display_image(im: Image.Image) -> np.ndarray:
    """The decoded upload for display: RGB (transparency on white), shrunk to fit DISPLAY_MAX."""
    im = to_rgb_or_l(im, False)
    scale = DISPLAY_MAX / max(im.size)
    if scale < 1:                           # a new image: the decoded one stays as the model saw it
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC,
                       reducing_gap=2.0)
    return np.asarray(im)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)        # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, OSError):
        return ImageFont.load_default()


def annotate(rgb: np.ndarray, top: list[tuple[str, float]]) -> np.ndarray:
    """The image with a banner in its bottom-left corner saying the top class and its confidence, as uint8 RGB.
    Bottom, because Gradio lays the component's label over the top-left corner."""
    im = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).convert("RGB")
    cls, p = top[0]
    text = f"{cls}  {p:.0%}"
    font = _font(max(12, im.height // 16))
    draw = ImageDraw.Draw(im, "RGBA")
    left, top_, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(4, im.height // 80)
    y0 = im.height - (bottom - top_) - 2 * pad
    draw.rectangle((0, y0, right - left + 2 * pad, im.height), fill=(0, 0, 0, 170))   # legible on any photo
    draw.text((pad - left, y0 + pad - top_), text, font=font, fill=(255, 255, 255))
    return np.asarray(im)


def csv_cell(text: str) -> str:
    """A text cell safe to open in a spreadsheet: one starting with = + - @ tab or CR would be read as a formula, so
    it gets a leading single quote (OWASP's CSV injection rule)."""
    return "'" + text if text[:1] in FORMULA_START else text


def csv_text(header: list[str], rows) -> str:
    """A CSV file's text: the header, then ``rows`` (cells already made safe with csv_cell where they are text)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def top_dict(top: list[tuple[str, float]]) -> dict[str, float]:
    """gr.Label's value: class -> probability."""
    return {c: float(p) for c, p in top}


def box_counts(result: dict) -> dict[str, int]:
    """Class -> how many boxes of it ``result`` has (detect_image), most first."""
    return dict(Counter(result["classes"]).most_common())


def _about(app_run: AppRun, source: str) -> dict:
    """What every downloaded record starts with: the uploaded file's name, the run folder's name and the model's
    display name (no server paths)."""
    return {"file": source, "run": app_run.run.run_dir.name, "model": app_run.name}


class Downloads:
    """A private temporary folder for the files a user may download; cleaned when the app stops."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="visionlab-app-"))

    def write(self, app_run: AppRun, source: str, top: list[tuple[str, float]], annotated: np.ndarray) -> list[str]:
        """prediction.json, prediction.csv and annotated.png of one prediction; returns their paths."""
        record = {**_about(app_run, source),
                  "predictions": [{"rank": i + 1, "class": c, "probability": p} for i, (c, p) in enumerate(top)]}
        rows = ([csv_cell(source), csv_cell(app_run.name), i + 1, csv_cell(c), repr(p)] for i, (c, p) in enumerate(top))
        return self._prediction(record, csv_text(["file", "model", "rank", "class", "probability"], rows), annotated)

    def write_boxes(self, app_run: AppRun, source: str, result: dict, size: tuple[int, int], threshold: float,
                    annotated: np.ndarray) -> list[str]:
        """prediction.json (the image's (width, height) ``size``, the score threshold, boxes per class and each
        detection: class, score, box xyxy in the image's pixels), prediction.csv (one row per detection) and
        annotated.png of one detection; returns their paths."""
        boxes = [[float(v) for v in b] for b in result["boxes"]]
        scores = [float(p) for p in result["scores"]]
        record = {**_about(app_run, source), "image_size": list(size), "score_threshold": threshold,
                  "classes": app_run.run.classes, "counts": box_counts(result),
                  "detections": [{"class": c, "score": p, "box": b}
                                 for c, p, b in zip(result["classes"], scores, boxes)]}
        rows = ([csv_cell(source), csv_cell(app_run.name), csv_cell(c), repr(p), *map(repr, b)]
                for c, p, b in zip(result["classes"], scores, boxes))
        text = csv_text(["file", "model", "class", "score", "x0", "y0", "x1", "y1"], rows)
        return self._prediction(record, text, annotated)

    def _prediction(self, record: dict, csv_rows: str, annotated: np.ndarray) -> list[str]:
        """prediction.json, prediction.csv and annotated.png in a fresh folder; returns their paths."""
        out = self._new_folder()
        (out / "prediction.json").write_text(json.dumps(record, indent=2) + "\n")
        (out / "prediction.csv").write_text(csv_rows)
        Image.fromarray(annotated).save(out / "annotated.png")
        return [str(out / n) for n in ("prediction.json", "prediction.csv", "annotated.png")]

    def write_mask(self, app_run: AppRun, source: str, result: dict, overlaid: np.ndarray) -> list[str]:
        """mask.png (class ids as a palette PNG, the model's size), overlay.png, areas.json and areas.csv (class,
        share of the pixels, largest first) of one segmentation; returns their paths."""
        from ..views.segmentation import mask_png

        out = self._new_folder()
        areas = sorted(result["areas"].items(), key=lambda t: -t[1])
        (out / "mask.png").write_bytes(mask_png(result["mask"]))
        Image.fromarray(overlaid).save(out / "overlay.png")
        record = {**_about(app_run, source), "mask_size": list(result["mask"].shape), "classes": app_run.run.classes,
                  "areas": [{"class": c, "share": a} for c, a in areas]}
        (out / "areas.json").write_text(json.dumps(record, indent=2) + "\n")
        rows = ([csv_cell(source), csv_cell(app_run.name), csv_cell(c), repr(a)] for c, a in areas)
        (out / "areas.csv").write_text(csv_text(["file", "model", "class", "share"], rows))
        return [str(out / n) for n in ("mask.png", "overlay.png", "areas.json", "areas.csv")]

    def write_samples(self, app_run: AppRun, images: list[np.ndarray], seed: int, label: str | None,
                      steps: int | None) -> list[str]:
        """grid.png (all samples in one picture) and samples.zip (one PNG per sample and samples.json: run, seed,
        class, steps) of one Generate click; returns their paths."""
        from ..tasks.generative.base import make_grid

        out = self._new_folder()
        stem = f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', label) if label else 'sample'}_{seed}"
        names = [f"{stem}_{i:04d}.png" for i in range(len(images))]
        record = {"run": app_run.run.run_dir.name, "model": app_run.name,
                  "n": len(images), "seed": seed, "class": label, "steps": steps, "files": names}
        with zipfile.ZipFile(out / "samples.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            for name, im in zip(names, images):
                zf.writestr(name, png_bytes(im))
            zf.writestr("samples.json", json.dumps(record, indent=2) + "\n")
        stacked = np.stack([im[..., None] if im.ndim == 2 else im for im in images])
        (out / "grid.png").write_bytes(png_bytes(make_grid(stacked)))
        return [str(out / "grid.png"), str(out / "samples.zip")]

    def _new_folder(self) -> Path:
        """A fresh folder for one prediction's files (older ones pruned first)."""
        self._prune()
        out = self.root / uuid.uuid4().hex
        out.mkdir()
        return out

    def _prune(self) -> None:
        cutoff = time.time() - KEEP_DOWNLOADS_S
        for d in self.root.iterdir():
            if d.stat().st_mtime < cutoff:
                shutil.rmtree(d, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
