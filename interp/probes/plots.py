"""Probe plots: accuracy and selectivity against layer (`plot_layers`), against distance
(`plot_distance`) and against the swept load (`plot_load`). Accuracy and selectivity get their own
axes, a model's line breaks at layers that lack the site, the majority and surface baselines are
drawn, uninformative controls are marked (x) and legends sit outside the panels."""
from __future__ import annotations

import numpy as np
import pandas as pd

from interp import InterpError

STYLE = {"shuffled": "--", "untrained": ":", "hewitt_liang": "-.", "none": "--"}


def MaxNLocator(**kw):
    from matplotlib.ticker import MaxNLocator as M
    return M(**kw)


def _fig(nrows, ncols, path, width=4.2, height=3.0):
    import matplotlib
    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return plt, fig, axes


def _done(plt, fig, path):
    """One legend right of the panels (each label once), saved atomically with ``path``."""
    seen = {}
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="upper left", bbox_to_anchor=(1.0, 0.98), fontsize=7,
                   frameon=False)
    fig.tight_layout()
    if path is not None:
        from interp.store import atomic_save
        atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight"))
        plt.close(fig)
    return fig


def _colours(res):
    return {m: f"C{i}" for i, m in enumerate(dict.fromkeys(res["model"]))}


def _gapped(g, x="layer"):
    """``g`` indexed by every integer ``x`` from its first to its last, NaN where it has no row (so
    lines break there instead of joining distant layers)."""
    g = g.sort_values(x).drop_duplicates(x).set_index(x)
    full = range(int(g.index.min()), int(g.index.max()) + 1)
    return g.reindex(full)


def _baselines(ax, sub):
    ax.axhline(float(sub["majority"].median()), color="gray", lw=0.8, ls=":", label="majority (baseline)")
    ax.axhline(float(sub["surface"].median()), color="gray", lw=0.8, ls="--", label="surface: token id (baseline)")


def _accuracy(ax, g, c, label, x="layer"):
    xs = g.index.astype(float)
    ax.plot(xs, g["accuracy"], marker="o", ms=3, color=c, label=label)
    if g["acc_lo"].notna().any():
        ax.fill_between(xs, g["acc_lo"].clip(0, 1), g["acc_hi"].clip(0, 1), color=c, alpha=0.2, lw=0)


def _selectivity(ax, rows, model, c, x="layer"):
    """Selectivity per control kind (line style), uninformative points marked x."""
    for kind, h in rows.groupby("control_kind", sort=False):
        if kind == "none":
            continue
        h = _gapped(h, x)
        xs = h.index.astype(float)
        ax.plot(xs, h["selectivity"], ls=STYLE.get(kind, "--"), color=c, label=f"{model} vs {kind}")
        if h["sel_lo"].notna().any():
            ax.fill_between(xs, h["sel_lo"].clip(-1, 1), h["sel_hi"].clip(-1, 1), color=c, alpha=0.08, lw=0)
        bad = h["uninformative"].fillna(False).astype(bool)
        if bad.any():
            ax.scatter(xs[bad.to_numpy()], h["selectivity"][bad], marker="x", color=c, s=28,
                       label="control >= flag (uninformative)")


def plot_layers(res, path=None, load=None):
    """Per site (columns): test accuracy against layer (band: 95% CI over seeds; the untrained
    model's probe dotted; majority and surface baselines in gray) above selectivity against each
    control (line style per control kind; x: uninformative), pooled over distances; with a load
    sweep, the largest load unless ``load`` is given."""
    d = res.pooled()
    if d["load"].notna().any():
        d = d[d["load"] == (load if load is not None else d["load"].max())]
    sites = list(dict.fromkeys(d["site"]))
    plt, fig, axes = _fig(2, len(sites), path)
    colour = _colours(res)
    for j, site in enumerate(sites):
        top, bottom = axes[0, j], axes[1, j]
        sub = d[d.site == site]
        for model, g in sub.groupby("model", sort=False):
            c = colour[model]
            first = g[g["control_kind"] == g["control_kind"].iloc[0]]
            _accuracy(top, _gapped(first), c, f"{model} accuracy")
            un = g[g["control_kind"] == "untrained"]
            if len(un):
                h = _gapped(un)
                top.plot(h.index.astype(float), h["control"], ls=":", marker=".", color=c, label=f"{model} untrained")
            _selectivity(bottom, g, model, c)
        _baselines(top, sub)
        title = f"{sub['target'].iloc[0]} from {site}"
        if sub["load"].notna().any():
            title += f" ({res.attrs.get('load_knob', 'load')}={sub['load'].iloc[0]})"
        top.set_title(title, fontsize=10)
        top.set_ylim(-0.05, 1.05)
        bottom.axhline(0, color="black", lw=0.6)
        bottom.set_xlabel("layer")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, 0].set_ylabel("test accuracy")
    axes[1, 0].set_ylabel("selectivity")
    return _done(plt, fig, path)


