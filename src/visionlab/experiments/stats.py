"""Statistics over seeds: mean, sample std, t-distribution confidence intervals, paired and Welch t-tests.

Our own code on numpy; scipy only supplies the t distribution's quantiles and tail probabilities. Undefined values
(a CI from one seed, a test on zero variance) are ``None`` so that they stay valid JSON (``null``), never NaN.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import t as t_dist

LEVEL = 0.95


def _as_array(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    return arr[np.isfinite(arr)]


def t_interval(mean: float, sd: float, n: int, level: float = LEVEL) -> list[float] | None:
    """Two-sided CI of a mean with the t distribution (n-1 dof); None when n < 2 (no spread to estimate)."""
    if n < 2 or sd is None:
        return None
    half = float(t_dist.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return [mean - half, mean + half]


def describe(values: Sequence[float], level: float = LEVEL) -> dict:
    """n, mean, sample std (ddof=1), standard error, CI of the mean, min and max of ``values``.

    None/NaN values are dropped (a failed seed is not a zero). With n=1 std, sem and ci are None; with n=0 all are."""
    x = _as_array(values)
    n = int(x.size)
    out = {"n": n, "mean": None, "std": None, "sem": None, "ci": None, "ci_level": level, "min": None, "max": None}
    if n == 0:
        return out
    mean = float(x.mean())
    out.update(mean=mean, min=float(x.min()), max=float(x.max()))
    if n >= 2:
        sd = float(x.std(ddof=1))
        out.update(std=sd, sem=sd / math.sqrt(n), ci=t_interval(mean, sd, n, level))
    return out


def _t_test(t: float, df: float, mean_diff: float) -> tuple[float | None, float | None]:
    """(t, two-sided p) with scipy's conventions for zero spread: 0/0 -> undefined, x/0 -> t=+-inf, p=0."""
    if not math.isfinite(t):
        if mean_diff == 0:
            return None, None
        return None, 0.0                     # infinite t: JSON keeps p only
    return t, float(2 * t_dist.sf(abs(t), df))


def paired(baseline: Sequence[float], variant: Sequence[float], level: float = LEVEL) -> dict:
    """Paired comparison of matched samples: stats of d = variant - baseline and the paired t-test.

    Same semantics as ``scipy.stats.ttest_rel(variant, baseline)``; ``diff`` is ``describe(d)``, so its CI is the
    t interval of the mean difference. Needs at least 2 pairs for a test (else t, p are None)."""
    b, v = np.asarray(baseline, dtype=np.float64), np.asarray(variant, dtype=np.float64)
    if b.shape != v.shape:
        raise ValueError(f"paired samples differ in length: {b.size} vs {v.size}")
    d = v - b
    diff = describe(d, level)
    out = {"n": int(d.size), "diff": diff, "t": None, "df": None, "p": None}
    if d.size < 2:
        return out
    sd = float(d.std(ddof=1))
    mean = float(d.mean())
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.float64(mean) / np.float64(sd / math.sqrt(d.size))
    out["df"] = int(d.size - 1)
    out["t"], out["p"] = _t_test(float(t), d.size - 1, mean)
    return out


def welch(a: Sequence[float], b: Sequence[float]) -> dict:
    """Welch's unequal-variance t-test of mean(b) - mean(a); as ``scipy.stats.ttest_ind(b, a, equal_var=False)``.

    Needs at least 2 values in each group (else t, df, p are None)."""
    x, y = _as_array(a), _as_array(b)
    out = {"t": None, "df": None, "p": None}
    if x.size < 2 or y.size < 2:
        return out
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    mean_diff = float(y.mean() - x.mean())
    se2 = va + vb
    if se2 == 0:
        out["t"], out["p"] = _t_test(math.inf, 1.0, mean_diff)
        return out
    # Welch-Satterthwaite degrees of freedom
    df = se2 ** 2 / (va ** 2 / (x.size - 1) + vb ** 2 / (y.size - 1))
    out["df"] = float(df)
    out["t"], out["p"] = _t_test(mean_diff / math.sqrt(se2), df, mean_diff)
    return out


def compare_to_baseline(baseline: dict[int, float], variant: dict[int, float], level: float = LEVEL) -> dict:
    """Variant vs baseline, both {seed: value}: paired stats over the seeds both have, Welch over all values."""
    matched = sorted(set(baseline) & set(variant))
    pair = paired([baseline[s] for s in matched], [variant[s] for s in matched], level)
    w = welch(list(baseline.values()), list(variant.values()))
    return {"matched_seeds": matched, "n_pairs": len(matched), "diff": pair["diff"],
            "paired": {"t": pair["t"], "df": pair["df"], "p": pair["p"]}, "welch": w}
