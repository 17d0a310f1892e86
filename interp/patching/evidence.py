"""Evidence by position class, from a sweep's per-pair values: role-aligned summaries (in every pair,
the positions of one class counted from its last one: slot 1 = the class's last position, slot 2
the one before, ...), the paths they trace from the changed fact to the query, and paired
differences between cells; all with 95% bootstrap intervals over pairs (`interp.stats`)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from interp import InterpError
from interp.patching.classes import CLASSES, PATH, RESIDUAL, trivial

KEYS = ["direction", "site", "layer", "position", "head"]


def check_pair_data(res):
    """``res.pair_data``, or an InterpError saying which results have it."""
    pdata = getattr(res, "pair_data", None)
    if pdata is None:
        raise InterpError("this result has no per-pair data (a sweep's result has; attribution results and "
                          "frames read back from files do not)")
    return pdata


def rows_of(res) -> np.ndarray:
    """Each row's index into ``res.pair_data`` arrays."""
    pdata = check_pair_data(res)
    idx = pdata["index"].get_indexer(pd.MultiIndex.from_frame(pd.DataFrame(res)[KEYS]))
    if (idx < 0).any():
        raise InterpError("rows of this result are not in its per-pair data (changed after the sweep?)")
    return idx


NO_EFFECT = {"denoise": 0.0, "noise": 1.0}


def _slots(codes) -> dict:
    """{class: [(slot s, position [K], has [K])]}: the s-th last position of the class in each pair."""
    out = {}
    for k, name in enumerate(CLASSES):
        mask = codes == k
        right = np.cumsum(mask[:, ::-1], axis=1)[:, ::-1]  # class positions at or after p
        most = int(mask.sum(1).max()) if mask.size else 0
        out[name] = [(s, (mask & (right == s)).argmax(1), (mask & (right == s)).any(1)) for s in range(1, most + 1)]
    return out


def _columns(res):
    """Every (direction, site, layer, head, class, slot) with the pairs that have it: metadata,
    and per-pair numerators / denominators [K, J] of its normalised logit diff."""
    pdata = check_pair_data(res)
    sub = res[(res.position >= 0) & res.direction.isin(list(NO_EFFECT))]
    if sub.empty:
        raise InterpError("a summary by position class needs per-position cells (position >= 0) of a sweep")
    sub = sub.assign(_row=rows_of(sub))
    ld, corr, codes, differs, tokens = (pdata[k] for k in ("ld", "corrupted", "codes", "differs", "tokens"))
    den = pdata["clean"] - corr
    K, T = codes.shape
    slots, pairs = _slots(codes), np.arange(K)
    meta, nums, dens = [], [], []
    for (d, site, layer, head), g in sub.groupby(["direction", "site", "layer", "head"], sort=False):
        where = np.full(T, -1)
        where[g.position.to_numpy()] = np.arange(len(g))
        M, triv = ld[g._row.to_numpy()], trivial(site, codes, differs)
        for cls, ss in slots.items():
            for s, pos, has in ss:
                j = where[pos]
                ok = has & (j >= 0)
                if not ok.any():
                    continue
                v = M[np.where(ok, j, 0), pairs]
                nums.append(np.where(ok, v - corr, 0.0))
                dens.append(np.where(ok, den, 0.0))
                meta.append(dict(direction=d, site=site, layer=int(layer), layer_kind=g.layer_kind.iloc[0],
                                 head=int(head), position_class=cls, slot=s if len(ss) > 1 else 0,
                                 token=_common_token(tokens, pos, ok), n_pairs=int(ok.sum()),
                                 trivial=bool(triv[pairs, pos][ok].all())))
    return pd.DataFrame(meta), np.array(nums).reshape(len(nums), K).T, np.array(dens).reshape(len(dens), K).T


def _common_token(tokens, pos, ok) -> str:
    if tokens is None:
        return ""
    from interp.tasks import VOCAB
    vals, counts = np.unique(tokens[np.flatnonzero(ok), pos[ok]], return_counts=True)
    return VOCAB.decode([int(vals[counts.argmax()])])[0]


def summary(res, exclude_trivial=True, min_share=0.25) -> pd.DataFrame:
    """Per direction x site x layer x head x position class: the slot with the largest effect among
    slots that at least ``min_share`` of the kept pairs have, its normalised logit diff (``logit_diff``,
    over the pairs that have it: ``n_pairs``) and 95% bootstrap interval (``lo``, ``hi``); ``slot``
    0 = the class has one position per pair, s = its s-th last; ``token`` the slot's most common
    token. ``exclude_trivial``: leave out trivial entries (``summary(res, False)`` has them,
    ``trivial`` True)."""
    from interp.stats import boot_ratio_cis
    meta, num, den = _columns(res)
    pdata = res.pair_data
    if meta.empty:
        raise InterpError("no position class has pairs at the swept positions")
    K = len(pdata["clean"])
    with np.errstate(divide="ignore", invalid="ignore"):
        meta["logit_diff"] = num.sum(0) / den.sum(0)
    meta["_effect"] = (meta.logit_diff - meta.direction.map(NO_EFFECT).astype(float)).abs()
    keep = meta[meta.n_pairs >= max(2, int(np.ceil(min_share * K)))]
    group = ["direction", "site", "layer", "head", "position_class"]
    best = keep.loc[keep.groupby(group, sort=False)["_effect"].idxmax()] if len(keep) else keep
    lo, hi = boot_ratio_cis(num[:, best.index], den[:, best.index], pdata["n_boot"],
                            np.random.default_rng(pdata["seed"]))
    best = best.assign(lo=lo, hi=hi).drop(columns="_effect")
    if exclude_trivial:
        best = best[~best.trivial]
    order = {c: i for i, c in enumerate(CLASSES)}
    best = best.assign(_o=best.position_class.map(order)).sort_values(
        ["direction", "site", "layer", "head", "_o"], kind="stable")
    cols = ["direction", "site", "layer", "layer_kind", "head", "position_class", "slot", "token", "logit_diff",
            "lo", "hi", "n_pairs", "trivial"]
    return best[cols].reset_index(drop=True)


