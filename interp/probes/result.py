"""Probe results: the tidy `ProbeResult` table (one row per model, load, layer, site, target, answered,
control kind, distance), the seed aggregation that builds it (`aggregate`, `aggregate_causal`), its
wide views (`wide`, `best_layers`: the layer chosen on val, reported on test) and its files; the plots
are in `interp.probes.plots`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from interp.probes.controls import FLAG_AT, uninformative
from interp.stats import clip_interval, few_seeds, seed_interval, t975, warn_few_seeds

KEYS = ["model", "load", "layer", "site", "target", "answered", "control_kind", "distance"]
MEANS = ["accuracy", "val_accuracy", "control", "selectivity", "majority", "surface", "n_train"]
COLUMNS = KEYS + ["accuracy", "acc_lo", "acc_hi", "val_accuracy", "control", "selectivity", "sel_lo", "sel_hi",
                  "uninformative", "majority", "surface", "n", "n_val", "n_train", "seeds", "few_seeds"]
CAUSAL = ["iia", "iia_lo", "iia_hi", "iia_random", "iia_full", "n_iia", "n_pairs", "causal_rank", "causal_site"]
UNIT = ["model", "load", "layer", "site"]
BOUNDS = {"acc": (0.0, 1.0), "sel": (-1.0, 1.0)}   # what an accuracy and a difference of two can be


def aggregate(per_seed: pd.DataFrame, flag_at: float = FLAG_AT) -> "ProbeResult":
    """Mean over seeds per `KEYS` and 95% t-intervals (NaN with one seed), clipped to what the
    number can be (accuracy [0, 1], selectivity [-1, 1]); ``n`` and ``n_val`` sum points over
    seeds, ``seeds`` counts them, ``few_seeds`` flags fewer than 3 (a warning names the count
    where 2 seeds gave intervals); ``uninformative``: the mean control >= ``flag_at``."""
    g = per_seed.groupby(KEYS, sort=False, dropna=False)
    out = g[MEANS].mean()
    out["n"], out["n_val"] = g["n"].sum(), g["n_val"].sum()
    out["seeds"] = g["seed"].nunique()
    out["few_seeds"] = few_seeds(out["seeds"])
    warn_few_seeds(out["seeds"], "probe accuracy and selectivity (acc_lo/acc_hi, sel_lo/sel_hi; column few_seeds)")
    for col, pre in (("accuracy", "acc"), ("selectivity", "sel")):
        sd, k = g[col].std(ddof=1), out["seeds"]
        half = np.array([t975(int(s) - 1) if s > 1 else np.nan for s in k]) * sd / np.sqrt(k)
        out[f"{pre}_lo"], out[f"{pre}_hi"] = clip_interval(out[col] - half, out[col] + half, BOUNDS[pre])
    out["uninformative"] = uninformative(out["control"], flag_at)
    res = ProbeResult(out.reset_index()[COLUMNS])
    res["distance"] = res["distance"].astype("Int64")
    return res


def aggregate_causal(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Causal-check rows (one per model, load, layer, site, seed) -> mean IIA with a 95% t-interval
    over seeds (clipped to [0, 1]), mean random and full IIA, kept and drawn pairs summed over seeds."""
    rows = []
    for k, g in per_seed.groupby(UNIT, sort=False, dropna=False):
        m, lo, hi = seed_interval(g["iia"], bounds=BOUNDS["acc"])
        rows.append(dict(zip(UNIT, k), iia=m, iia_lo=lo, iia_hi=hi, iia_random=g["iia_random"].mean(),
                         iia_full=g["iia_full"].mean(), n_iia=int(g["n_iia"].sum()), n_pairs=int(g["n_pairs"].sum()),
                         causal_rank=int(g["rank"].max()), causal_site=g["causal_site"].iloc[0]))
    return pd.DataFrame(rows, columns=UNIT + CAUSAL)


def attach_causal(res: pd.DataFrame, causal: pd.DataFrame) -> pd.DataFrame:
    """``res`` with the `CAUSAL` columns filled on its pooled rows (answered 'all', no distance) of
    each (model, load, layer, site) in ``causal`` (with a ``seed`` column: per seed), NaN elsewhere."""
    res = res.copy()
    keys = UNIT + (["seed"] if "seed" in causal and "seed" in res else [])
    look = dict(zip(_keys(causal, keys), (r for _, r in causal.iterrows())))
    pooled = (res["answered"] == "all") & res["distance"].isna()
    hit = [look.get(k) if p else None for k, p in zip(_keys(res, keys), pooled)]
    for c in CAUSAL:
        src = "rank" if c == "causal_rank" and c not in causal else c
        vals = [np.nan if h is None or src not in h else h[src] for h in hit]
        res[c] = pd.Series(vals, index=res.index, dtype=object if c == "causal_site" else float)
    return res


def _keys(df, cols) -> list:
    """Row keys over ``cols`` as tuples of strings (so that <NA> loads match)."""
    return [tuple(str(v) for v in r) for r in df[cols].itertuples(index=False)]


