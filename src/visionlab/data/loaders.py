"""Batch iterators yielding (uint8 NHWC images, int64 labels): in memory (fast path) or DataLoader workers.

Both shuffle with a permutation derived from (seed, epoch) and can start mid-epoch, so a resumed run sees
exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import ImageSet


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class InMemoryLoader:
    """Slices a uint8 tensor held in memory; no per-sample Python, no worker processes."""

    def __init__(self, split: ImageSet, batch_size: int, shuffle: bool, seed: int = 0):
        # a private writable copy: cached arrays may be read-only memory maps, which torch warns about
        self.images = torch.from_numpy(np.array(split.images, copy=True, order="C"))
        self.labels = torch.from_numpy(split.labels.astype(np.int64))
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        n = len(self.labels)
        order = epoch_permutation(n, self.seed, self.epoch) if self.shuffle else None
        for i in range(self.start_batch, len(self)):
            sl = slice(i * self.batch_size, min((i + 1) * self.batch_size, n))
            idx = order[sl] if order is not None else sl
            yield self.images[idx], self.labels[idx]
        self.start_batch = 0


class _FileDataset(torch.utils.data.Dataset):
    def __init__(self, split: ImageSet, preprocess: dict):
        self.paths, self.labels, self.preprocess = split.paths, split.labels, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        from .decode import load_image

        img = load_image(self.paths[i], self.preprocess)
        return torch.from_numpy(img), int(self.labels[i])


class _PermutationSampler(torch.utils.data.Sampler):
    def __init__(self, loader: "FileLoader"):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader.dataset) - self.loader.start_batch * self.loader.batch_size

    def __iter__(self):
        ld = self.loader
        n = len(ld.dataset)
        order = epoch_permutation(n, ld.seed, ld.epoch) if ld.shuffle else torch.arange(n)
        return iter(order[ld.start_batch * ld.batch_size:].tolist())


class FileLoader:
    """Decodes files in DataLoader worker processes, for datasets that do not fit in memory."""

    def __init__(self, split: ImageSet, batch_size: int, shuffle: bool, seed: int, preprocess: dict,
                 num_workers: int = 2):
        self.dataset = _FileDataset(split, preprocess)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch, self.start_batch = 0, 0
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=batch_size, sampler=_PermutationSampler(self), num_workers=num_workers,
            persistent_workers=False, drop_last=False)

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return (len(self.dataset) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        yield from self.loader
        self.start_batch = 0


def build_loader(split: ImageSet, batch_size: int, shuffle: bool, seed: int, preprocess: dict,
                 num_workers: int = 2):
    """The in-memory loader when the split is decoded, else the worker-based file loader."""
    if split.in_memory:
        return InMemoryLoader(split, batch_size, shuffle, seed)
    return FileLoader(split, batch_size, shuffle, seed, preprocess, num_workers)
