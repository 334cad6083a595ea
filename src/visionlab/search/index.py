"""Exact k-nearest-neighbour search over embeddings (FAISS when importable, else torch matmul) and retrieval metrics.

For L2-normalised features ||a - b||^2 = 2 - 2 cos(a, b), so cosine and euclidean rankings are identical there.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..utils import ConfigError, write_npz

METRICS = ("cosine", "euclidean")
CHUNK = 4096                 # query rows per matmul: bounds the [chunk, N] score matrix in memory

try:                         # optional; never a dependency
    import faiss
except ImportError:          # pragma: no cover - depends on the environment
    faiss = None


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def is_normalized(x: np.ndarray, tol: float = 1e-3) -> bool:
    """True when every row of ``x`` has unit L2 norm (then cosine and euclidean rankings agree)."""
    x = np.asarray(x, dtype=np.float64)
    return bool(len(x)) and bool(np.all(np.abs(np.linalg.norm(x, axis=1) - 1.0) < tol))


class EmbeddingIndex:
    """Exact search over ``embeddings`` [N, D]. ``metric="cosine"`` scores by cosine similarity (descending);
    ``metric="euclidean"`` by L2 distance (ascending)."""

    def __init__(self, embeddings: np.ndarray, metric: str = "cosine"):
        if metric not in METRICS:
            raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        emb = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
        if emb.ndim != 2:
            raise ValueError(f"embeddings must be [N, D], got shape {emb.shape}")
        self.embeddings, self.metric = emb, metric
        self._base = _normalize(emb) if metric == "cosine" else emb
        self._faiss = None
        if faiss is not None and len(emb):
            self._faiss = (faiss.IndexFlatIP if metric == "cosine" else faiss.IndexFlatL2)(emb.shape[1])
            self._faiss.add(np.ascontiguousarray(self._base, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.embeddings)

    def query(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices [M, k] int64, scores [M, k] float32) of the k nearest items per query row; scores are cosine
        similarities (descending) or L2 distances (ascending). ``k`` is capped at the index size."""
        q = np.ascontiguousarray(np.asarray(q, dtype=np.float32))
        if q.ndim == 1:
            q = q[None]
        k = min(int(k), len(self))
        if k <= 0:
            return np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32)
        if self.metric == "cosine":
            q = _normalize(q)
        if self._faiss is not None:
            scores, idx = self._faiss.search(np.ascontiguousarray(q, dtype=np.float32), k)
            if self.metric == "euclidean":
                scores = np.sqrt(np.maximum(scores, 0))         # FAISS returns squared distances
            return idx.astype(np.int64), scores.astype(np.float32)
        base = torch.from_numpy(self._base)
        sq = (base * base).sum(1)
        out_i, out_s = [], []
        for s in range(0, len(q), CHUNK):
            qc = torch.from_numpy(q[s:s + CHUNK])
            dots = qc @ base.T
            if self.metric == "cosine":
                val, idx = dots.topk(k, dim=1, largest=True)
            else:
                d2 = ((qc * qc).sum(1, keepdim=True) + sq[None] - 2 * dots).clamp_min(0)
                val, idx = d2.topk(k, dim=1, largest=False)
                val = val.sqrt()
            out_i.append(idx.numpy())
            out_s.append(val.numpy())
        return np.concatenate(out_i).astype(np.int64), np.concatenate(out_s).astype(np.float32)

    def save(self, path: str | os.PathLike, **extra) -> Path:
        """Write embeddings, metric and any extra arrays (labels, names) to an .npz file atomically (a failed write
        keeps the previous index); returns the path."""
        arrays = {k: np.asarray(v) for k, v in extra.items()}
        return write_npz(path, embeddings=self.embeddings, metric=np.array(self.metric), **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, metric: str | None = None) -> tuple["EmbeddingIndex", dict]:
        """(index, extra arrays) from a file written by ``save``; ``metric`` overrides the stored one."""
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        emb, stored = data.pop("embeddings"), str(data.pop("metric"))
        return cls(emb, metric or stored), data


def _relevance(query_labels, retrieved_labels, k: int) -> np.ndarray:
    q = np.asarray(query_labels)
    r = np.asarray(retrieved_labels)
    if r.ndim != 2 or len(r) != len(q):
        raise ValueError(f"retrieved_labels must be [M, >=k] with M={len(q)}, got shape {r.shape}")
    return (r[:, :k] == q[:, None]).astype(np.float64)


def recall_at_k(query_labels, retrieved_labels, k: int) -> float:
    """Fraction of queries with at least one item of the query's label among the first ``k`` retrieved."""
    rel = _relevance(query_labels, retrieved_labels, k)
    return float(rel.any(1).mean()) if len(rel) else 0.0


def map_at_k(query_labels, retrieved_labels, k: int, num_relevant=None) -> float:
    """Mean over queries of AP@k = sum_{i<=k} P(i) * rel(i) / min(k, R), where rel(i) is 1 when the i-th retrieved
    item has the query's label, P(i) the precision of the first i items, and R the number of relevant items in the
    gallery (``num_relevant``, scalar or per query). Without ``num_relevant``, R is the number of hits in the top k
    (AP over the retrieved list only). A query with R = 0 scores 0."""
    rel = _relevance(query_labels, retrieved_labels, k)
    if not len(rel):
        return 0.0
    ranks = np.arange(1, rel.shape[1] + 1)
    prec = np.cumsum(rel, 1) / ranks
    hits = (prec * rel).sum(1)
    r = rel.sum(1) if num_relevant is None else np.broadcast_to(np.asarray(num_relevant, np.float64), hits.shape)
    denom = np.minimum(k, r)
    ap = np.divide(hits, denom, out=np.zeros_like(hits), where=denom > 0)
    return float(ap.mean())
