"""Attribution patching validated against exact patching on the shipped default models: every layer
and every site kind (attn.q/k/v/head_out/pattern, rec.q/k/v/decay/beta/readout/state and the
residual sites), denoising, normalised logit diff, the same kept pairs.

    python bench/attribution_check.py                          # gdn75, gdn100, transformer; mqar; 16 pairs (CPU)
    python bench/attribution_check.py --n 32 --out figures/attribution_check

Writes to --out: attribution_check.csv (per model x site kind: cells, Pearson r, Spearman rho,
sign agreement on cells with an exact effect >= 0.05, largest error and where, the layer where r
is lowest), layers.csv (the same per model x site kind x layer), cells.parquet (every cell:
exact and estimate), scatter.png and report.md (the tables for BENCHMARKS.md). Attribution is
Nanda's first-order estimate (a_clean - a_corrupted) . dLD/da from one forward and backward pass;
rec.state has no gradient on the kernels' path, so its estimate is the gradient of the state
patch itself (`interp.patching.attribution`).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import hooks
from interp import patching, tasks
from interp.demo import load_defaults
from interp.experiment import git_commit

EFFECT = 0.05   # an exact effect at least this large counts for sign agreement
NO_EFFECT = 0.01


def run_model(name, model, pairs, n_threads, units):
    """Exact sweep (resumable in ``units``) and attribution over every site kind the model has:
    the cells side by side. The exact sweep's time is the run that computed its units (kept in
    ``<units>/<name>.timing.json``; NaN if they were computed elsewhere)."""
    hm = hooks.wrap(model)
    sites = [s for s in patching.SITES if any(n.endswith("." + s) for n in hm.hook_names)]
    timing = units / f"{name}.timing.json"
    fresh = not (units / name / "units").is_dir() or not any((units / name / "units").iterdir())
    t0 = time.perf_counter()
    ex = patching.sweep(hm, pairs, sites=sites, model_name=name, progress=False, out=units / name)
    t_ex = time.perf_counter() - t0
    if fresh:
        timing.write_text(json.dumps({"exact_s": t_ex, "threads": n_threads}) + "\n")
    t_ex = json.loads(timing.read_text())["exact_s"] if timing.is_file() else float("nan")
    t0 = time.perf_counter()
    at = patching.attribution(hm, pairs, sites=sites, model_name=name)
    t_at = time.perf_counter() - t0
    cells, _ = patching.compare_attribution(ex, at)
    print(f"{name}: {len(cells)} cells, {ex.attrs['pairs']['kept']} of {ex.attrs['pairs']['n']} pairs kept; "
          f"exact {t_ex:.0f} s, attribution {t_at:.0f} s ({n_threads} thread(s))", flush=True)
    return cells.assign(model=name), {"model": name, "exact_s": t_ex, "attribution_s": t_at,
                                      "kept": ex.attrs["pairs"]["kept"], "n": ex.attrs["pairs"]["n"]}


def _r(g):
    if g.logit_diff.abs().max() < NO_EFFECT or g.logit_diff.std() == 0 or g.logit_diff_attribution.std() == 0:
        return np.nan
    return float(g.logit_diff.corr(g.logit_diff_attribution))


def tables(cells):
    """(per model x site, per model x site x layer) agreement tables."""
    rows, lay = [], []
    for (model, site), g in cells.groupby(["model", "site"], sort=False):
        per_layer = []
        for layer, h in g.groupby("layer"):
            err = (h.logit_diff_attribution - h.logit_diff).abs()
            per_layer.append({"model": model, "site": site, "layer": int(layer), "cells": len(h), "pearson_r": _r(h),
                              "max_abs_exact": float(h.logit_diff.abs().max()), "max_abs_err": float(err.max())})
        lay += per_layer
        pl = pd.DataFrame(per_layer)
        err = (g.logit_diff_attribution - g.logit_diff).abs()
        big = g[g.logit_diff.abs() >= EFFECT]
        w = g.loc[err.idxmax()]
        worst = pl.dropna(subset=["pearson_r"]).sort_values("pearson_r").head(1)
        rows.append({"model": model, "site": site, "layers": g.layer.nunique(), "cells": len(g),
                     "pearson_r": _r(g), "r_nontrivial": _r(g[~g.trivial.astype(bool)]),
                     "spearman_rho": float(g.logit_diff.corr(g.logit_diff_attribution, "spearman")),
                     "n_effect": len(big), "sign_agree": float((np.sign(big.logit_diff) == np.sign(
                         big.logit_diff_attribution)).mean()) if len(big) else np.nan,
                     "max_abs_exact": float(g.logit_diff.abs().max()), "max_abs_err": float(err.max()),
                     "worst_cell": f"L{w.layer} pos {w.position} ({w.position_class}"
                                   + (f" for {w.class_share:.0%} of pairs" if w.class_share < 1 else "")
                                   + f"): exact {w.logit_diff:.3f}, estimate {w.logit_diff_attribution:.3f}",
                     "lowest_r_layer": (f"L{int(worst.layer.item())}: r {worst.pearson_r.item():.2f}"
                                        if len(worst) else "")})
    return pd.DataFrame(rows), pd.DataFrame(lay)


def verdict(r) -> str:
    """'agrees' (r >= 0.9, signs >= 0.9, errors < 0.1), 'ranks' (r and signs agree, magnitudes off by
    >= 0.1 somewhere), 'fails' (r < 0.9 or signs < 0.9), each with where it is worst."""
    if r.max_abs_exact < NO_EFFECT:
        return f"no effect to find (all exact < {NO_EFFECT}); estimates within {r.max_abs_err:.3f}"
    signs = np.isnan(r.sign_agree) or r.sign_agree >= 0.9
    where = f"largest error at {r.worst_cell}"
    if r.pearson_r >= 0.9 and signs:
        return "agrees" if r.max_abs_err < 0.1 else f"ranks cells right, magnitude off: {where}"
    return f"fails: {where}" + (f"; lowest r at {r.lowest_r_layer}" if r.lowest_r_layer else "")


def report(summary, layers, cells, runs, a, out: Path):
    cmd = "python bench/attribution_check.py " + " ".join(sys.argv[1:])
    lines = [f"# Attribution patching vs exact patching ({datetime.date.today()}, CPU)", "",
             f"Command: `{cmd.strip()}` (commit {git_commit() or 'n/a'}); task {a.task}, {a.n} pairs (seed {a.seed}), "
             "pairs kept where the model answers both prompts correctly; denoising, normalised logit diff, every "
             "layer that has the site and every position (r non-trivial: without the cells that are trivial for every pair, "
             "see interp.patching.classes). Attribution: (a_clean - a_corrupted) . dLD/da at the "
             "corrupted run (rec.state: the gradient of the state patch, continued through the recurrence).", "",
             "| model | pairs kept | exact sweep (s) | attribution (s) |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['kept']}/{r['n']} | {r['exact_s']:.0f} | {r['attribution_s']:.0f} |" for r in runs]
    lines += ["", f"Per site kind (r: Pearson over the cells, NaN where no exact effect reaches {NO_EFFECT}; sign: "
              f"share of cells with |exact| >= {EFFECT} whose estimate has the same sign):", "",
              "| model | site | layers | cells | r | r non-trivial | Spearman | sign (cells) | max abs exact "
              "| max abs error | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        sign = f"{r.sign_agree:.2f} ({r.n_effect})" if r.n_effect else "-"
        lines.append(f"| {r.model} | `{r.site}` | {r.layers} | {r.cells} | {r.pearson_r:.3f} | {r.r_nontrivial:.3f} | "
                     f"{r.spearman_rho:.3f} | {sign} | {r.max_abs_exact:.3f} | {r.max_abs_err:.3f} | {verdict(r)} |")
    lines += ["", *reading(summary, cells)]
    rank = layers[(layers.pearson_r < 0.9) & (layers.max_abs_exact >= EFFECT)]
    big = layers.sort_values("max_abs_err", ascending=False).head(10)
    for what, rows in ((f"Layers where the ranking fails (r < 0.9 with an exact effect >= {EFFECT})", rank),
                       ("The 10 layers with the largest errors (every layer: layers.csv)", big)):
        lines += ["", what + ":", "", "| model | site | layer | r | max abs exact | max abs error |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r.model} | `{r.site}` | {r.layer} | {r.pearson_r:.3f} | {r.max_abs_exact:.3f} | "
                  f"{r.max_abs_err:.3f} |" for r in rows.itertuples()] or ["| none | | | | | |"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return lines


def reading(summary, cells) -> list:
    """The findings in words, computed from the tables."""
    v = summary.apply(verdict, axis=1)
    kinds = {k: summary[v.str.startswith(k)] for k in ("agrees", "ranks", "fails", "no effect")}
    name = lambda d: ", ".join(f"{r.model} `{r.site}`" for r in d.itertuples()) or "none"  # noqa: E731
    full = cells[cells.logit_diff >= 0.9]
    out = ["Reading (computed from the tables above):", "",
           f"* ranks the cells right and gets the magnitudes within 0.1: {name(kinds['agrees'])};",
           f"* ranks them right (r >= 0.9, signs agree) but misses magnitudes by >= 0.1: {name(kinds['ranks'])};",
           f"* fails (r < 0.9 or signs < 0.9): {name(kinds['fails'])};",
           f"* no exact effect to find (every cell < {NO_EFFECT}): {name(kinds['no effect'])}."]
    if len(full):
        out += ["", f"Every cell whose exact patch restores the answer (exact >= 0.9, {len(full)} cells) is "
                f"underestimated: estimates {full.logit_diff_attribution.min():.2f}-"
                f"{full.logit_diff_attribution.max():.2f} (median {full.logit_diff_attribution.median():.2f}): the "
                "first-order estimate at the corrupted run does not follow the nonlinearity between the activation "
                "and the logit difference (norms, softmax) over so large a change; which one it is was not "
                "isolated here. Rankings hold, magnitudes of large effects do not."]
    return out


def scatter(cells, out: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sites = list(dict.fromkeys(cells.site))
    colour = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(cells.model))}
    cols = 6
    fig, axes = plt.subplots(-(-len(sites) // cols), cols, figsize=(3.0 * cols, 2.9 * -(-len(sites) // cols)),
                             squeeze=False)
    for ax, site in zip(axes.flat, sites):
        g = cells[cells.site == site]
        for model, h in g.groupby("model", sort=False):
            ax.scatter(h.logit_diff, h.logit_diff_attribution, s=6, alpha=0.6, color=colour[model], label=model)
        lo = float(min(g.logit_diff.min(), g.logit_diff_attribution.min()))
        hi = float(max(g.logit_diff.max(), g.logit_diff_attribution.max()))
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, ls="--")
        ax.set_title(site, fontsize=9)
        ax.set_xlabel("exact (normalised logit diff)", fontsize=7)
        ax.set_ylabel("attribution estimate", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6, markerscale=2)
    for ax in list(axes.flat)[len(sites):]:
        ax.set_axis_off()
    fig.suptitle("attribution patching vs exact denoising, every cell (dashed: equal)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "scatter.png", dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="gdn75,gdn100,transformer")
    ap.add_argument("--task", default="mqar")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="figures/attribution_check")
    ap.add_argument("--units", default="runs/attribution_check", help="the exact sweeps' result folders "
                    "(a re-run resumes them; the timing then counts only what ran)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    models = load_defaults(a.models.split(","))
    pairs = tasks.make_pairs(a.task, a.n, seed=a.seed)
    frames, runs = [], []
    for name, m in models.items():
        cells, run = run_model(name, m, pairs, a.threads, Path(a.units) / f"{a.task}_n{a.n}_seed{a.seed}")
        frames.append(cells)
        runs.append(run)
    cells = pd.concat(frames, ignore_index=True)
    summary, layers = tables(cells)
    cells[["model", "site", "layer", "layer_kind", "position", "token", "head", "position_class", "logit_diff",
           "logit_diff_attribution"]].to_parquet(out / "cells.parquet", index=False)
    summary.to_csv(out / "attribution_check.csv", index=False)
    layers.to_csv(out / "layers.csv", index=False)
    scatter(cells, out)
    print("\n".join(report(summary, layers, cells, runs, a, out)))


if __name__ == "__main__":
    main()
