"""experiments/stats.py against scipy's reference values, and its edge cases (one seed, zero spread)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy import stats as sp

from visionlab.experiments import stats

SAMPLES = [
    [0.981, 0.979, 0.983, 0.980, 0.978],
    [1.0, 2.0],
    [0.5, 0.52, 0.49, 0.55, 0.51, 0.50, 0.53, 0.48, 0.47, 0.56],
]


def _no_nan(obj) -> None:
    json.dumps(obj, allow_nan=False)        # raises on NaN/inf: undefined values must be null


@pytest.mark.parametrize("x", SAMPLES)
def test_describe_matches_numpy_and_scipy(x):
    d = stats.describe(x)
    n = len(x)
    assert d["n"] == n
    assert d["mean"] == pytest.approx(np.mean(x), rel=1e-12)
    assert d["std"] == pytest.approx(np.std(x, ddof=1), rel=1e-12)
    assert d["sem"] == pytest.approx(sp.sem(x), rel=1e-12)
    lo, hi = sp.t.interval(0.95, n - 1, loc=np.mean(x), scale=sp.sem(x))
    assert d["ci"] == pytest.approx([lo, hi], rel=1e-12)
    assert (d["min"], d["max"]) == (min(x), max(x))
    _no_nan(d)


def test_describe_one_value_has_no_ci_and_none_is_dropped():
    d = stats.describe([0.97, None, float("nan")])
    assert d["n"] == 1 and d["mean"] == d["min"] == d["max"] == 0.97
    assert d["std"] is None and d["sem"] is None and d["ci"] is None
    _no_nan(d)
    empty = stats.describe([])
    assert empty["n"] == 0 and empty["mean"] is None and empty["ci"] is None


def test_describe_zero_variance_gives_a_point_ci():
    d = stats.describe([0.5, 0.5, 0.5])
    assert d["std"] == 0.0 and d["ci"] == [0.5, 0.5]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paired_matches_ttest_rel(seed):
    rng = np.random.default_rng(seed)
    base = rng.normal(0.98, 0.002, size=5)
    var = base + rng.normal(0.001, 0.001, size=5)
    out = stats.paired(base, var)
    ref = sp.ttest_rel(var, base)
    assert out["t"] == pytest.approx(ref.statistic, rel=1e-10)
    assert out["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert out["df"] == ref.df == 4
    assert out["diff"]["mean"] == pytest.approx(np.mean(var - base), rel=1e-12)
    ci = ref.confidence_interval(0.95)
    assert out["diff"]["ci"] == pytest.approx([ci.low, ci.high], rel=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_welch_matches_ttest_ind(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0.9, 0.01, size=5), rng.normal(0.91, 0.03, size=7)
    out = stats.welch(a, b)
    ref = sp.ttest_ind(b, a, equal_var=False)
    assert out["t"] == pytest.approx(ref.statistic, rel=1e-10)
    assert out["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert out["df"] == pytest.approx(ref.df, rel=1e-10)


def test_zero_variance_differences_follow_scipy_and_stay_json():
    base = [0.90, 0.91, 0.92]
    same = stats.paired(base, base)                         # no difference at all: the test is undefined
    assert same["diff"]["mean"] == 0 and same["diff"]["ci"] == [0.0, 0.0]
    assert same["t"] is None and same["p"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert np.isnan(sp.ttest_rel(base, base).pvalue)
    shifted = stats.paired([0.0, 1.0, 2.0], [0.5, 1.5, 2.5])  # identical non-zero differences: t=inf, p=0 in scipy
    assert shifted["p"] == 0.0 and shifted["t"] is None
    assert shifted["diff"]["ci"] == [0.5, 0.5]
    flat = stats.welch([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    assert flat["p"] == 0.0 and flat["t"] is None
    assert stats.welch([1.0, 1.0], [1.0, 1.0])["p"] is None
    for obj in (same, shifted, flat):
        _no_nan(obj)


def test_too_few_values_give_null_tests_not_crashes():
    one = stats.paired([0.9], [0.95])
    assert one["diff"]["mean"] == pytest.approx(0.05) and one["diff"]["ci"] is None
    assert one["t"] is None and one["p"] is None
    assert stats.welch([0.9], [0.95, 0.96]) == {"t": None, "df": None, "p": None}
    _no_nan(one)
    with pytest.raises(ValueError):
        stats.paired([1.0, 2.0], [1.0])


def test_compare_to_baseline_pairs_matched_seeds_only():
    base = {0: 0.90, 1: 0.92, 2: 0.91}
    var = {0: 0.93, 1: 0.94, 3: 0.99}
    c = stats.compare_to_baseline(base, var)
    assert c["matched_seeds"] == [0, 1] and c["n_pairs"] == 2
    ref = sp.ttest_rel([0.93, 0.94], [0.90, 0.92])
    assert c["paired"]["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    w = sp.ttest_ind([0.93, 0.94, 0.99], [0.90, 0.92, 0.91], equal_var=False)
    assert c["welch"]["p"] == pytest.approx(w.pvalue, rel=1e-10)
    _no_nan(c)
