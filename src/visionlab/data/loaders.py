"""Batch iterators yielding (uint8 NHWC images, target): in memory (fast path) or DataLoader workers. The target is
int64 labels, uint8 NHW masks for a split that has them (segmentation), or float32 [B, M, 5] boxes (detection:
rows x0, y0, x1, y1, class, padded with -1; box datasets are always in memory).

Both shuffle with a permutation derived from (seed, epoch) and can start mid-epoch, so a resumed run sees
exactly the batches an uninterrupted run would have seen. Under data parallelism each rank takes its slice of
every global batch, so N ranks together see the same global batches as one process.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import ImageSet


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class _Batches:
    """Global batch i of an epoch = order[i*B:(i+1)*B]; rank r of W takes the r-th of W near-equal slices."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world = rank, world
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest >= self.world else 0)     # a last batch too small to split is dropped

    def __iter__(self):
        order = epoch_permutation(self.n, self.seed, self.epoch) if self.shuffle else torch.arange(self.n)
        start, self.start_batch = self.start_batch, 0
        for i in range(start, len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield torch.tensor_split(idx, self.world)[self.rank] if self.world > 1 else idx


def flip_coins(n: int, seed: int) -> torch.Tensor:
    """One seeded coin per image: whether alternating flips mirror it in even epochs (and not in odd ones)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + 999_983)
    return torch.rand(n, generator=g) < 0.5


class InMemoryLoader(_Batches):
    """Slices a uint8 tensor held in memory; no per-sample Python, no worker processes. With ``alternate_flip``
    (airbench94), image i is mirrored in epoch e when its coin (``flip_coins``) differs from e's parity."""

    def __init__(self, split: ImageSet, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0,
                 world: int = 1, with_domains: bool = False, alternate_flip: bool = False):
        super().__init__(len(split), batch_size, shuffle, seed, rank, world)
        self.coins = flip_coins(len(split), seed) if alternate_flip else None
        # a private writable copy: cached arrays may be read-only memory maps, which torch warns about
        self.images = torch.from_numpy(np.array(split.images, copy=True, order="C"))
        self.labels = torch.from_numpy(split.labels.astype(np.int64))
        dense = split.masks if split.masks is not None else split.boxes
        # what a batch carries beside the images: masks, boxes, else the labels
        self.targets = self.labels if dense is None else torch.from_numpy(np.array(dense, copy=True, order="C"))
        self.domains = _domains(split) if with_domains else None

    def __iter__(self):
        for idx in super().__iter__():
            images, target = self.images[idx], self.targets[idx]
            if self.coins is not None:
                flip = self.coins[idx] != bool(self.epoch % 2)
                images = torch.where(flip.view(-1, 1, 1, 1), images.flip(2), images)    # NHWC: W is dim 2
            yield (images, target) if self.domains is None else (images, target, self.domains[idx])


def _domains(split: ImageSet) -> torch.Tensor:
    if split.domains is None:
        raise ValueError("this task reads each image's domain: use a domain dataset (data.name=pacs or "
                         "domain_folder, <root>/<domain>/<class>/*.jpg)")
    return torch.from_numpy(split.domains.astype(np.int64))


class _FileDataset(torch.utils.data.Dataset):
    def __init__(self, split: ImageSet, preprocess: dict):
        self.paths, self.labels, self.preprocess = split.paths, split.labels, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        from .decode import load_image

        img = load_image(self.paths[i], self.preprocess)
        return torch.from_numpy(img), int(self.labels[i])


class _IndexLists:
    def __init__(self, batches: _Batches):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches) - self.batches.start_batch

    def __iter__(self):
        return (idx.tolist() for idx in iter(self.batches))


