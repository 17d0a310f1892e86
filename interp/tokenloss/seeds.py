"""E3's numbers over training seeds: each seed's stratified per-token loss differences pooled into a mean
with a 95% t-interval over seeds (`seed_summary`), the published findings measured on each seed's tokens
(`finding_values`) and judged on that interval (`findings_table`), held-out loss per arm and domain
(`domain_losses`), the passes / overfit check per checkpoint (`overfit_table`) and the training figure.

Seed s of one arm and seed s of another were initialised with the same seed and trained on the same batches,
and both read the same evaluation tokens, so each seed's difference is a paired one; the interval is over
the seeds' differences (`interp.stats.seed_interval`; NaN with one seed).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from interp.experiment.report import md_table, pyplot, save_figure
from interp.stats import MIN_SEEDS, seed_interval
from interp.tokenloss.summary import COPY_MIN

PAIRS = (("olmo3", "olmo_hybrid"), ("olmo3_swa", "olmo_hybrid"))    # (A, B): diff = loss(A) - loss(B)
SOURCE = "Li & Merrill 2026, arXiv 2606.20936 (Ai2 blog: Olmo 3 7B vs Olmo Hybrid 7B)"
# (key, published finding, sign the finding expects of our value relative to `at`, at, how ours is measured)
FINDINGS = (
    ("overall", "the hybrid has lower loss than the transformer on average", +1, 0.0,
     "mean diff over all evaluation tokens (nats)"),
    ("tags_better", "... on most token tags", +1, 0.5,
     "share of tag categories whose mean diff is > 0"),
    ("content_minus_function", "larger gains on meaning-bearing (content / open-class) words", +1, 0.0,
     "diff(content words) - diff(function words)"),
    ("copy_excess", "the advantage almost disappears on verbatim repeats", -1, 0.0,
     f"diff on tokens inside a repeated n-gram (n >= {COPY_MIN}) minus the mean diff"),
    ("close_excess", "the advantage shrinks on closing delimiters", -1, 0.0,
     "diff on matched closing brackets / quotes / tags minus the mean diff"),
)


def seed_summary(per_seed: pd.DataFrame) -> pd.DataFrame:
    """``per_seed``: `stratify` rows of every (pair, seed). Per (pair, facet, category, domain): token count
    ``n``, ``seeds``, mean losses, and ``diff`` / ``excess`` as means over seeds with 95% t-intervals over
    seeds (``ci_lo`` / ``ci_hi``, ``excess_lo`` / ``excess_hi``): the columns `plot_summary` reads."""
    keys = ["pair", "facet", "category", "domain"]
    rows = []
    for k, g in per_seed.groupby(keys, sort=False):
        d, e = seed_interval(g["diff"]), seed_interval(g["excess"])
        rows.append({**dict(zip(keys, k)), "n": int(g["n"].iloc[0]), "seeds": len(g), "loss_a": g.loss_a.mean(),
                     "loss_b": g.loss_b.mean(), "diff": d[0], "ci_lo": d[1], "ci_hi": d[2], "excess": e[0],
                     "excess_lo": e[1], "excess_hi": e[2]})
    return pd.DataFrame(rows)


def finding_values(tl: pd.DataFrame) -> dict:
    """The quantities `FINDINGS` compares, on one seed's per-token losses of one pair (``diff`` > 0: B better)."""
    d = tl["diff"].astype(float)
    base = d.mean()
    tags = tl[tl.tag != "other"].groupby("tag")["diff"].mean()
    closers = tl["delim"].astype(str).str.startswith("close") & (tl["delim_span"] > 0)
    copy = tl["copy_len"] >= COPY_MIN
    return {"overall": base, "tags_better": float((tags > 0).mean()) if len(tags) else np.nan,
            "content_minus_function": d[tl.tag == "content"].mean() - d[tl.tag == "function"].mean(),
            "copy_excess": d[copy].mean() - base if copy.any() else np.nan,
            "close_excess": d[closers].mean() - base if closers.any() else np.nan}


def verdict(m: float, lo: float, hi: float, sign: int, at: float = 0.0) -> str:
    """agrees / disagrees / inconclusive: the interval [lo, hi] wholly on the side of ``at`` that ``sign``
    expects, wholly on the other side, or neither (or no interval)."""
    if np.isnan(lo) or np.isnan(hi):
        return "inconclusive"
    if lo > at:
        return "agrees" if sign > 0 else "disagrees"
    if hi < at:
        return "agrees" if sign < 0 else "disagrees"
    return "inconclusive"