def paths(res, threshold=0.3) -> pd.DataFrame:
    """The non-trivial `summary` entries of the path classes (changed, write, between, query) whose
    effect (denoise: the value, noise: 1 - the value) is >= ``threshold`` and whose interval
    excludes no effect, in path order, largest effect first within a class."""
    s = summary(res)
    if s.empty:
        return s.assign(effect=pd.Series(dtype=float))
    ref = s.direction.map(NO_EFFECT).astype(float)
    eff = (s.logit_diff - ref).abs()
    sig = (s.lo > ref) | (s.hi < ref)
    s = s.assign(effect=eff)[(eff >= threshold) & sig & s.position_class.isin(PATH)]   # (assign first: an empty
    # frame given a Series takes the Series' index, i.e. rows of NaN)
    s = s.assign(_o=s.position_class.map({c: i for i, c in enumerate(PATH)}))
    s = s.sort_values(["direction", "_o", "effect"], ascending=[True, True, False], kind="stable")
    return s.drop(columns="_o").reset_index(drop=True)


def describe_paths(res, threshold=0.3, per_step=3) -> list:
    """One line per direction: for each path class, its ``per_step`` strongest entries outside the
    residual stream ('rec.state L0 (gdn) 0.98 [0.96, 0.99]') and the first layer whose residual
    stream carries it there, the classes joined by '->'."""
    p = paths(res, threshold)
    lines = []
    for d in [d for d in NO_EFFECT if d in set(res.direction)]:
        sub = p[p.direction == d]
        steps = []
        for cls in PATH:
            c = sub[sub.position_class == cls]
            resid = c[c.site.isin(RESIDUAL)].sort_values(["layer", "effect"], ascending=[True, False]).head(1)
            parts = [_entry(r) for r in c[~c.site.isin(RESIDUAL)].head(per_step).itertuples()]
            parts += [f"residual stream from {_entry(r)}" for r in resid.itertuples()]
            if parts:
                steps.append(f"{cls}: " + ", ".join(parts))
        what = "restores" if d == "denoise" else "removes (noised)"
        lines.append(f"{d}: " + (" -> ".join(steps) if steps else
                                 f"no non-trivial position class {what} >= {threshold} of the answer with its "
                                 "interval excluding no effect"))
    return lines


def _entry(r) -> str:
    return (f"{r.site}{f'[h{r.head}]' if r.head >= 0 else ''} L{r.layer} ({r.layer_kind}) {r.logit_diff:.2f} "
            f"[{r.lo:.2f}, {r.hi:.2f}]")


def difference(res, a: dict, b: dict) -> dict:
    """Normalised logit diff of cell ``a`` minus cell ``b`` with a paired 95% bootstrap interval
    (the same resampled pairs for both): {'difference', 'lo', 'hi', 'n'}."""
    from interp.stats import boot_ratio_cis
    pdata = check_pair_data(res)
    rows = [_row(res, pdata, c) for c in (a, b)]
    ld, clean, corr = pdata["ld"], pdata["clean"], pdata["corrupted"]
    num, den = ld[rows[0]] - ld[rows[1]], clean - corr
    has = np.isfinite(num)
    if not has.all():  # padded pairs: the pairs that have both cells' positions
        num, den = np.where(has, num, 0.0), np.where(has, den, 0.0)[:, None]
    lo, hi = boot_ratio_cis(num[:, None], den, pdata["n_boot"], np.random.default_rng(pdata["seed"]))
    return {"difference": float(num.sum() / den.sum()), "lo": float(lo[0]), "hi": float(hi[0]), "n": int(has.sum())}


def _row(res, pdata, cell: dict) -> int:
    dirs = list(dict.fromkeys(res.direction))
    full = {"direction": dirs[0] if len(dirs) == 1 else None, "head": -1, "position": -1, **cell}
    missing = [k for k in KEYS if full.get(k) is None]
    if missing:
        raise InterpError(f"cell {cell} does not say its {', '.join(missing)}")
    i = pdata["index"].get_indexer([tuple(full[k] for k in KEYS)])[0]
    if i < 0:
        raise InterpError(f"cell {cell} is not in this result")
    return int(i)
