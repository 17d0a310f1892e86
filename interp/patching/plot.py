"""Heatmaps of a PatchResult: one panel per (model, direction), the directions side by side; cells
whose 95% interval includes no effect are hatched; positions labelled with token and role."""
from __future__ import annotations

import textwrap

import numpy as np

from interp import InterpError
from interp.patching.sites import METRICS, _check_choice

ROLE = {"prefix": "pre", "changed": "chg", "write": "WRITE", "between": "btw", "query": "QUERY", "after": "aft"}
LABEL = {"logit_diff": "normalised logit diff (0 = corrupted run, 1 = clean run)",
         "prob": "p(clean answer)", "kl": "KL(clean run || patched run)"}
MIN_RANGE = 0.05   # the normalised logit diff's colour scale spans at least no effect +- this: rounding noise stays white
NOISE = 1e-6       # an interval this close to no effect counts as including it (float32 rounding of the metrics)


def _rows(sub, one_layer):
    """(row key per cell, row keys in order, row labels, layer kind per row)."""
    head = sub["head"].map(lambda h: "" if h < 0 else f"[h{h}]")
    if one_layer:
        key = sub.site + head
        rows = list(dict.fromkeys(key))
        return key, rows, rows, {}
    key = sub.site + sub.layer.map(lambda i: f"|{i:03d}") + head
    rows = sorted(set(key))
    kinds, lay = dict(zip(key, sub.layer_kind)), dict(zip(key, sub.layer))
    labels = [f"L{lay[r]} {kinds[r]}" + (f" {r.split('|')[0]}" if sub.site.nunique() > 1 else "")
              + (r[r.index('['):] if '[' in r else "") for r in rows]
    return key, rows, labels, kinds


def _no_effect(res, direction, metric):
    b = res.attrs.get("baselines", {})
    if direction == "noise":
        return 1.0 if metric == "logit_diff" else (b.get("clean_prob", np.nan) if metric == "prob" else 0.0)
    return 0.0 if metric == "logit_diff" else b.get(f"corrupted_{metric}", np.nan)


def _panel(fig, ax, res, sub, metric, one_layer, vmax, title):
    from matplotlib.patches import Rectangle
    key, rows, labels, kinds = _rows(sub, one_layer)
    pos = sorted(sub.position.unique())
    grid = np.full((len(rows), len(pos)), np.nan)
    hatch = np.zeros_like(grid, dtype=bool)
    ri, pi = {r: i for i, r in enumerate(rows)}, {p: i for i, p in enumerate(pos)}
    ref = _no_effect(res, sub.direction.iloc[0], metric)
    lo = sub[f"{metric}_lo"] if f"{metric}_lo" in sub else sub[metric] * np.nan
    hi = sub[f"{metric}_hi"] if f"{metric}_hi" in sub else sub[metric] * np.nan
    for r, p, v, a, b in zip(key, sub.position, sub[metric], lo, hi):
        grid[ri[r], pi[p]] = v
        hatch[ri[r], pi[p]] = bool(np.isfinite(a) and np.isfinite(b) and a - NOISE <= ref <= b + NOISE)
    # logit_diff: white = no effect (denoising 0, noising 1), the same scale around it in every panel
    im = ax.imshow(grid, aspect="auto", cmap="RdBu_r" if metric == "logit_diff" else "viridis",
                   vmin=ref - vmax if vmax else None, vmax=ref + vmax if vmax else None, interpolation="nearest")
    for i, j in zip(*np.nonzero(hatch)):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.6", lw=0))
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    for t, r in zip(ax.get_yticklabels(), rows):
        if kinds.get(r, "").startswith("attn"):
            t.set_color("C3")
            t.set_fontweight("bold")
    first = sub.drop_duplicates("position").set_index("position")
    role = {p: ROLE.get(first.position_class.get(p, ""), "") + ("*" if first.class_share.get(p, 1.0) < 1 else "")
            for p in pos} if "position_class" in sub else {}
    toks = first["token"].to_dict() if "token" in sub else {}
    ax.set_xticks(range(len(pos)), [f"{p} {toks.get(p, '')} {role.get(p, '')}".strip() for p in pos],
                  rotation=90, fontsize=6)
    for t, p in zip(ax.get_xticklabels(), pos):
        if role.get(p, "").rstrip("*") in ("WRITE", "QUERY", "chg"):
            t.set_fontweight("bold")
    ax.set_xlabel("position, token (of the first pair) and role (* = differs between pairs: the role of most)",
                  fontsize=7)
    ax.set_ylabel("site" if one_layer else "layer, site", fontsize=7)
    ax.set_title(title, fontsize=9)
    cb = fig.colorbar(im, ax=ax, fraction=0.03)
    cb.set_label(LABEL[metric], fontsize=7)
    cb.ax.tick_params(labelsize=6)


def plot_result(res, path=None, metric="logit_diff", title=None):
    import matplotlib
    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    _check_choice("metric", metric, METRICS)
    df = res[res.position >= 0]
    if df.empty:
        raise InterpError("nothing to plot: no per-position cells (plot needs position >= 0)")
    models, dirs = list(dict.fromkeys(df.model)), list(dict.fromkeys(df.direction))
    one_layer = df.layer.nunique() == 1
    n_rows = max(4, df.layer.nunique() if not one_layer else df.site.nunique())
    width = min(18, max(6.5, 3 + 0.32 * df.position.nunique()))
    chars = int(14 * width * len(dirs))  # characters that fit across the figure at the titles' size
    fig, axes = plt.subplots(len(models), len(dirs), squeeze=False,
                             figsize=(width * len(dirs), 1.6 + 0.45 * len(models) * n_rows))
    vmax = None
    if metric == "logit_diff":
        vmax = max(MIN_RANGE, float(np.nanmax(np.abs(df[metric] - df.direction.map({"noise": 1.0}).fillna(0.0)))))
    lyr = f", layer {df.layer.iloc[0]} ({df.layer_kind.iloc[0]})" if one_layer else ""
    what = {"denoise": "denoising: clean activation into the corrupted run",
            "noise": "noising: corrupted activation into the clean run", "attribution": "attribution estimate"}
    for i, model in enumerate(models):
        for j, d in enumerate(dirs):
            sub = df[(df.model == model) & (df.direction == d)]
            if sub.empty:
                axes[i, j].set_axis_off()
                continue
            t = title or f"{model} {sub.task.iloc[0]}: {what.get(d, d)}{lyr}"
            _panel(fig, axes[i, j], res, sub, metric, one_layer, vmax, textwrap.fill(t, chars // len(dirs)))
    fig.suptitle(textwrap.fill("white: no effect (denoising 0, noising 1); hatched: the 95% interval over pairs "
                               "includes no effect; attention layers in red", chars), fontsize=8)
    fig.tight_layout()
    if path is not None:
        from interp.store import atomic_save
        atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
        plt.close(fig)
    return fig