class FileLoader:
    """Decodes files in DataLoader worker processes, for datasets that do not fit in memory."""

    def __init__(self, split: ImageSet, batch_size: int, shuffle: bool, seed: int, preprocess: dict,
                 num_workers: int = 2, rank: int = 0, world: int = 1):
        self.batches = _Batches(len(split), batch_size, shuffle, seed, rank, world)
        self.loader = torch.utils.data.DataLoader(_FileDataset(split, preprocess),
                                                  batch_sampler=_IndexLists(self.batches), num_workers=num_workers)

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.batches.set_position(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        yield from self.loader


def build_loader(split: ImageSet, batch_size: int, shuffle: bool, seed: int, preprocess: dict,
                 num_workers: int = 2, rank: int = 0, world: int = 1, with_domains: bool = False,
                 alternate_flip: bool = False):
    """The in-memory loader when the split is decoded, else the worker-based file loader. ``with_domains``: batches
    carry each image's domain index as a third field (domain datasets are decoded in memory)."""
    if split.in_memory:
        return InMemoryLoader(split, batch_size, shuffle, seed, rank, world, with_domains, alternate_flip)
    if alternate_flip:
        raise ValueError("data.alternate_flip flips images as the in-memory loader slices them, and this split is "
                         "read from files: use data.alternate_flip=false (plain random flips), or a dataset that is "
                         "decoded into memory (data.in_memory=true)")
    return FileLoader(split, batch_size, shuffle, seed, preprocess, num_workers, rank, world)


class StreamLoader:
    """Training counted in iterations: every step takes a fixed-size batch from each stream (one or more in-memory
    splits, e.g. the labelled and the unlabelled images of a few-label run) and yields their (images, labels) pairs
    flattened into one tuple. Each stream is an endless sequence of reshuffled passes over its split (pass p is
    permutation (seed, stream, p)); step i takes positions [i*B, (i+1)*B) of it, crossing pass boundaries, so a
    batch is never short, a split smaller than its batch still works, and a resume at any step is exact.
    ``steps`` steps make one period ("epoch" to the engine: evaluation and checkpoint)."""

    def __init__(self, streams: list[tuple[ImageSet, int]], steps: int, seed: int, rank: int = 0, world: int = 1):
        for split, _ in streams:
            if not split.in_memory:
                raise ValueError("train.iterations and unlabelled streams need data decoded in memory "
                                 "(data.in_memory=true)")
        self.loaders = [InMemoryLoader(split, 1, False) for split, _ in streams]
        self.batch_sizes = [b for _, b in streams]
        self.steps, self.seed, self.rank, self.world = steps, seed, rank, world
        self.epoch, self.start_batch = 0, 0
        self._perms: dict = {}

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.steps

    def _permutation(self, stream: int, n: int, p: int) -> torch.Tensor:
        key = (stream, p)
        if key not in self._perms:
            if len(self._perms) > 8:
                self._perms.clear()
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + p) * 31 + stream)
            self._perms[key] = torch.randperm(n, generator=g)
        return self._perms[key]

    def indices(self, stream: int, step: int) -> torch.Tensor:
        """The global batch of ``stream`` at ``step`` (before this rank's slice)."""
        n, b = len(self.loaders[stream].labels), self.batch_sizes[stream]
        start, stop = step * b, (step + 1) * b
        parts = [self._permutation(stream, n, p)[max(start - p * n, 0):min(stop - p * n, n)]
                 for p in range(start // n, (stop - 1) // n + 1)]
        return torch.cat(parts)

    def __iter__(self):
        start, self.start_batch = self.start_batch, 0
        for i in range(start, self.steps):
            step = self.epoch * self.steps + i
            batch = []
            for s, loader in enumerate(self.loaders):
                idx = self.indices(s, step)
                if self.world > 1:
                    idx = torch.tensor_split(idx, self.world)[self.rank]
                batch += [loader.images[idx], loader.targets[idx]]
            yield tuple(batch)


class DomainBalancedLoader:
    """Epochs of len(split) // batch_size batches, each holding batch_size // D images of every one of the split's D
    domains (images, labels, domains), from one endless reshuffled stream per domain (``StreamLoader``), so small
    domains repeat within an epoch and large ones are sampled; positions are exact for a resume."""

    def __init__(self, split: ImageSet, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        domains = _domains(split).numpy()
        self.ids = np.unique(domains)
        per = max(1, batch_size // len(self.ids))
        self.stream = StreamLoader([(split.subset(np.flatnonzero(domains == d)), per) for d in self.ids],
                                   max(1, len(split) // (per * len(self.ids))), seed, rank, world)

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.stream.set_position(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.stream)

    def __iter__(self):
        for parts in self.stream:
            images, labels = parts[0::2], parts[1::2]
            domains = [torch.full((len(y),), int(d), dtype=torch.int64) for y, d in zip(labels, self.ids)]
            yield torch.cat(images), torch.cat(labels), torch.cat(domains)
