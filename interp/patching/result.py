"""The result frame of a sweep or attribution screen: `PatchResult` (ranked, plot) and building it
from summed unit metrics and baselines."""
from __future__ import annotations

import numpy as np
import pandas as pd

from interp import InterpError
from interp.patching.sites import METRICS, _check_choice, layer_kind


class PatchResult(pd.DataFrame):
    """One row per patched cell: model, task, direction, site, layer, layer_kind, position (-1 =
    all), head (-1 = all), logit_diff, prob, kl, raw_logit_diff, n. ``attrs['baselines']`` holds the
    clean and corrupted runs' metrics. ``.plot()`` draws a heatmap (layer x position, or site x
    position for one layer), attention layers marked; ``.ranked()`` sorts cells by effect."""

    _metadata = ["attrs"]

    @property
    def _constructor(self):
        return PatchResult

    def ranked(self, metric="logit_diff", k=20) -> pd.DataFrame:
        _check_choice("metric", metric, METRICS)
        key = (self[metric] - (0.0 if metric == "logit_diff" else self.attrs.get("baselines", {}).get(
            f"corrupted_{metric}", 0.0))).abs()
        cols = ["site", "layer", "layer_kind", "position", "token", "head", metric]
        cols = [c for c in cols if c in self.columns]
        return pd.DataFrame(self.loc[key.sort_values(ascending=False).index[:k], cols]).reset_index(drop=True)

    def plot(self, path=None, metric="logit_diff", title=None):
        import matplotlib
        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        _check_choice("metric", metric, METRICS)
        df = self[self.position >= 0]
        if df.empty:
            raise InterpError("nothing to plot: no per-position cells (plot needs position >= 0)")
        panels = list(dict.fromkeys(zip(df.model, df.direction)))
        one_layer = df.layer.nunique() == 1
        fig, axes = plt.subplots(len(panels), 1, squeeze=False,
                                 figsize=(min(18, 3 + 0.32 * df.position.nunique()), 1.2 + 0.45 * len(panels)
                                          * max(4, df.layer.nunique() if not one_layer else df.site.nunique())))
        for ax, (model, direction) in zip(axes[:, 0], panels):
            sub = df[(df.model == model) & (df.direction == direction)]
            if one_layer:
                rows = list(dict.fromkeys(sub.site + sub["head"].map(lambda h: "" if h < 0 else f"[h{h}]")))
                key = sub.site + sub["head"].map(lambda h: "" if h < 0 else f"[h{h}]")
                labels = rows
                kinds = {}
            else:
                key = sub.site + sub.layer.map(lambda i: f"|{i:03d}") + sub["head"].map(lambda h: "" if h < 0 else f"[h{h}]")
                rows = sorted(set(key))
                kinds = dict(zip(key, sub.layer_kind))
                lay = dict(zip(key, sub.layer))
                labels = [f"L{lay[r]} {kinds[r]}" + (f" {r.split('|')[0]}" if sub.site.nunique() > 1 else "")
                          + (r[r.index('['):] if '[' in r else "") for r in rows]
            pos = sorted(sub.position.unique())
            grid = np.full((len(rows), len(pos)), np.nan)
            ri, pi = {r: i for i, r in enumerate(rows)}, {p: i for i, p in enumerate(pos)}
            for r, p, v in zip(key, sub.position, sub[metric]):
                grid[ri[r], pi[p]] = v
            vmax = np.nanmax(np.abs(grid)) if metric == "logit_diff" else None
            im = ax.imshow(grid, aspect="auto", cmap="RdBu_r" if metric == "logit_diff" else "viridis",
                           vmin=-vmax if vmax else None, vmax=vmax, interpolation="nearest")
            ax.set_yticks(range(len(rows)), labels, fontsize=7)
            for t, r in zip(ax.get_yticklabels(), rows):
                if kinds.get(r, "").startswith("attn"):
                    t.set_color("C3")
                    t.set_fontweight("bold")
            toks = dict(zip(sub.position, sub["token"])) if "token" in sub else {}
            ax.set_xticks(range(len(pos)), [f"{toks.get(p, '')} {p}" for p in pos], rotation=90, fontsize=6)
            lyr = f" layer {sub.layer.iloc[0]} ({sub.layer_kind.iloc[0]})" if one_layer else ""
            ax.set_title(title or f"{model}: {direction} {metric}{lyr} (attention layers in red)", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.02)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
            plt.close(fig)
        return fig


def _assemble(units, base, hm, pairs, model_name, direction, _):
    g = units.groupby(["site", "layer", "position", "head"], sort=False)[["ld", "prob", "kl", "n"]].sum().reset_index()
    n = base["n"]
    ld_clean, ld_corr = base["clean_ld"] / n, base["corrupted_ld"] / n
    denom = ld_clean - ld_corr
    if abs(denom) < 1e-6:
        raise InterpError(f"clean and corrupted runs have the same mean logit difference ({ld_clean:.4f}): "
                          "the model does not tell the pair apart, so normalised effects are undefined")
    from interp.tasks import VOCAB
    tok0 = pairs.clean[0].tolist()
    res = PatchResult(dict(
        model=model_name, task=pairs.meta.get("task", ""), direction=direction, site=g.site,
        layer=g.layer.astype(int), layer_kind=[layer_kind(hm.layers[i]) for i in g.layer],
        position=g.position.astype(int), token=[VOCAB.decode([tok0[p]])[0] if p >= 0 and _is_zoo_vocab(hm) else ""
                                                for p in g.position],
        head=g["head"].astype(int), logit_diff=(g.ld / g.n - ld_corr) / denom, prob=g.prob / g.n,
        kl=g.kl / g.n, raw_logit_diff=g.ld / g.n, n=g.n.astype(int)))
    res.attrs["baselines"] = {"clean_logit_diff": ld_clean, "corrupted_logit_diff": ld_corr,
                              "clean_prob": base["clean_prob"] / n, "corrupted_prob": base["corrupted_prob"] / n,
                              "corrupted_kl": base["corrupted_kl"] / n, "n": int(n)}
    return res


def _is_zoo_vocab(hm):
    return hm.adapter.family == "zoo"
