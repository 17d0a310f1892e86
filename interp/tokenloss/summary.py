"""Summaries of token losses with bootstrap intervals: the mean loss difference per category of each
facet (tag, copy length and distance, delimiters) and domain (`stratify`), and the paired per-task
difference of probe models against a reference (`paired_summary`)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from interp import InterpError
from interp.stats import boot_ci
from interp.tokenloss.lexicon import DELIMS, DOMAINS, TAGS

COPY_BINS = [(0, 0, "new"), (1, 1, "1"), (2, 3, "2-3"), (4, 7, "4-7"), (8, 15, "8-15"), (16, 10**9, "16+")]
DIST_BINS = [(1, 16, "1-16"), (17, 64, "17-64"), (65, 256, "65-256"), (257, 1024, "257-1k"), (1025, 10**9, ">1k")]
SPAN_BINS = [(1, 4, "1-4"), (5, 16, "5-16"), (17, 64, "17-64"), (65, 10**9, "65+")]
COPY_MIN = 4   # the copy-distance facet looks at tokens inside a repeated n-gram of at least this length


def _bucket(x: pd.Series, bins) -> pd.Series:
    out = pd.Series(pd.NA, index=x.index, dtype=object)
    for lo, hi, lab in bins:
        out[(x >= lo) & (x <= hi)] = lab
    return out


def facet_columns(df: pd.DataFrame) -> dict:
    """{facet: (category per row or NA, ordered categories)}."""
    tags = [t for t in TAGS if t != "other"]
    closers = df["delim"].where(df["delim"].astype(str).str.startswith("close") & (df["delim_span"] > 0))
    return {
        "tag": (df["tag"].where(df["tag"] != "other"), tags),
        "copy n-gram length": (_bucket(df["copy_len"], COPY_BINS), [b[2] for b in COPY_BINS]),
        f"copy distance (n-gram >= {COPY_MIN})": (_bucket(df["copy_dist"].where(df["copy_len"] >= COPY_MIN, -1),
                                                           DIST_BINS), [b[2] for b in DIST_BINS]),
        "delimiter": (df["delim"].where(df["delim"] != "none"), [d for d in DELIMS if d != "none"]),
        "closing delimiter span": (_bucket(df["delim_span"].where(closers.notna(), -1), SPAN_BINS),
                                   [b[2] for b in SPAN_BINS]),
    }


MIN_CLUSTERS = 5   # a category needs tokens in at least this many context windows for a bootstrap interval


def stratify(df: pd.DataFrame, facets=None, n_boot: int = 1000, seed: int = 0, min_n: int = 1) -> pd.DataFrame:
    """Per (facet, category, domain; domain ``all`` pools them): token count ``n``, the number of
    context windows holding such tokens (``clusters``), both models' mean loss, the mean
    difference ``diff`` and ``excess`` = diff minus the domain's mean difference over all its
    tokens (> 0: model B's advantage is larger on this category than on the domain's average
    token), each with a 95% cluster-bootstrap interval (``ci_lo``/``ci_hi``,
    ``excess_lo``/``excess_hi``): the domain's context windows are resampled with replacement,
    the same draws for every category, and each mean is the ratio of resampled sums. A category
    found in fewer than `MIN_CLUSTERS` windows gets no interval (NaN)."""
    cols = facet_columns(df)
    facets = list(cols) if facets is None else list(facets)
    bad = [f for f in facets if f not in cols]
    if bad:
        raise InterpError(f"facet '{bad[0]}' is not valid; valid: {', '.join(cols)}")
    cluster = pd.factorize(df["doc_id"].astype(str) + "#" + df["window"].astype(str))[0]
    diff, la, lb = (df[c].to_numpy(float) for c in ("diff", "loss_a", "loss_b"))
    domain = df["domain"].to_numpy()
    doms = [d for d in DOMAINS if d in set(domain)] + ["all"]
    per_dom = {}
    for k, dom in enumerate(doms):
        in_dom = np.ones(len(df), bool) if dom == "all" else domain == dom
        _, inv = np.unique(cluster[in_dom], return_inverse=True)
        C = int(inv.max()) + 1 if len(inv) else 0
        rng = np.random.default_rng([seed, k])
        W = rng.multinomial(C, np.full(C, 1.0 / C), size=n_boot).astype(float) if C >= 2 else None
        base_sum = np.bincount(inv, weights=diff[in_dom], minlength=C)
        base_cnt = np.bincount(inv, minlength=C).astype(float)
        base_boot = (W @ base_sum) / (W @ base_cnt) if W is not None else None
        per_dom[dom] = (in_dom, inv, C, W, float(diff[in_dom].mean()) if in_dom.any() else np.nan, base_boot)

    def interval(x):
        x = x[np.isfinite(x)]
        if len(x) < max(10, n_boot // 2):
            return float("nan"), float("nan")
        lo, hi = np.percentile(x, [2.5, 97.5])
        return float(lo), float(hi)
    rows = []
    for f in facets:
        cat, order = cols[f]
        cat = cat.astype(object).where(cat.notna(), "").to_numpy()
        for dom in doms:
            in_dom, inv, C, W, base, base_boot = per_dom[dom]
            cat_d, diff_d = cat[in_dom], diff[in_dom]
            for c in order:
                sel = cat_d == c
                n = int(sel.sum())
                if n < min_n or n == 0:
                    continue
                sums = np.bincount(inv[sel], weights=diff_d[sel], minlength=C)
                counts = np.bincount(inv[sel], minlength=C).astype(float)
                lo = hi = elo = ehi = float("nan")
                if W is not None and (counts > 0).sum() >= MIN_CLUSTERS:
                    with np.errstate(invalid="ignore", divide="ignore"):
                        boot = (W @ sums) / (W @ counts)
                    lo, hi = interval(boot)
                    elo, ehi = interval(boot - base_boot)
                m = diff_d[sel].mean()
                rows.append(dict(facet=f, category=c, domain=dom, n=n, clusters=int((counts > 0).sum()),
                                 loss_a=la[in_dom][sel].mean(), loss_b=lb[in_dom][sel].mean(), diff=m, ci_lo=lo,
                                 ci_hi=hi, excess=m - base, excess_lo=elo, excess_hi=ehi))
    return pd.DataFrame(rows)


def paired_summary(df: pd.DataFrame, ref: str, n_boot: int = 1000, seed: int = 0,
                   by=("task", "role", "knob", "value")) -> pd.DataFrame:
    """Per (model != ref, task, role, knob, value): mean loss / cand_loss / accuracy of both and the
    paired difference ``diff = loss(ref) - loss(model)`` (> 0: the model beats ``ref``) with a 95%
    bootstrap interval over examples."""
    rng = np.random.default_rng(seed)
    by = list(by)
    keys = by + ["example", "position"]
    r = df[df.model == ref].set_index(keys)
    rows = []
    for m in [x for x in dict.fromkeys(df.model) if x != ref]:
        o = df[df.model == m].set_index(keys)
        j = r.merge(o, left_index=True, right_index=True, suffixes=("_ref", "_m"), how="inner").reset_index()
        j["diff"] = j["cand_loss_ref"] - j["cand_loss_m"]
        for k, g in j.groupby(by, sort=False):
            agg = g.groupby("example")["diff"].agg(["sum", "count"])
            lo, hi = boot_ci(agg["sum"].to_numpy(float), agg["count"].to_numpy(float), n_boot, rng)
            rows.append({**dict(zip(by, k)), "model": m, "ref": ref, "n": len(g),
                         "cand_loss_ref": g["cand_loss_ref"].mean(), "cand_loss_model": g["cand_loss_m"].mean(),
                         "acc_ref": g["correct_ref"].mean(), "acc_model": g["correct_m"].mean(),
                         "diff": g["diff"].mean(), "ci_lo": lo, "ci_hi": hi})
    return pd.DataFrame(rows)
