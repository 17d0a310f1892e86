"""Building a sweep's PatchResult from its stored units: per-pair metrics of every chunk joined,
pairs filtered to those the model answers correctly on both prompts (unless ``keep_all``), cell
means normalised (a warning where the clean - corrupted gap is too small to normalise by), 95%
bootstrap intervals over pairs, position classes; on padded pairs each cell over the pairs that have
its position (`padded_stats`)."""
from __future__ import annotations

import warnings

import numpy as np
import torch

from interp import InterpError
from interp.patching.plan import base_key, unit_key

MIN_LD_GAP = 0.1   # nats: a smaller clean - corrupted gap is too small to normalise by (a warning)
BASE_FIELDS = ("clean_ld", "corrupted_ld", "clean_prob", "corrupted_prob", "corrupted_kl", "clean_top", "corrupted_top")


def gather(plan, store) -> tuple[dict, dict]:
    """(baselines {field: [N]}, units {(direction, unit): {'ld', 'prob', 'kl': [cells, N]}}) from
    ``store``; a missing unit is an InterpError naming it."""
    def get(key):
        if not store.has(key):
            raise InterpError(f"the sweep in {store.path} lacks unit '{key}'; re-run it to finish")
        return store.get(key)
    chunks = range(len(plan.chunks))
    bases = [get(base_key(c)) for c in chunks]
    base = {f: torch.cat([b[f] for b in bases]).numpy() for f in BASE_FIELDS}
    units = {}
    for d in plan.directions:
        for u, (_, _, cells) in enumerate(plan.units):
            parts = [get(unit_key(d, c, u)) for c in chunks]
            if parts[0]["ld"].shape[0] != len(cells):
                raise InterpError(f"unit '{unit_key(d, 0, u)}' in {store.path} has {parts[0]['ld'].shape[0]} cells, "
                                  f"the plan {len(cells)}: re-run with --overwrite")
            units[(d, u)] = {m: torch.cat([p[m] for p in parts], dim=1).numpy() for m in ("ld", "prob", "kl")}
    return base, units


def keep_mask(base, pairs, keep_all: bool) -> tuple[np.ndarray, dict]:
    """(which pairs to keep [N] bool, {'n', 'kept', 'dropped', 'filter'}): the pairs the model
    answers correctly on both prompts (its top token at the answer position is the clean answer on
    the clean prompt and the corrupted answer on the corrupted one), or all with ``keep_all``."""
    N = len(base["clean_ld"])
    if keep_all:
        keep = np.ones(N, dtype=bool)
    else:
        keep = ((base["clean_top"] == pairs.clean_answer.cpu().numpy())
                & (base["corrupted_top"] == pairs.corrupted_answer.cpu().numpy()))
    info = {"n": int(N), "kept": int(keep.sum()), "dropped": int(N - keep.sum()),
            "filter": "all pairs" if keep_all else "answered correctly on both prompts"}
    if not keep.any():
        raise InterpError(f"the model answers none of the {N} pairs correctly on both prompts, so no pair is "
                          "left to patch; use keep_all=True (--keep-all) to keep every pair")
    if keep.sum() == 1:
        warnings.warn(f"patching: 1 pair of {N} kept ({info['filter']}): one pair gives effects without intervals "
                      "(lo and hi are NaN); patch more pairs (--n) for 95% intervals", UserWarning, stacklevel=3)
    return keep, info


def chunk_sums(values, keep, chunks) -> np.ndarray:
    """Sum over the kept pairs of each row of ``values`` [rows, N] (float32): per pair chunk in
    float32 (one torch sum per row and chunk), the chunks' sums added in float64, as the sweep
    always summed them (so a result does not change in its last bits between versions)."""
    out = np.zeros(values.shape[0])
    for a, b in chunks:
        k = np.flatnonzero(keep[a:b]) + a
        if len(k):
            part = torch.from_numpy(np.ascontiguousarray(values[:, k]))
            out += np.array([float(r.sum()) for r in part])
    return out


def cell_stats(per_pair, clean, corrupted, baselines, n_boot: int, seed: int = 0) -> dict:
    """Columns of the result from the cells' per-pair metrics ``per_pair`` {'ld', 'prob', 'kl': [cells, K]}
    over the K kept pairs, their per-pair clean / corrupted logit differences [K] and the baselines (means):
    normalised logit diff sum(patched - corrupted) / sum(clean - corrupted), mean prob and KL, each in float64
    from the same per-pair values as its 95% bootstrap interval over pairs (the same resamples for every cell
    and metric), so a cell whose effect is rounding noise is not a point outside its own interval. Warns
    when the mean clean and corrupted logit differences are closer than `MIN_LD_GAP` nats or the clean one
    is not positive."""
    from interp.stats import boot_ratio_cis
    _check_gap(baselines["clean_logit_diff"], baselines["corrupted_logit_diff"], baselines["n"])
    ld = per_pair["ld"]
    out = {"logit_diff": (ld - corrupted).sum(1) / (clean - corrupted).sum(), "prob": per_pair["prob"].mean(1),
           "kl": per_pair["kl"].mean(1), "raw_logit_diff": ld.mean(1)}
    ones = np.ones(len(clean))
    for m, num, den in (("logit_diff", ld - corrupted, clean - corrupted), ("prob", per_pair["prob"], ones),
                        ("kl", per_pair["kl"], ones)):
        lo, hi = boot_ratio_cis(num.T, den, n_boot, np.random.default_rng(seed))
        out[f"{m}_lo"], out[f"{m}_hi"] = lo, hi
    return out


