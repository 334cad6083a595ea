"""FID and KID from feature vectors: streaming float64 mean/covariance, the Frechet distance and the unbiased
polynomial-kernel MMD^2 over seeded subsets. Numbers are only comparable for the same extractor and sample counts."""
from __future__ import annotations

import numpy as np
import torch


def _as_array(feats) -> np.ndarray:
    """Features [N, D] as a float64 numpy array (torch tensors on any device, or array-likes)."""
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().to("cpu", torch.float64).numpy()
    a = np.asarray(feats, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"features must be a [N, D] matrix, got shape {a.shape}")
    return a


class FeatureStats:
    """Running mean and covariance of feature rows (Chan's pairwise merge of per-batch centred sums, float64), plus
    the first ``keep`` rows as they came, for KID."""

    def __init__(self, dim: int, keep: int = 10_000):
        self.dim, self.keep = int(dim), int(keep)
        self._n = 0
        self._mean = np.zeros(self.dim)
        self._m2 = np.zeros((self.dim, self.dim))     # sum of outer products of deviations from the mean
        self._kept: list[np.ndarray] = []
        self._n_kept = 0

    def update(self, feats) -> "FeatureStats":
        a = _as_array(feats)
        if a.shape[1] != self.dim:
            raise ValueError(f"features have {a.shape[1]} dimensions, these statistics {self.dim}")
        nb = len(a)
        if nb == 0:
            return self
        mean_b = a.mean(axis=0)
        dev = a - mean_b
        m2_b = dev.T @ dev
        n = self._n + nb
        delta = mean_b - self._mean
        self._m2 += m2_b + np.outer(delta, delta) * (self._n * nb / n)
        self._mean += delta * (nb / n)
        self._n = n
        if self._n_kept < self.keep:
            take = a[: self.keep - self._n_kept]
            self._kept.append(take.copy())
            self._n_kept += len(take)
        return self

    @property
    def n(self) -> int:
        return self._n

    @property
    def mean(self) -> np.ndarray:
        return self._mean.copy()

    @property
    def cov(self) -> np.ndarray:
        """Unbiased (N - 1) covariance, exactly symmetric."""
        if self._n < 2:
            raise ValueError(f"a covariance needs at least 2 feature rows, got {self._n}")
        c = self._m2 / (self._n - 1)
        return (c + c.T) / 2

    @property
    def kept(self) -> np.ndarray:
        if not self._kept:
            return np.zeros((0, self.dim))
        if len(self._kept) > 1:
            self._kept = [np.concatenate(self._kept)]
        return self._kept[0]


def _psd_sqrt_factor(s: np.ndarray) -> np.ndarray:
    """B with B @ B.T == s for a symmetric PSD ``s`` (eigenvectors scaled by sqrt of the clipped eigenvalues)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return v * np.sqrt(np.clip(w, 0.0, None))


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr(sqrt(sigma1 @ sigma2)) for symmetric PSD matrices: the eigenvalues of sigma1 @ sigma2 are those of the
    symmetric PSD matrix B.T @ sigma2 @ B (sigma1 = B @ B.T), so one symmetric eigensolve suffices, no sqrtm."""
    b = _psd_sqrt_factor(np.asarray(sigma1, np.float64))
    m = b.T @ np.asarray(sigma2, np.float64) @ b
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(ev, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), in float64; clipped at 0 (rounding)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"shapes do not match: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    diff = mu1 - mu2
    d = float(diff @ diff) + float(np.trace(s1) + np.trace(s2)) - 2.0 * trace_sqrt_product(s1, s2)
    return max(d, 0.0)


def _cubic_kernel_sum(a: np.ndarray, b: np.ndarray | None = None) -> float:
    """Sum of k(a_i, b_j) = (a_i.b_j / d + 1)^3 over all pairs, the diagonal left out when ``b`` is None (a with
    itself: ``a @ a.T`` lets numpy's BLAS do a symmetric rank-k update, half the work). In place: large matrices."""
    g = a @ a.T if b is None else a @ b.T
    g *= 1.0 / a.shape[1]
    g += 1.0
    k = g * g
    k *= g
    return float(k.sum() - (np.trace(k) if b is None else 0.0))


def _poly_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size samples under the cubic polynomial kernel (diagonals left out)."""
    m = len(x)
    return (_cubic_kernel_sum(x) + _cubic_kernel_sum(y)) / (m * (m - 1)) - 2 * _cubic_kernel_sum(x, y) / (m * m)


def kid(f1, f2, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: (mean, population std) of the unbiased cubic-kernel MMD^2 over ``subsets`` random
    subsets of ``subset_size`` rows (clipped to the smaller side) of each set, drawn without replacement per
    subset by ``torch.randperm`` from a generator seeded with ``seed`` (f1's draw, then f2's)."""
    x, y = _as_array(f1), _as_array(f2)
    size = min(int(subset_size), len(x), len(y))
    if size < 2:
        raise ValueError(f"KID needs at least 2 feature rows on each side, got {len(x)} and {len(y)}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    g = torch.Generator().manual_seed(int(seed))
    vals = []
    for _ in range(max(1, int(subsets))):
        ix = torch.randperm(len(x), generator=g)[:size].numpy()
        iy = torch.randperm(len(y), generator=g)[:size].numpy()
        vals.append(_poly_mmd2(x[ix], y[iy]))
    v = np.asarray(vals)
    return float(v.mean()), float(v.std())


def scores(gen: FeatureStats, ref: FeatureStats, kid_subsets: int = 100, kid_subset_size: int = 1000,
           seed: int = 0) -> dict:
    """FID and KID (+- std over subsets) of generated vs reference feature statistics."""
    fid = frechet_distance(gen.mean, gen.cov, ref.mean, ref.cov)
    k, k_std = kid(gen.kept, ref.kept, kid_subsets, kid_subset_size, seed)
    return {"fid": fid, "kid": k, "kid_std": k_std, "n_gen": gen.n, "n_ref": ref.n}
