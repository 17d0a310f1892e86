"""Intervention results: the tidy `InterventionResult` table (one row per site, subspace, split and
seed), its summary over seeds, plots and files; `DASResult` adds the learned subspace and the
training history."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from interp.stats import MIN_SEEDS, seed_interval, warn_few_seeds
from interp.figsave import save_fig

COLUMNS = ["model", "task", "site", "layer", "head", "side", "positions", "subspace", "rank", "split", "seed",
           "iia", "n", "n_total"]
SPLITS = ("train", "val", "test", "all")


class InterventionResult(pd.DataFrame):
    """One row per (site, subspace, split, seed): ``subspace`` names what was interchanged (``full``:
    the whole site; ``random``: a random subspace, one row per seed; ``das``: the learned one;
    ``given``/a label: a basis passed in; ``write_key``: the rank-1 state form), ``rank`` its
    dimension, ``split`` which pairs (train/val/test for DAS, all otherwise), ``iia`` the interchange
    intervention accuracy over ``n`` ordered pairs the model answers correctly on both prompts out of
    ``n_total`` in that split; head -1 = all heads, seed -1 = not random. ``attrs['spec']``: settings."""

    _metadata = []

    @property
    def _constructor(self):
        return InterventionResult

    def summary(self) -> pd.DataFrame:
        """Mean IIA over seeds per (model, site, subspace, rank, split) with a 95% t-interval over
        seeds (NaN with one seed), clipped to [0, 1]; ``few_seeds``: fewer than 3 seeds (warned once)."""
        keys = ["model", "task", "site", "subspace", "rank", "split"]
        rows = []
        for k, g in pd.DataFrame(self).groupby(keys, sort=False, dropna=False):
            m, lo, hi = seed_interval(g["iia"], bounds=(0, 1))
            rows.append(dict(zip(keys, k), iia=m, iia_lo=lo, iia_hi=hi, seeds=len(g), few_seeds=len(g) < MIN_SEEDS,
                             n=int(g["n"].iloc[0]), n_total=int(g["n_total"].iloc[0])))
        out = pd.DataFrame(rows)
        if len(out):
            warn_few_seeds(out.seeds, "intervention IIA (iia_lo/iia_hi; column few_seeds)", stacklevel=3)
        return out

    def save(self, out, name: str, plot: bool = True):
        """Write ``name``.csv, .parquet (and .png) under ``out``; returns the paths written."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        df = pd.DataFrame(self)
        from interp.store import save_csv, save_parquet
        paths = [save_csv(out / f"{name}.csv", df, index=False), save_parquet(out / f"{name}.parquet", df)]
        if plot:
            paths.append(out / f"{name}.png")
            self.plot(paths[-1])
        return paths

    def plot(self, path=None, title=None):
        """Bars: IIA per site and subspace (mean over seeds, 95% interval over seeds as error bars),
        one colour per split (legend: kept pairs), the value on each bar; splits not evaluated for a
        subspace are left out."""
        import matplotlib
        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        s = self.summary()
        s["what"] = s["site"] + "\n" + s["subspace"] + " (r=" + s["rank"].astype(str) + ")"
        groups = list(dict.fromkeys(s["what"]))
        splits = [sp for sp in SPLITS if sp in set(s["split"])]
        fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(groups) + 1.5), 3.6))
        w = 0.8 / max(1, len(splits))
        for j, sp in enumerate(splits):
            d = s[s["split"] == sp].set_index("what").reindex(groups)
            have = d["iia"].notna().to_numpy()
            x = [i + (j - (len(splits) - 1) / 2) * w for i in range(len(groups))]
            x, d = [xi for xi, h in zip(x, have) if h], d[have]
            err = [(d["iia"] - d["iia_lo"]).fillna(0).clip(lower=0), (d["iia_hi"] - d["iia"]).fillna(0).clip(lower=0)]
            ax.bar(x, d["iia"], w, yerr=err, capsize=3, color=f"C{SPLITS.index(sp)}",
                   label=f"{sp} (n={int(d['n'].max())})" if len(d) else sp)
            for xi, v in zip(x, d["iia"]):
                ax.text(xi, v + 0.02, f"{v:.2f}", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(groups)), groups, fontsize=7)
        ax.set_ylim(0, 1.12)
        ax.set_ylabel("interchange intervention accuracy")
        models = ", ".join(dict.fromkeys(self["model"]))
        tasks = ", ".join(dict.fromkeys(self["task"].astype(str)))
        ax.set_title(title or f"{models} on {tasks}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        if path is not None:
            save_fig(fig, path, dpi=110)
            plt.close(fig)
        return fig


class DASResult(InterventionResult):
    """`InterventionResult` of a DAS run: rows ``das`` (train/val/test), ``random`` (test, one per
    seed) and ``full`` (test). ``R``: the learned subspace [rank, width] (orthonormal rows);
    ``attrs['spec']``: settings, seeds and the pair indices of each split; ``attrs['history']``: per
    epoch train loss, val loss and val IIA."""

    _metadata = ["R"]

    @property
    def _constructor(self):
        return DASResult

    def save(self, out, name: str, plot: bool = True):
        """Also writes ``name``.safetensors (R; site, head, side, width, rank and any model_digest of the spec in
        its metadata) and ``name``.spec.json (`store.save_subspace`)."""
        from interp.interventions.store import check_finite, save_subspace
        check_finite(self.R)                 # before any file: a diverged R is not saved
        paths = super().save(out, name, plot=plot)
        spec = {**self.attrs.get("spec", {}), "history": self.attrs.get("history", [])}
        return paths + list(save_subspace(self.R, spec, Path(out) / name))

    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self.attrs.get("history", []))
