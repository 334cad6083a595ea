"""Similarity search: an exact nearest-neighbour EmbeddingIndex and retrieval metrics (recall@k, mAP@k)."""
from .index import METRICS, EmbeddingIndex, is_normalized, map_at_k, recall_at_k

__all__ = ["METRICS", "EmbeddingIndex", "is_normalized", "map_at_k", "recall_at_k"]
