"""Similarity search over a run's features: embed a split, index it, score retrieval (test vs train), and draw
the nearest train images of a query image. Files go to RUN_DIR/similarity/."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from visionlab.data import build_splits
from visionlab.data.decode import try_load
from visionlab.run import LoadedRun, load_run
from visionlab.search import EmbeddingIndex, is_normalized, map_at_k, recall_at_k
from visionlab.utils import UserError, atomic_write_bytes, write_json

EMBED_BATCH = 500


def _as_run(run_dir) -> LoadedRun:
    run = run_dir if isinstance(run_dir, LoadedRun) else load_run(run_dir)
    if run.task.target != "label":
        raise UserError(f"{run.run_dir}: similarity search needs a classification run (task {run.cfg.task!r})")
    return run


def _split(run: LoadedRun, name: str):
    part = getattr(build_splits(run.cfg.data), name, None)
    if part is None or len(part) == 0:
        raise UserError(f"{run.run_dir} has no {name} images")
    return part


def _images(split, rows, preprocess: dict) -> tuple[np.ndarray, list[int]]:
    """(uint8 NHWC batch, the rows that decoded) for ``rows`` of a split, in memory or read from files."""
    if split.images is not None:
        return split.images[rows], list(rows)
    loaded = [(i, try_load(split.paths[i], preprocess)[0]) for i in rows]
    loaded = [(i, a) for i, a in loaded if a is not None]
    if not loaded:
        return np.zeros((0,), np.uint8), []
    return np.stack([a for _, a in loaded]), [i for i, _ in loaded]


@torch.no_grad()
def _features(run: LoadedRun, images: np.ndarray) -> np.ndarray:
    """float32 [N, D] features; 4-D feature maps are global-average-pooled."""
    run.model.eval()
    x = run.task.model_input(torch.from_numpy(np.array(images)).to(run.device))
    f = run.model.forward_features(x)
    f = f.mean(dim=(2, 3)) if f.dim() == 4 else torch.flatten(f, 1)
    return f.float().cpu().numpy()


def embed_split(run, split_name: str = "train", limit: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(embeddings float32 [N, D], labels int64 [N], names [N]) of a split (the first ``limit`` images when > 0);
    unreadable files are skipped."""
    run = _as_run(run)
    split = _split(run, split_name)
    n = min(len(split), limit) if limit and limit > 0 else len(split)
    embs, kept = [], []
    for s in range(0, n, EMBED_BATCH):
        images, rows = _images(split, range(s, min(s + EMBED_BATCH, n)), run.info.preprocess)
        if rows:
            embs.append(_features(run, images))
            kept += rows
    names = [split.names[i] if split.names else f"{split_name}[{i}]" for i in kept]
    emb = np.concatenate(embs) if embs else np.zeros((0, 0), np.float32)
    return emb.astype(np.float32), np.asarray(split.labels)[kept].astype(np.int64), names


def build_index(run_dir, split: str = "train", metric: str = "cosine") -> Path:
    """Embed ``split`` and write RUN_DIR/similarity/index_<split>.npz (embeddings, labels, names); returns the path."""
    run = _as_run(run_dir)
    emb, labels, names = embed_split(run, split)
    return EmbeddingIndex(emb, metric).save(run.run_dir / "similarity" / f"index_{split}.npz",
                                            labels=labels, names=np.array(names, dtype=str))


def _index(run: LoadedRun, split: str, metric: str) -> tuple[EmbeddingIndex, np.ndarray, list[str]]:
    """The split's index (built on first use), its labels and names."""
    path = run.run_dir / "similarity" / f"index_{split}.npz"
    if not path.is_file():
        build_index(run, split, metric)
    index, extra = EmbeddingIndex.load(path, metric)
    return index, extra["labels"], [str(n) for n in extra["names"]]


def evaluate_retrieval(run_dir, k=(1, 5, 10), metric: str = "cosine") -> dict:
    """Recall@k and mAP@k of test images (queries) against the train index (gallery); written to
    RUN_DIR/similarity/retrieval.json. mAP uses R = the number of gallery items of the query's class."""
    run = _as_run(run_dir)
    ks = sorted({int(x) for x in ([k] if np.isscalar(k) else k)})
    index, labels, _ = _index(run, "train", metric)
    q_emb, q_labels, _ = embed_split(run, "test")
    idx, _ = index.query(q_emb, max(ks))
    retrieved = labels[idx]
    counts = np.bincount(labels, minlength=int(max(labels.max(), q_labels.max())) + 1)
    out = {"metric": metric, "queries": int(len(q_labels)), "gallery": int(len(labels)),
           "normalized": is_normalized(index.embeddings)}      # then cosine and euclidean rank identically
    for kk in ks:
        out[f"recall@{kk}"] = recall_at_k(q_labels, retrieved, kk)
        out[f"map@{kk}"] = map_at_k(q_labels, retrieved, kk, num_relevant=counts[q_labels])
    write_json(run.run_dir / "similarity" / "retrieval.json", out)
    return out


def neighbours(run_dir, image_path, k: int = 8, metric: str = "cosine") -> tuple[np.ndarray, list[tuple]]:
    """(query image, [(train row, name, class name, score)]) of the k nearest train images of an image file."""
    run = _as_run(run_dir)
    arr, reason = try_load(str(image_path), run.info.preprocess)
    if arr is None:
        raise UserError(f"{image_path}: cannot read this image ({reason}); pass a JPEG, PNG or other image file")
    index, labels, names = _index(run, "train", metric)
    idx, scores = index.query(_features(run, arr[None]), k)
    rows = [int(r) for r in idx[0]]
    return arr, [(r, names[r], run.classes[int(labels[r])], float(s)) for r, s in zip(rows, scores[0])]


def similar(run_dir, image_path, k: int = 8, metric: str = "cosine", out: str | os.PathLike | None = None) -> Path:
    """Write ``<out>/<stem>_similar.png``: the query image and its top-k train neighbours with class and score
    (``out`` defaults to RUN_DIR/similarity); returns the path."""
    run = _as_run(run_dir)
    query, hits = neighbours(run, image_path, k, metric)
    split = _split(run, "train")
    by_name = {n: i for i, n in enumerate(split.names)} if split.names else {}
    images = []
    for row, name, _, _ in hits:        # the index stores names, so a split rebuilt later still lines up
        i = by_name.get(name, row)
        images.append(_images(split, [i], run.info.preprocess)[0])
    dest = (Path(out) if out else run.run_dir / "similarity") / f"{Path(str(image_path)).stem}_similar.png"
    dest.parent.mkdir(parents=True, exist_ok=True)
    _grid(query, hits, images, metric, dest)
    return dest


def _show(ax, image: np.ndarray) -> None:
    gray = image.shape[-1] == 1
    ax.imshow(image[..., 0] if gray else image, cmap="gray" if gray else None, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _grid(query: np.ndarray, hits: list[tuple], images: list[np.ndarray], metric: str, path: Path) -> None:
    cols = len(hits) + 1
    fig = Figure(figsize=(1.5 * cols, 2.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, cols))
    _show(axes[0], query)
    axes[0].set_title("query", fontsize=8, fontweight="bold")
    score = "cos" if metric == "cosine" else "dist"
    for ax, (_, name, cls, s), im in zip(axes[1:], hits, images):
        if len(im):
            _show(ax, im[0])
        else:
            ax.axis("off")
        ax.set_title(f"{cls[:12]}\n{score} {s:.3f}", fontsize=7)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    fig.clear()
