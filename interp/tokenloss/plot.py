"""The bar figure of a `stratify` summary: one panel per facet, one colour per domain, 95% intervals."""
from __future__ import annotations

import numpy as np
import pandas as pd

from interp import InterpError
from interp.figsave import save_fig
from interp.tokenloss.lexicon import DOMAINS


def plot_summary(summary: pd.DataFrame, names, path=None, title=None, value: str = "diff"):
    """Bars of the mean loss difference per category (one panel per facet, one colour per domain),
    with the 95% intervals; ``value="excess"``: the difference minus the domain's mean difference."""
    if value not in ("diff", "excess"):
        raise InterpError(f"value '{value}' is not valid; valid: diff, excess")
    lo_col, hi_col = ("ci_lo", "ci_hi") if value == "diff" else ("excess_lo", "excess_hi")
    import matplotlib
    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    facets = list(dict.fromkeys(summary["facet"]))
    doms = [d for d in list(DOMAINS) + ["all"] if d in set(summary["domain"])]
    colors = {"prose": "C0", "code": "C1", "markup": "C2", "all": "0.35"}
    fig, axes = plt.subplots(len(facets), 1, figsize=(10, 2.9 * len(facets)), squeeze=False)
    width = 0.8 / max(len(doms), 1)
    for ax, f in zip(axes[:, 0], facets):
        sub = summary[summary.facet == f]
        cats = list(dict.fromkeys(sub["category"]))
        for k, dom in enumerate(doms):
            g = sub[sub.domain == dom].set_index("category").reindex(cats)
            x = np.arange(len(cats)) + (k - (len(doms) - 1) / 2) * width
            err = np.vstack([g[value] - g[lo_col], g[hi_col] - g[value]])
            ax.bar(x, g[value], width, color=colors.get(dom), label=dom,
                   yerr=np.where(np.isnan(err), 0, err), capsize=2, error_kw={"lw": 0.8})
        ax.axhline(0, color="k", lw=0.7)
        ax.set_xticks(range(len(cats)), [f"{c}\n(n={int(sub[(sub.category == c) & (sub.domain == 'all')].n.sum())})"
                                         if "all" in doms else c for c in cats], fontsize=7)
        ax.set_title(f, fontsize=10, loc="left")
        ax.set_ylabel(f"loss({names[0]})\n- loss({names[1]})" + ("\nminus domain mean" if value == "excess" else ""),
                      fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=len(doms), loc="upper right")
    fig.suptitle(title or (f"Per-token loss difference (> 0: {names[1]} better), mean with 95% bootstrap CI"
                           if value == "diff" else f"Loss difference minus the domain's mean difference (> 0: "
                           f"{names[1]}'s advantage larger than average), 95% bootstrap CI"),
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))     # room for a two-line title
    if path is not None:
        save_fig(fig, path, dpi=120)
        plt.close(fig)
    return fig
