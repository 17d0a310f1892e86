"""Probe results: the tidy `ProbeResult` table (one row per model, load, layer, site, target,
distance), the seed aggregation that builds it (`aggregate`) and its plots."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from interp import InterpError
from interp.stats import t975

KEYS = ["model", "load", "layer", "site", "target", "distance"]


def aggregate(per_seed: pd.DataFrame) -> "ProbeResult":
    """Mean over seeds per (model, load, layer, site, target, distance) and 95% t-intervals
    (NaN with one seed); ``n`` sums test points over seeds, ``seeds`` counts them."""
    g = per_seed.groupby(KEYS, sort=False, dropna=False)
    out = g[["accuracy", "control", "selectivity", "majority", "surface", "n_train"]].mean()
    out["n"] = g["n"].sum()
    out["seeds"] = g["seed"].nunique()
    for col, pre in (("accuracy", "acc"), ("selectivity", "sel")):
        sd, k = g[col].std(ddof=1), out["seeds"]
        half = np.array([t975(int(s) - 1) if s > 1 else np.nan for s in k]) * sd / np.sqrt(k)
        out[f"{pre}_lo"], out[f"{pre}_hi"] = out[col] - half, out[col] + half
    out = out.reset_index()
    cols = KEYS + ["accuracy", "acc_lo", "acc_hi", "control", "selectivity", "sel_lo", "sel_hi", "majority",
                   "surface", "n", "n_train", "seeds"]
    res = ProbeResult(out[cols])
    res["distance"] = res["distance"].astype("Int64")
    return res


class ProbeResult(pd.DataFrame):
    """Tidy results, one row per (model, load, layer, site, target, distance): ``distance`` <NA>
    pools all distances, an integer d holds the test points written d steps before; ``load`` is
    the swept knob's value (<NA> without a sweep; the knob is ``attrs['load_knob']``).
    Columns: accuracy (acc_lo, acc_hi), control, selectivity (sel_lo, sel_hi), majority, surface,
    n (test points, summed over seeds), n_train, seeds."""

    _metadata = []

    @property
    def _constructor(self):
        return ProbeResult

    def pooled(self) -> "ProbeResult":
        return self[self["distance"].isna()]

    def save(self, out, name="probes"):
        """Write ``name``.csv and ``name``.parquet under ``out``; returns the paths."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        df = pd.DataFrame(self)
        df["load"] = df["load"].astype(str).where(df["load"].notna(), None) if df["load"].dtype == object \
            else df["load"]
        df.to_csv(out / f"{name}.csv", index=False)
        df.to_parquet(out / f"{name}.parquet", index=False)
        return out / f"{name}.csv", out / f"{name}.parquet"

    # -- plots --------------------------------------------------------------------------------
    def _fig(self, n_panels, path, width=4.6):
        import matplotlib
        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, n_panels, figsize=(width * n_panels, 3.5), squeeze=False)
        return plt, fig, axes[0]

    def _done(self, plt, fig, path):
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
            plt.close(fig)
        return fig

    def _colours(self):
        return {m: f"C{i}" for i, m in enumerate(dict.fromkeys(self["model"]))}

    def plot(self, path=None, load=None):
        """Layer-wise curve: accuracy (solid, band = 95% CI over seeds) and selectivity (dashed)
        against layer, one colour per model, one panel per site; pooled over distances; with a
        load sweep, the largest load unless ``load`` is given."""
        d = self.pooled()
        if d["load"].notna().any():
            d = d[d["load"] == (load if load is not None else d["load"].max())]
        sites = list(dict.fromkeys(d["site"]))
        plt, fig, axes = self._fig(len(sites), path)
        colour = self._colours()
        lo = min(-0.05, float(d["selectivity"].min()) - 0.05)
        for ax, site in zip(axes, sites):
            sub = d[d.site == site]
            for model, g in sub.groupby("model", sort=False):
                c = colour[model]
                ax.plot(g["layer"], g["accuracy"], marker="o", color=c, label=f"{model} accuracy")
                if g["acc_lo"].notna().any():
                    ax.fill_between(g["layer"], g["acc_lo"].clip(0, 1), g["acc_hi"].clip(0, 1), color=c, alpha=0.2,
                                    lw=0)
                    ax.fill_between(g["layer"], g["sel_lo"].clip(-1, 1), g["sel_hi"].clip(-1, 1), color=c, alpha=0.1,
                                    lw=0)
                ax.plot(g["layer"], g["selectivity"], ls="--", color=c, label=f"{model} selectivity")
            ax.axhline(sub["majority"].max(), color="gray", lw=0.8, ls=":", label="majority")
            title = f"{sub['target'].iloc[0]} from {site}"
            if sub["load"].notna().any():
                title += f" ({self.attrs.get('load_knob', 'load')}={sub['load'].iloc[0]})"
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("layer")
            ax.set_ylim(lo, 1.05)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("test accuracy")
        axes[0].legend(fontsize=7)
        return self._done(plt, fig, path)

    def best_layers(self, by="accuracy") -> pd.DataFrame:
        """(model, site, load) -> the layer with the highest pooled ``by``."""
        d = self.pooled()
        idx = d.groupby(["model", "site", "load"], sort=False, dropna=False)[by].idxmax()
        return d.loc[idx, ["model", "site", "load", "layer", by]].reset_index(drop=True)

    def _at_layer(self, layer):
        if layer is None:
            best = self.best_layers()
            key = best.set_index(["model", "site", "load"])["layer"]
            keep = [key.get((m, s, ld), None) == la for m, s, ld, la in
                    zip(self["model"], self["site"], self["load"], self["layer"])]
            return self[keep]
        return self[self["layer"] == layer]

    def plot_distance(self, path=None, layer=None, min_n=20, max_distance=None, bin_width=None):
        """Accuracy (band: 95% CI over seeds) against distance (steps since the fact was
        written), at each model's best layer per site (or ``layer``); distances with fewer than
        ``min_n`` test points are left out. ``bin_width``: pool distances [0, w), [w, 2w), ...
        (accuracy weighted by test points, plotted at the bin start; no band). With a load sweep,
        one line per (model, load)."""
        d = self._at_layer(layer)
        d = d[d["distance"].notna()]
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
        plt, fig, axes = self._fig(len(sites), path)
        colour = self._colours()
        loads = list(dict.fromkeys(d["load"].dropna()))
        for ax, site in zip(axes, sites):
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
            ax.legend(fontsize=7)
        axes[0].set_ylabel("test accuracy")
        return self._done(plt, fig, path)

    def plot_load(self, path=None, layer=None):
        """Pooled accuracy (band: 95% CI) and selectivity (dashed) against the swept load, at each
        model's best layer per (site, load) (or ``layer``)."""
        d = self._at_layer(layer).pooled()
        if d["load"].isna().all():
            raise InterpError("no load sweep in these results; run with sweep={knob: [values]}")
        sites = list(dict.fromkeys(d["site"]))
        plt, fig, axes = self._fig(len(sites), path)
        colour = self._colours()
        for ax, site in zip(axes, sites):
            sub = d[d.site == site]
            for model, g in sub.groupby("model", sort=False):
                g = g.sort_values("load")
                c = colour[model]
                ax.plot(g["load"], g["accuracy"], marker="o", color=c, label=f"{model} accuracy")
                if g["acc_lo"].notna().any():
                    ax.fill_between(g["load"].astype(float), g["acc_lo"].clip(0, 1), g["acc_hi"].clip(0, 1), color=c,
                                    alpha=0.2, lw=0)
                ax.plot(g["load"], g["selectivity"], ls="--", color=c, label=f"{model} selectivity")
            ax.set_title(f"{sub['target'].iloc[0]} from {site} (best layer)", fontsize=10)
            ax.set_xlabel(self.attrs.get("load_knob", "load"))
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("test accuracy")
        axes[0].legend(fontsize=7)
        return self._done(plt, fig, path)

