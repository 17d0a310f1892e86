"""The result frame of a sweep or attribution screen: `PatchResult` (ranked, side by side, plot,
save, summaries by position class, paired differences) and building it from assembled columns."""
from __future__ import annotations

import numpy as np
import pandas as pd

from interp import InterpError
from interp.patching import evidence
from interp.patching.evidence import KEYS
from interp.patching.sites import METRICS, _check_choice, layer_kind

COLUMNS = ["model", "task", "direction", "site", "layer", "layer_kind", "position", "token", "head", "logit_diff",
           "prob", "kl", "raw_logit_diff", "n", "logit_diff_lo", "logit_diff_hi", "prob_lo", "prob_hi", "kl_lo",
           "kl_hi", "position_class", "class_share", "trivial"]


class PatchResult(pd.DataFrame):
    """One row per patched cell and direction: model, task, direction ('denoise' / 'noise'), site,
    layer, layer_kind, position (-1 = all; padded pairs: each pair's p-th real token), token (of the
    first kept pair), head (-1 = all), logit_diff, prob, kl, raw_logit_diff, n (pairs; padded pairs:
    those that have the position), ``<metric>_lo`` / ``_hi`` (95% bootstrap interval over pairs),
    position_class (the role most pairs give the position, see
    `interp.patching.classes`), class_share (the share of pairs that do) and trivial (the patch is
    trivial for every pair, or the pairs it is trivial for carry most of its effect). ``attrs['baselines']`` holds the clean and corrupted runs' metrics,
    ``attrs['pairs']`` how many pairs were kept; ``pair_data`` the kept pairs' per-pair values
    (for `summary`, `paths` and `difference`)."""

    _metadata = ["attrs", "pair_data"]

    @property
    def _constructor(self):
        return PatchResult

    def effect(self, metric="logit_diff") -> pd.Series:
        """How far each cell moves ``metric`` from its unpatched run: denoising from the corrupted
        run (logit_diff 0), noising from the clean run (logit_diff 1); absolute values."""
        _check_choice("metric", metric, METRICS)
        b = self.attrs.get("baselines", {})
        ref = {"denoise": 0.0 if metric == "logit_diff" else b.get(f"corrupted_{metric}", 0.0),
               "noise": 1.0 if metric == "logit_diff" else b.get(f"clean_{metric}", 0.0),
               "attribution": 0.0}
        return (self[metric] - self.direction.map(ref).fillna(0.0).astype(float)).abs()

    def ranked(self, metric="logit_diff", k=20, exclude_trivial=True) -> pd.DataFrame:
        """The ``k`` cells with the largest effect (`effect`); with both directions one row per cell
        with the denoising and noising values side by side, ranked by the larger effect.
        ``exclude_trivial``: leave out trivial cells (``res[res.trivial]`` holds them, to report
        apart)."""
        _check_choice("metric", metric, METRICS)
        drop = exclude_trivial and "trivial" in self
        if self.direction.nunique() > 1:
            wide = self.side_by_side(metric)
            order = wide["_effect"].sort_values(ascending=False).index
            order = [i for i in order if not (drop and wide.at[i, "_trivial"])][:k]
            return wide.loc[order].drop(columns=["_effect", "_trivial"]).reset_index(drop=True)
        # sorted before trivial cells are dropped: ties keep the order of the whole frame
        order = self.effect(metric).sort_values(ascending=False).index
        order = [i for i in order if not (drop and self.at[i, "trivial"])][:k]
        cols = ["site", "layer", "layer_kind", "position", "token", "head", metric, f"{metric}_lo", f"{metric}_hi",
                "position_class"]
        cols = [c for c in cols if c in self.columns]
        return pd.DataFrame(self.loc[order, cols]).reset_index(drop=True)

    def side_by_side(self, metric="logit_diff") -> pd.DataFrame:
        """One row per cell, each direction's ``metric`` and interval in its own columns
        (``denoise``, ``denoise_lo``, ``denoise_hi``, ``noise``, ...); ``_effect``: the larger effect,
        ``_trivial``: trivial in every direction."""
        cell = [c for c in ["site", "layer", "layer_kind", "position", "token", "head", "position_class"]
                if c in self.columns]
        out, eff = None, []
        for d in dict.fromkeys(self.direction):
            sub = self[self.direction == d]
            part = pd.DataFrame(sub[cell]).reset_index(drop=True)
            part[d] = sub[metric].to_numpy()
            for s in ("lo", "hi"):
                if f"{metric}_{s}" in sub:
                    part[f"{d}_{s}"] = sub[f"{metric}_{s}"].to_numpy()
            part[f"_e_{d}"] = sub.effect(metric).to_numpy()
            part[f"_t_{d}"] = sub.trivial.to_numpy() if "trivial" in sub else False
            eff.append(d)
            out = part if out is None else out.merge(part, on=cell, how="outer", sort=False)
        out["_effect"] = out[[f"_e_{d}" for d in eff]].max(axis=1)
        out["_trivial"] = out[[f"_t_{d}" for d in eff]].fillna(True).all(axis=1)
        return out.drop(columns=[f"_{x}_{d}" for d in eff for x in "et"])

    def plot(self, path=None, metric="logit_diff", title=None):
        """Heatmaps (layer x position, or site x position for one layer), one panel per direction
        side by side; cells whose 95% interval includes no effect are hatched; positions labelled
        with their token and role; attention layers in red."""
        from interp.patching.plot import plot_result
        return plot_result(self, path, metric, title)

    def save(self, out, name: str, metric="logit_diff") -> list:
        """Write ``<out>/<name>.csv``, ``.parquet``, ``.png`` (the heatmap) and ``.json`` (baselines,
        pairs kept, the paths found), each atomically. Returns the paths."""
        from pathlib import Path
        from interp.store import atomic_write_json, save_csv, save_parquet
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(self).reset_index(drop=True)
        paths = [save_csv(out / f"{name}.csv", frame, index=False), save_parquet(out / f"{name}.parquet", frame)]
        if (self.position >= 0).any():
            paths.append(out / f"{name}.png")
            self.plot(paths[-1], metric=metric)
        info = {k: v for k, v in self.attrs.items() if k in ("baselines", "pairs")}
        if getattr(self, "pair_data", None) is not None and (self.position >= 0).any():
            info["paths"] = self.describe_paths()
        paths.append(atomic_write_json(out / f"{name}.json", info))
        return paths

    # --- evidence by position class (interp.patching.evidence) ---------------------------------
    def summary(self, exclude_trivial=True) -> pd.DataFrame:
        """Per direction x site x layer (x head) x position class: the best role-aligned slot's
        normalised logit diff with its 95% interval (see `interp.patching.evidence.summary`)."""
        return evidence.summary(self, exclude_trivial=exclude_trivial)

    def paths(self, threshold=0.3) -> pd.DataFrame:
        """The non-trivial summary entries with an effect >= ``threshold`` whose interval excludes
        no effect, in path order (changed -> write -> between -> query)."""
        return evidence.paths(self, threshold=threshold)

    def describe_paths(self, threshold=0.3, per_step=3) -> list:
        """`paths` in words, one line per direction."""
        return evidence.describe_paths(self, threshold=threshold, per_step=per_step)

    def difference(self, a: dict, b: dict) -> dict:
        """Normalised logit diff of cell ``a`` minus cell ``b`` (dicts of direction, site, layer,
        position, head; missing keys: direction the only one, head -1) with a paired 95% bootstrap
        interval over the same pairs."""
        return evidence.difference(self, a, b)