def padded_stats(per_pair, clean, corrupted, baselines, n_boot: int, seed: int = 0) -> dict:
    """`cell_stats` of a sweep on padded pairs, whose per-pair metrics ``per_pair`` [cells, K] are NaN
    where a pair lacks the cell's position: each cell over the pairs that have it (``n`` per cell), its
    logit diff normalised by those pairs' own clean and corrupted logit differences (so a cell only the
    longer pairs have equals their sweep alone), the bootstrap resampling pairs with weight 0 where absent."""
    from interp.stats import boot_ratio_cis
    _check_gap(baselines["clean_logit_diff"], baselines["corrupted_logit_diff"], baselines["n"])
    has = np.isfinite(per_pair["ld"])
    n = has.sum(1)
    z = {k: np.where(has, v, 0.0) for k, v in per_pair.items()}
    x, c = has @ corrupted, has @ clean
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = z["ld"].sum(1) / n
        out = {"logit_diff": (z["ld"].sum(1) - x) / (c - x), "prob": z["prob"].sum(1) / n, "kl": z["kl"].sum(1) / n,
               "raw_logit_diff": raw}
    w = has.astype(float)
    for m, num, den in (("logit_diff", z["ld"] - w * corrupted, w * (clean - corrupted)), ("prob", z["prob"], w),
                        ("kl", z["kl"], w)):
        lo, hi = boot_ratio_cis(num.T, den.T, n_boot, np.random.default_rng(seed))
        out[f"{m}_lo"], out[f"{m}_hi"] = lo, hi
    out["n"] = n
    return out


def _check_gap(c, x, K):
    """The normaliser clean - corrupted of the mean logit differences ``c`` and ``x`` over ``K`` pairs: an
    InterpError where it is 0, a warning where it is under `MIN_LD_GAP` nats or ``c`` is not positive."""
    denom = c - x
    if abs(denom) < 1e-6:
        raise InterpError(f"clean and corrupted runs have the same mean logit difference ({c:.4f}): "
                          "the model does not tell the pair apart, so normalised effects are undefined")
    why = ([f"they differ by {abs(denom):.4f} nats, under {MIN_LD_GAP}, too little to normalise by"]
           if abs(denom) < MIN_LD_GAP else []) + \
        (["the clean one is not positive (the model does not prefer the clean answer on the clean prompt)"]
         if c <= 0 else [])
    if why:
        warnings.warn(f"patching: mean logit differences clean {c:.4f}, corrupted {x:.4f} over {K} pairs: "
                      f"{'; '.join(why)}; the normalised logit_diff, (patched - corrupted) / (clean - corrupted), "
                      "is unreliable: read raw_logit_diff and prob", UserWarning, stacklevel=4)
    return denom


def assemble(plan, store, keep_all=False, n_boot=1000, seed=0):
    """The PatchResult of ``plan`` from the units in ``store`` (see the module docstring)."""
    from interp.patching.classes import cell_classes, position_classes, trivial
    from interp.patching.result import build_result
    base, units = gather(plan, store)
    keep, info = keep_mask(base, plan.pairs, keep_all)
    codes, differs = (a[keep] for a in position_classes(plan.pairs))
    frames, metrics = [], {m: [] for m in ("ld", "prob", "kl")}
    unpatched = {"denoise": base["corrupted_ld"][keep], "noise": base["clean_ld"][keep]}
    for (d, u), m in units.items():
        site, layer, cells = plan.units[u]
        pos = [-1 if p is None else p for p, _ in cells]
        effect = np.nan_to_num(np.abs(m["ld"][:, keep].astype(np.float64) - unpatched[d]))  # (pads: no effect)
        names, shares, triv = cell_classes(codes, trivial(site, codes, differs), pos, effect)
        frames.append(dict(direction=d, site=site, layer=layer, position=pos,
                           head=[-1 if h is None else h for _, h in cells],
                           position_class=names, class_share=shares, trivial=triv))
        for k in metrics:
            metrics[k].append(m[k])
    values = {k: np.concatenate(v) for k, v in metrics.items()}
    per_pair = {k: v[:, keep].astype(np.float64) for k, v in values.items()}
    K = int(keep.sum())
    bsum = {f: chunk_sums(base[f][None], keep, plan.chunks)[0] / K for f in BASE_FIELDS if not f.endswith("_top")}
    baselines = {"clean_logit_diff": bsum["clean_ld"], "corrupted_logit_diff": bsum["corrupted_ld"],
                 "clean_prob": bsum["clean_prob"], "corrupted_prob": bsum["corrupted_prob"],
                 "corrupted_kl": bsum["corrupted_kl"], "n": K}
    clean, corr = (base[f][keep].astype(np.float64) for f in ("clean_ld", "corrupted_ld"))
    stats = (cell_stats(per_pair, clean, corr, baselines, n_boot, seed) if plan.span is None
             else padded_stats(per_pair, clean, corr, baselines, n_boot, seed))
    pair_data = dict(ld=per_pair["ld"], clean=clean, corrupted=corr, pairs=np.flatnonzero(keep), codes=codes,
                     differs=differs, n_boot=n_boot, seed=seed)
    return build_result(plan, frames, stats, baselines, info, pair_data, int(np.flatnonzero(keep)[0]))