def findings_rows(vals: pd.DataFrame, unconverged: set) -> pd.DataFrame:
    """One row per (finding, pair) of `FINDINGS`: our value's mean [95% interval over seeds], the verdict and
    how many seeds lie on the published side. ``vals``: `finding_values` per (pair, seed); a pair with an arm
    in ``unconverged``, or with fewer than `MIN_SEEDS` seeds, gets **inconclusive** whatever its interval."""
    rows = []
    for key, text, sign, at, how in FINDINGS:
        for pair, g in vals.groupby("pair", sort=False):
            x = g[key].dropna()
            m, lo, hi = seed_interval(x, bounds=(0, 1) if key == "tags_better" else None)
            v = verdict(m, lo, hi, sign, at)
            why = ""
            bad = [a for a in pair.split(" vs ") if a in unconverged]
            if bad:
                v, why = "inconclusive", f" ({', '.join(bad)} not shown to converge)"
            elif len(x) < MIN_SEEDS:
                why = (f" ({len(x)} training seed{'s' * (len(x) != 1)}, fewer than {MIN_SEEDS}"
                       + (f"; the interval alone reads {v}" if v != "inconclusive" else "") + ")")
                v = "inconclusive"
            side = int(((x > at) if sign > 0 else (x < at)).sum())
            rows.append(dict(finding=text, source=SOURCE, comparison=pair, measured=how,
                             ours=f"{m:+.3f}" + ("" if np.isnan(lo) else f" [{lo:+.3f}, {hi:+.3f}]")
                             + f" ({len(x)} seeds)",
                             verdict=f"**{v}**{why}", seeds_on_published_side=f"{side} of {len(x)}"))
    return pd.DataFrame(rows)


def findings_table(rows: pd.DataFrame) -> list[str]:
    """The report's table: published finding | source | ours (mean [CI], seeds) | verdict (the source named
    once under it)."""
    t = rows.assign(finding=[f"{f} — {p}: {h}" for f, p, h in zip(rows.finding, rows.comparison, rows.measured)])
    return (md_table(t[["finding", "ours", "verdict", "seeds_on_published_side"]].rename(columns={
        "finding": "published finding — our comparison: what we measure", "ours": "ours: mean [95% CI over seeds]",
        "verdict": "agrees / disagrees / inconclusive", "seeds_on_published_side": "seeds on the published side"}))
        + ["", f"Source of every finding above: {SOURCE}; the synthetic-probe findings follow below."])


def domain_losses(frames: dict) -> pd.DataFrame:
    """``frames``: {(pair, seed): per-token losses}. Per arm and domain (``all`` pools them): the held-out
    loss, mean over seeds with its 95% t-interval."""
    rows = {}
    for (pair, seed), tl in frames.items():
        a, b = pair.split(" vs ")
        for arm, col in ((a, "loss_a"), (b, "loss_b")):
            for dom, g in list(tl.groupby("domain")) + [("all", tl)]:
                rows[(arm, seed, dom)] = float(g[col].mean())      # an arm in two pairs: the same tokens
    df = pd.DataFrame([dict(arm=a, seed=s, domain=d, loss=v) for (a, s, d), v in rows.items()])
    out = []
    for (arm, dom), g in df.groupby(["arm", "domain"], sort=False):
        m, lo, hi = seed_interval(g.loss)
        out.append(dict(arm=arm, domain=dom, loss=m, lo=lo, hi=hi, seeds=len(g)))
    return pd.DataFrame(out)


def overfit_table(metas: list[dict]) -> pd.DataFrame:
    """Per arm and checkpoint step (the runs at the chosen rate, every seed): loss on fixed windows of the
    training text and of the validation text, means over seeds, and their gap."""
    rows = [dict(arm=m["arch"], seed=m["seed"], step=s, train_loss=tr, val_loss=va)
            for m in metas for s, tr, va in m.get("evals", [])]
    if not rows:
        return pd.DataFrame(columns=["arm", "step", "seeds", "train_loss", "val_loss", "gap"])
    df = pd.DataFrame(rows).groupby(["arm", "step"], sort=False).agg(
        seeds=("seed", "size"), train_loss=("train_loss", "mean"), val_loss=("val_loss", "mean")).reset_index()
    return df.assign(gap=df.val_loss - df.train_loss)


