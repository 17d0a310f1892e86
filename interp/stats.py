"""Confidence intervals and bootstraps, the one place every result's uncertainty is computed.

* `boot_ci(sums, counts, n_boot, rng)`: 95% percentile interval of a ratio of sums when whole
  clusters (examples, context windows, pairs) are resampled with replacement (`boot_ratio_cis`: many at once;
  a resample of count 0 has no ratio and is left out).
* `t975(k)`: the 0.975 quantile of Student's t with k degrees of freedom.
* `seed_interval(values, bounds=None)`: mean and 95% t-interval over independent training seeds
  or data seeds; NaN bounds with fewer than two; ``bounds=(0, 1)`` clips it to what an accuracy can be
  (`clip_interval` does that for arrays of bounds); a NaN seed is left out with a warning.
* `few_seeds(k)` / `warn_few_seeds(k, what)`: an interval over fewer than `MIN_SEEDS` (3) seeds is
  flagged (a column of the caller's table) and warned about once, naming the count (with 2 seeds the
  t quantile is 12.7: the interval says little and can leave [0, 1]).
"""
from __future__ import annotations

import warnings

import numpy as np

MIN_SEEDS = 3


def t975(k: int) -> float:
    """0.975 quantile of Student's t with `k` degrees of freedom (scipy)."""
    from scipy.stats import t
    return float(t.ppf(0.975, k))


def boot_ci(sums: np.ndarray, counts: np.ndarray, n_boot: int, rng) -> tuple[float, float]:
    """95% percentile interval of the ratio sum/count under resampling clusters with replacement: `boot_ratio_cis`
    of one column (a resample whose count is 0 has no ratio and is left out; NaN with fewer than two clusters
    that have a nonzero sum or count)."""
    lo, hi = boot_ratio_cis(np.asarray(sums, dtype=float)[:, None], counts, n_boot, rng)
    return float(lo[0]), float(hi[0])


def seed_interval(values, bounds=None) -> tuple[float, float, float]:
    """(mean, lo, hi): mean over seeds with a 95% t-interval (NaN bounds below two seeds);
    ``bounds`` (lo, hi), e.g. (0, 1) for an accuracy: the interval clipped to them. A NaN or infinite value
    (a seed without a result) is left out, with a UserWarning naming how many of how many seeds were (none
    when every value is: then all three are NaN)."""
    x = np.asarray(values, dtype=float)
    ok = np.isfinite(x)
    if ok.any() and not ok.all():   # all of them NaN: the result is NaN, nothing hidden
        warnings.warn(f"seed_interval: left out {int((~ok).sum())} of {x.size} seed values (NaN or infinite); the "
                      f"mean and interval are over the other {int(ok.sum())}", UserWarning, stacklevel=2)
    x = x[ok]
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(x.mean())
    if len(x) < 2:
        return m, float("nan"), float("nan")
    half = t975(len(x) - 1) * float(x.std(ddof=1)) / np.sqrt(len(x))
    lo, hi = clip_interval(m - half, m + half, bounds)
    return m, float(lo), float(hi)


def clip_interval(lo, hi, bounds=None):
    """(lo, hi) (numbers or arrays) clipped to ``bounds`` (lo, hi); unchanged without; NaN stays NaN."""
    if bounds is None:
        return lo, hi
    return np.clip(lo, *bounds), np.clip(hi, *bounds)


def few_seeds(k):
    """Whether an interval over ``k`` seeds (a number or an array) rests on fewer than `MIN_SEEDS`."""
    return np.asarray(k) < MIN_SEEDS


def warn_few_seeds(k, what: str = "results", stacklevel: int = 2) -> bool:
    """One UserWarning when any of the seed counts ``k`` (a number, or one per row of a table) gives
    an interval from fewer than `MIN_SEEDS` seeds (two: one seed has no interval, its bounds are NaN),
    naming the count (and how many rows, where not all). ``what`` names the numbers and where they
    are flagged. Returns whether it warned."""
    k = np.atleast_1d(np.asarray(k, dtype=float))
    bad = np.isfinite(k) & (k >= 2) & (k < MIN_SEEDS)
    if not bad.any():
        return False
    counts = sorted({int(s) for s in k[bad]})
    n = " or ".join(map(str, counts)) + " seeds"
    if not bad.all():
        n += f" in {int(bad.sum())} of {len(k)} rows"
    warnings.warn(f"{what}: 95% intervals from {n} (fewer than {MIN_SEEDS}; t quantile "
                  f"{t975(counts[0] - 1):.1f} with {counts[0] - 1} degree(s) of freedom) are unreliable; "
                  f"use {MIN_SEEDS} or more seeds", UserWarning, stacklevel=stacklevel + 1)
    return True


def boot_ratio_cis(sums: np.ndarray, counts: np.ndarray, n_boot: int, rng, block: int = 4096):
    """95% percentile intervals of many ratios at once: column j is sum(sums[:, j]) / sum(counts[:, j])
    (``counts`` [C] is shared by every column), the C rows (clusters, e.g. prompt pairs) resampled
    with replacement, the same resamples for every column (so differences between columns are
    paired). A cluster that does not belong to a column has 0 in both. A resample whose count is 0
    (only clusters outside the column) has no ratio and is left out of the percentiles. Returns
    (lo [J], hi [J]); NaN with fewer than two clusters in a column (C < 2, or fewer than two rows with a
    nonzero sum or count there: one cluster has no spread to resample) or where no resample has a ratio."""
    sums = np.asarray(sums, dtype=float)
    C, J = sums.shape
    if C < 2:
        return np.full(J, np.nan), np.full(J, np.nan)
    w = rng.multinomial(C, np.full(C, 1.0 / C), size=n_boot).astype(float)   # [B, C]
    counts = np.asarray(counts, dtype=float)
    cnt = counts if counts.ndim == 2 else counts[:, None]
    members = ((sums != 0) | (cnt != 0)).sum(0)                               # [J] clusters in each column
    lo, hi = np.empty(J), np.empty(J)
    for a in range(0, J, block):
        num = w @ sums[:, a:a + block]
        den = w @ (counts[:, a:a + block] if counts.ndim == 2 else counts[:, None])
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)
        with warnings.catch_warnings():  # a column with no finite resample: NaN bounds
            warnings.simplefilter("ignore", RuntimeWarning)
            lo[a:a + block], hi[a:a + block] = np.nanpercentile(r, [2.5, 97.5], axis=0)
    lo[members < 2], hi[members < 2] = np.nan, np.nan
    return lo, hi