def build_result(plan, frames, stats, baselines, info, pair_data, first: int) -> PatchResult:
    """The PatchResult of a sweep from the per-unit cell frames, the cell statistics
    (`interp.patching.assemble.cell_stats`), the baselines, the pair counts and the per-pair data;
    tokens are read from pair ``first`` (the first kept one)."""
    from interp.patching.classes import real_tokens
    from interp.tasks import VOCAB
    hm, pairs = plan.hm, plan.pairs
    df = pd.concat([pd.DataFrame(f) for f in frames], ignore_index=True)
    clean, _, _, length = real_tokens(pairs)   # positions count a padded pair's real tokens
    tok0 = clean[first].tolist()
    zoo = _is_zoo_vocab(hm)
    df["model"], df["task"] = plan.model_name, (pairs.meta or {}).get("task", "")
    df["layer_kind"] = [layer_kind(hm.layers[i]) for i in df.layer]
    df["token"] = [VOCAB.decode([tok0[p]])[0] if 0 <= p < length[first] and zoo else "" for p in df.position]
    for k, v in stats.items():
        df[k] = v
    if "n" not in stats:   # (padded pairs: per cell, the pairs that have its position)
        df["n"] = int(baselines["n"])
    df["layer"], df["position"], df["head"] = (df[c].astype(int) for c in ("layer", "position", "head"))
    res = PatchResult(df[COLUMNS])
    res.attrs["baselines"] = baselines
    res.attrs["pairs"] = info
    pair_data["index"] = pd.MultiIndex.from_frame(df[KEYS])
    pair_data["tokens"] = clean[pair_data["pairs"]] if zoo else None
    res.pair_data = pair_data
    return res


def _is_zoo_vocab(hm):
    return hm.adapter.family == "zoo"