def overfit_lines(metas: list[dict], table: pd.DataFrame, rise: float = 0.01) -> list[str]:
    """Per arm: passes over the training text, and whether the validation loss (mean over seeds) rose by
    more than ``rise`` nats after its lowest checkpoint."""
    out = []
    for arm, g in table.groupby("arm", sort=False):
        ms = [m for m in metas if m["arch"] == arm]
        p = ms[0]["passes"]
        best = g.loc[g.val_loss.idxmin()]
        up = g.val_loss.iloc[-1] - best.val_loss
        out.append(f"* {arm}: {p:.2f} passes over {ms[0]['train_tokens'] / 1e6:.3f}M training tokens "
                   f"({ms[0]['steps']} steps x {ms[0]['batch']} windows of {ms[0]['seq_len']}); validation loss "
                   + (f"**rose** by {up:.3f} nats after its lowest point at step {int(best.step)} (overfitting)"
                      if up > rise else f"did not rise (last checkpoint {g.val_loss.iloc[-1]:.3f}, lowest "
                      f"{best.val_loss:.3f}); gap validation - training at the end {g.gap.iloc[-1]:+.3f} nats"))
    return out


def plot_training(table: pd.DataFrame, val: pd.DataFrame, best: dict, path):
    """Left: loss per checkpoint on training windows (solid) and validation windows (dashed), mean over seeds at
    the chosen rate; right: the sweep's validation next-token accuracy per learning rate (first seed)."""
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
    arms = list(dict.fromkeys(list(table.arm) + list(val.unit)))
    for i, arm in enumerate(arms):
        g = table[table.arm == arm]
        if len(g):
            a1.plot(g.step, g.train_loss, color=f"C{i}", label=f"{arm} train")
            a1.plot(g.step, g.val_loss, color=f"C{i}", ls="--", label=f"{arm} validation")
        v = val[(val.unit == arm) & (val.seed == val.seed.min())].sort_values("lr")
        if len(v):
            a2.plot(v.lr, v.val_acc, marker="o", color=f"C{i}", label=arm)
            if arm in best:
                a2.plot([best[arm]], v[v.lr == best[arm]].val_acc, marker="*", ms=14, color=f"C{i}")
    a1.set_xlabel("step")
    a1.set_ylabel("loss (nats/token)")
    a1.set_title("overfit check: training vs validation windows (mean over seeds)", fontsize=9)
    a1.grid(alpha=0.3)
    a1.legend(fontsize=7, ncol=2)
    a2.set_xscale("log")
    lrs = sorted(set(val.lr))
    a2.set_xticks(lrs, [f"{x:g}" for x in lrs])
    a2.minorticks_off()
    a2.set_xlabel("learning rate")
    a2.set_ylabel("validation next-token accuracy")
    a2.set_title("learning-rate sweep, first seed (star: chosen)", fontsize=9)
    a2.grid(alpha=0.3)
    a2.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def unigram_loss(stream: np.ndarray, val_stream: np.ndarray, vocab: int) -> float:
    """Loss (nats/token) on ``val_stream`` of predicting every token by its frequency in ``stream`` (add-one
    smoothed): what a model that ignores its context can reach."""
    p = np.bincount(stream, minlength=vocab) + 1.0
    p = p / p.sum()
    return float(-np.log(p[val_stream[1:]]).mean())


def seed_table(val: pd.DataFrame, best: dict, unigram: float) -> pd.DataFrame:
    """Per arm at its chosen rate: seeds finished, validation next-token accuracy and loss (mean [95% interval
    over seeds]) and whether it converged: the loss's interval wholly below the ``unigram`` loss."""
    rows = []
    for arm, lr in best.items():
        g = val[(val.unit == arm) & (val.lr == lr)]
        a, lo_ = seed_interval(g.val_acc, bounds=(0, 1)), seed_interval(g.val_loss)
        rows.append(dict(arm=arm, lr=f"{lr:g}", seeds=len(g), val_acc=fmt3(*a), val_loss=fmt3(*lo_),
                         converged="yes" if lo_[2] < unigram else "no"))
    return pd.DataFrame(rows)


def fmt3(m, lo, hi) -> str:
    """``2.100 [2.050, 2.150]`` (no interval where it is undefined)."""
    return f"{m:.3f}" + ("" if np.isnan(lo) else f" [{lo:.3f}, {hi:.3f}]")
