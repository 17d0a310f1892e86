"""Confidence intervals and bootstraps, the one place every result's uncertainty is computed.

* `boot_ci(sums, counts, n_boot, rng)`: 95% percentile interval of a ratio of sums when whole
  clusters (examples, context windows, pairs) are resampled with replacement.
* `t975(k)`: the 0.975 quantile of Student's t with k degrees of freedom.
* `seed_interval(values)`: mean and 95% t-interval over independent training seeds or data seeds;
  NaN bounds with fewer than two.
"""
from __future__ import annotations

import numpy as np


def t975(k: int) -> float:
    """0.975 quantile of Student's t with `k` degrees of freedom (scipy)."""
    from scipy.stats import t
    return float(t.ppf(0.975, k))


def boot_ci(sums: np.ndarray, counts: np.ndarray, n_boot: int, rng) -> tuple[float, float]:
    """95% percentile interval of the ratio sum/count under resampling clusters with replacement."""
    C = len(sums)
    if C < 2:
        return float("nan"), float("nan")
    w = rng.multinomial(C, np.full(C, 1.0 / C), size=n_boot).astype(float)
    means = (w @ sums) / np.maximum(w @ counts, 1e-12)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def seed_interval(values) -> tuple[float, float, float]:
    """(mean, lo, hi): mean over seeds with a 95% t-interval (NaN bounds below two seeds)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(x.mean())
    if len(x) < 2:
        return m, float("nan"), float("nan")
    half = t975(len(x) - 1) * float(x.std(ddof=1)) / np.sqrt(len(x))
    return m, m - half, m + half


def boot_ratio_cis(sums: np.ndarray, counts: np.ndarray, n_boot: int, rng, block: int = 4096):
    """95% percentile intervals of many ratios at once: column j is sum(sums[:, j]) / sum(counts[:, j])
    (``counts`` [C] is shared by every column), the C rows (clusters, e.g. prompt pairs) resampled
    with replacement, the same resamples for every column (so differences between columns are
    paired). A cluster that does not belong to a column has 0 in both. Returns (lo [J], hi [J]);
    NaN with fewer than two clusters or where a resampled count is 0."""
    import warnings
    sums = np.asarray(sums, dtype=float)
    C, J = sums.shape
    if C < 2:
        return np.full(J, np.nan), np.full(J, np.nan)
    w = rng.multinomial(C, np.full(C, 1.0 / C), size=n_boot).astype(float)   # [B, C]
    counts = np.asarray(counts, dtype=float)
    lo, hi = np.empty(J), np.empty(J)
    for a in range(0, J, block):
        num = w @ sums[:, a:a + block]
        den = w @ (counts[:, a:a + block] if counts.ndim == 2 else counts[:, None])
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)
        with warnings.catch_warnings():  # a column with no finite resample: NaN bounds
            warnings.simplefilter("ignore", RuntimeWarning)
            lo[a:a + block], hi[a:a + block] = np.nanpercentile(r, [2.5, 97.5], axis=0)
    return lo, hi