def plot_distance(res, path=None, layer=None, min_n=20, max_distance=None, bin_width=None):
    """Test accuracy (band: 95% CI over seeds) against distance (steps since the fact was written),
    at each model's layer chosen on val per site (or ``layer``); distances with fewer than ``min_n``
    test points are left out. ``bin_width``: pool distances [0, w), [w, 2w), ... (accuracy
    weighted by test points, plotted at the bin start; no band). With a load sweep, one line per
    (model, load)."""
    d = res._at_layer(layer)
    d = d[d["distance"].notna() & (d["answered"] == "all") & (d["control_kind"] == res.controls()[0])]
    if bin_width:
        d = d.assign(distance=(d["distance"] // bin_width) * bin_width, _w=d["accuracy"] * d["n"])
        keys = ["model", "load", "layer", "site", "target", "distance"]
        d = d.groupby(keys, sort=False, dropna=False).agg(_w=("_w", "sum"), n=("n", "sum")).reset_index()
        d = d.assign(accuracy=d["_w"] / d["n"], acc_lo=np.nan, acc_hi=np.nan)
    d = d[d["n"] >= min_n]
    if max_distance is not None:
        d = d[d["distance"] <= max_distance]
    if d.empty:
        raise InterpError("no distance rows to plot (the target has no distance, or every distance has "
                          f"fewer than min_n={min_n} test points)")
    sites = list(dict.fromkeys(d["site"]))
    plt, fig, axes = _fig(1, len(sites), path)
    colour = _colours(res)
    loads = list(dict.fromkeys(d["load"].dropna()))
    for ax, site in zip(axes[0], sites):
        sub = d[d.site == site]
        for (model, load), g in sub.groupby(["model", "load"], sort=False, dropna=False):
            g = g.sort_values("distance")
            alpha = 1.0 if pd.isna(load) else 0.35 + 0.65 * (loads.index(load) + 1) / len(loads)
            lab = f"{model} (L{g['layer'].iloc[0]})" + ("" if pd.isna(load) else f" {load}")
            x = g["distance"].astype(float)
            ax.plot(x, g["accuracy"], marker=".", color=colour[model], alpha=alpha, label=lab)
            if g["acc_lo"].notna().any():
                ax.fill_between(x, g["acc_lo"].clip(0, 1), g["acc_hi"].clip(0, 1), color=colour[model],
                                alpha=0.15 * alpha, lw=0)
        ax.set_title(f"{sub['target'].iloc[0]} from {site}", fontsize=10)
        ax.set_xlabel("distance (steps since written)")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("test accuracy")
    return _done(plt, fig, path)


def plot_load(res, path=None, layer=None):
    """Pooled test accuracy (band: 95% CI) above selectivity against each control, against the
    swept load, at each model's layer chosen on val per (site, load) (or ``layer``)."""
    d = res._at_layer(layer)
    d = d[d["distance"].isna() & (d["answered"] == "all")]
    if d["load"].isna().all():
        raise InterpError("no load sweep in these results; run with sweep={knob: [values]}")
    sites = list(dict.fromkeys(d["site"]))
    plt, fig, axes = _fig(2, len(sites), path)
    colour = _colours(res)
    for j, site in enumerate(sites):
        sub = d[d.site == site]
        for model, g in sub.groupby("model", sort=False):
            first = g[g["control_kind"] == g["control_kind"].iloc[0]].sort_values("load").set_index("load")
            _accuracy(axes[0, j], first, colour[model], f"{model} accuracy")
            for kind, h in g.groupby("control_kind", sort=False):
                h = h.sort_values("load")
                axes[1, j].plot(h["load"].astype(float), h["selectivity"], ls=STYLE.get(kind, "--"), marker="o", ms=3,
                                color=colour[model], label=f"{model} vs {kind}")
        _baselines(axes[0, j], sub)
        axes[0, j].set_title(f"{sub['target'].iloc[0]} from {site} (layer chosen on val)", fontsize=10)
        axes[1, j].axhline(0, color="black", lw=0.6)
        axes[1, j].set_xlabel(res.attrs.get("load_knob", "load"))
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("test accuracy")
    axes[1, 0].set_ylabel("selectivity")
    return _done(plt, fig, path)