class ProbeResult(pd.DataFrame):
    """Tidy results, one row per (model, load, layer, site, target, answered, control_kind,
    distance): ``distance`` <NA> pools all distances, an integer d holds the test points written d
    steps before; ``answered`` 'all', or pooled over the examples the model answered 'correct'ly /
    'wrong'ly; ``control_kind`` the control of ``control`` / ``selectivity`` (the probe's own
    columns repeat across kinds); ``load`` the swept knob's value (<NA> without a sweep; the knob is
    ``attrs['load_knob']``). Columns: accuracy (test; acc_lo, acc_hi), val_accuracy, control,
    selectivity (sel_lo, sel_hi), uninformative, majority, surface, n (test points, summed over
    seeds), n_val, n_train, seeds, few_seeds (fewer than 3 seeds: intervals unreliable or absent);
    with the causal check, on the pooled rows of the checked layers: iia (iia_lo, iia_hi),
    iia_random, iia_full, n_iia, n_pairs, causal_rank, causal_site."""

    _metadata = []

    @property
    def _constructor(self):
        return ProbeResult

    def controls(self) -> list:
        return list(dict.fromkeys(self["control_kind"]))

    def pooled(self) -> "ProbeResult":
        """Rows pooled over distances and over all examples (answered 'all')."""
        return self[self["distance"].isna() & (self["answered"] == "all")]

    def by_answered(self) -> pd.DataFrame:
        """Pooled accuracy over all examples and split by whether the model answered them correctly
        (one row per model, load, layer, site; columns acc_<answered>, n_<answered>)."""
        d = pd.DataFrame(self[self["distance"].isna() & (self["control_kind"] == self.controls()[0])])
        out = d[d["answered"] == "all"][UNIT].reset_index(drop=True)
        key = _keys(out, UNIT)
        for a in dict.fromkeys(d["answered"]):
            sub = d[d["answered"] == a]
            sub.index = _keys(sub, UNIT)
            out[f"acc_{a}"] = [sub["accuracy"].get(x, np.nan) for x in key]
            out[f"n_{a}"] = [sub["n"].get(x, 0) for x in key]
        return out

    def wide(self) -> pd.DataFrame:
        """The pooled rows, one per (model, load, layer, site, target): the probe's columns, then per
        control kind control_<kind>, sel_<kind> (sel_<kind>_lo/_hi) and flag_<kind> (uninformative),
        acc_correct / acc_wrong where known, and the causal columns where present."""
        d = pd.DataFrame(self.pooled())
        kinds = self.controls()
        own = [c for c in COLUMNS if c not in KEYS and c not in ("control", "selectivity", "sel_lo", "sel_hi",
                                                                 "uninformative")]
        out = d[d["control_kind"] == kinds[0]][UNIT + ["target"] + own + [c for c in CAUSAL if c in d]]
        out = out.reset_index(drop=True)
        key = _keys(out, UNIT)
        for k in kinds:
            sub = d[d["control_kind"] == k]
            sub.index = _keys(sub, UNIT)
            for c, name in (("control", f"control_{k}"), ("selectivity", f"sel_{k}"), ("sel_lo", f"sel_{k}_lo"),
                            ("sel_hi", f"sel_{k}_hi"), ("uninformative", f"flag_{k}")):
                out[name] = [sub[c].get(x, np.nan) for x in key]
        if (self["answered"] != "all").any():
            ba = self.by_answered()
            ba.index = _keys(ba, UNIT)
            for c in ("acc_correct", "acc_wrong", "n_correct", "n_wrong"):
                out[c] = [ba[c].get(x, np.nan) if c in ba else np.nan for x in key]
        return out

    def best_layers(self, by="val_accuracy") -> pd.DataFrame:
        """(model, site, load) -> the row of `wide` at the layer with the highest pooled ``by``
        (default: the validation accuracy; then ``accuracy`` is an unbiased test estimate)."""
        d = self.wide()
        by = f"sel_{self.controls()[0]}" if by == "selectivity" else by
        idx = d.groupby(["model", "site", "load"], sort=False, dropna=False)[by].idxmax().dropna()
        return d.loc[idx].reset_index(drop=True)

    def _at_layer(self, layer):
        if layer is None:
            best = self.best_layers()
            key = {(m, s, str(ld)): la for m, s, ld, la in zip(best["model"], best["site"], best["load"], best["layer"])}
            keep = [key.get((m, s, str(ld)), None) == la for m, s, ld, la in
                    zip(self["model"], self["site"], self["load"], self["layer"])]
            return self[keep]
        return self[self["layer"] == layer]

    def save(self, out, name="probes"):
        """Write ``name``.csv and ``name``.parquet under ``out`` (each atomically); returns the paths."""
        from interp.store import save_csv, save_parquet
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        df = pd.DataFrame(self)
        df["load"] = df["load"].astype(str).where(df["load"].notna(), None) if df["load"].dtype == object \
            else df["load"]
        return save_csv(out / f"{name}.csv", df, index=False), save_parquet(out / f"{name}.parquet", df.reset_index(drop=True))

    def plot(self, path=None, load=None):
        """Accuracy and selectivity against layer (`interp.probes.plots.plot_layers`)."""
        from interp.probes.plots import plot_layers
        return plot_layers(self, path, load)

    def plot_distance(self, path=None, layer=None, min_n=20, max_distance=None, bin_width=None):
        """Accuracy against distance (`interp.probes.plots.plot_distance`)."""
        from interp.probes.plots import plot_distance
        return plot_distance(self, path, layer, min_n, max_distance, bin_width)

    def plot_load(self, path=None, layer=None):
        """Accuracy and selectivity against the swept load (`interp.probes.plots.plot_load`)."""
        from interp.probes.plots import plot_load
        return plot_load(self, path, layer)
