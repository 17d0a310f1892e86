"""Probe runs: `run` probes models at sites and layers over seeds and the values of a swept knob,
one (model, load, seed) unit at a time (resumable in a probe folder, `interp.probes.units`), picks
each site's layer on the validation split, runs the causal check there and returns the
seed-aggregated `ProbeResult`; `check_run` validates a run's settings before any model runs."""
from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass

import pandas as pd

import hooks
from interp import InterpError
from interp import tasks as T
from interp.checks import check_count
from interp.probes import causal as CA
from interp.probes.controls import FLAG_AT, check_controls, untrained_copy
from interp.probes.features import SITES, _present, _site_names, collect
from interp.probes.fit import check_backend
from interp.probes.protocol import MIN_EXAMPLES, SPLIT, check_C, check_split, probe
from interp.probes.result import ProbeResult, aggregate, aggregate_causal, attach_causal
from interp.probes.targets import answer_labels, points
from interp.probes.units import Units, open_store, probe_spec, unit_key
from interp.tasks.base import get as _task, resolve_knobs

DEFAULT_CONTROLS = ("shuffled", "untrained")
CAUSAL_MODES = ("best", "all")


@dataclass
class _Run:
    """A run's settings, checked."""
    task: str
    target: str
    sites: list
    n: int
    seeds: list
    backend: str
    C: float
    split: tuple
    controls: tuple
    flag_at: float
    batch_size: int
    knob: str | None
    loads: list
    knobs: dict
    causal: dict | None = None
    multi: bool = False
    progress: bool = True


def run(models: dict, task: str, target: str, sites=("resid_post",), n: int = 256, seed: int = 0, seeds=None,
        sweep: dict | None = None, backend: str = "torch", C: float = 1.0, batch_size: int = 64, out=None,
        progress: bool = True, keep_seeds: bool = False, split=SPLIT, controls=DEFAULT_CONTROLS, causal="best",
        causal_pairs: int = 256, causal_rank: int | None = None, flag_at: float = FLAG_AT, overwrite: bool = False,
        save: bool = False, **knobs) -> ProbeResult:
    """Probe each model at each site and layer, for each seed (data, split, controls) and each value
    of the swept knob; returns the seed-aggregated tidy `ProbeResult` (the package doc says how).

    sweep: {knob: [values]} (one knob, e.g. {"n_pairs": [2, 4, 8]}): the ``load`` column.
    split: train/val/test fractions by example. controls: any of 'shuffled', 'untrained',
    'hewitt_liang'. causal: 'best' (the causal check at each site's layer chosen on val), 'all'
    (every layer) or None; ``causal_pairs`` pairs per unit, ``causal_rank`` (None: the probe's
    full rank). out: a probe folder (`interp.store.Store`): spec.json, one unit file per finished
    unit under units/ (a rerun with the same settings resumes; other settings are refused unless
    ``overwrite``); ``save``: also write probes.csv / .parquet and the figures there.
    keep_seeds: return per-seed rows instead."""
    r = check_run(models, task, target, sites, n, seeds if seeds is not None else [seed], sweep, backend, C, split,
                  controls, flag_at, batch_size, knobs)
    r.causal, r.progress = _causal_settings(r, causal, causal_pairs, causal_rank), progress
    store = None if out is None else open_store(out, probe_spec(
        models, r.task, r.target, r.sites, r.n, r.seeds, r.knob, r.loads, r.knobs, r.backend, r.C, r.split,
        r.controls, r.flag_at, r.causal, r.batch_size), overwrite)
    try:
        units = Units(store)
        per_seed = _probe_units(r, models, units)
        agg = aggregate(per_seed, r.flag_at)
        res = per_seed if keep_seeds else agg
        if r.causal is not None:
            per = _causal_units(r, models, units, _chosen(agg, r.causal["mode"]))
            res = attach_causal(res, per if keep_seeds else aggregate_causal(per))
        res = ProbeResult(_sort(res, models, r.sites, r.controls))
        res.attrs.update(load_knob=r.knob, task=r.task, target=r.target, knobs=r.knobs, seeds=r.seeds,
                         backend=r.backend, C=r.C, n=r.n, split=list(r.split), controls=list(r.controls),
                         flag_at=r.flag_at, causal=r.causal)
        if save and out is not None:
            res.attrs["written"] = save_outputs(res, out)
    finally:
        if store is not None:
            store.close()
    return res


def check_run(models, task, target, sites, n, seeds, sweep, backend, C, split, controls, flag_at, batch_size,
              knobs) -> _Run:
    """Every setting of a run checked (one clear InterpError each) before any model runs."""
    if models is not None and not isinstance(models, dict):
        raise InterpError(f"models must be a dict {{name: model}}, got {type(models).__name__}; valid: e.g. "
                          "{'gdn75': model}")
    sites = [sites] if isinstance(sites, str) else sites   # one site by its name
    check_backend(backend)
    batch_size, flag_at = check_count(batch_size, "batch_size"), check_flag_at(flag_at)
    if isinstance(n, bool) or not isinstance(n, int) or n < MIN_EXAMPLES:
        raise InterpError(f"n={n} examples is too few: they are split train/val/test by example and each probe "
                          f"is fitted on the training part, so nothing can be learned; use at least {MIN_EXAMPLES} "
                          "(hundreds for conclusions)")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise InterpError(f"seeds {seeds!r} are not valid; expected a non-empty list of integers")
    knob, loads = _loads(task, sweep, knobs)
    for ld in loads:  # a target the task does not produce (or a column out of range) fails here
        points(T.generate(task, 2, seed=0, **{**knobs, **({knob: ld} if knob else {})}), target)
    if models is not None:
        _check_sites({name: hooks.wrap(m) for name, m in models.items()}, sites)
    controls = check_controls(controls)
    if "untrained" in controls and models is not None:
        for name, m in models.items():
            if getattr(m, "config", None) is None:
                raise InterpError(f"the untrained control rebuilds a model from its config, and model '{name}' "
                                  f"({type(m).__name__}) has none; leave 'untrained' out of the controls")
    return _Run(task, target, list(sites), n, list(seeds), backend, check_C(C), check_split(split), controls,
                flag_at, batch_size, knob, loads, dict(knobs), multi=models is not None and len(models) > 1)


def check_flag_at(flag_at) -> float:
    """``flag_at`` as a float: a control accuracy at or above it is flagged uninformative, so it is an accuracy,
    a finite number in [0, 1] (the CLI's --flag-at takes the same)."""
    if isinstance(flag_at, bool) or not isinstance(flag_at, numbers.Real) or not math.isfinite(flag_at) \
            or not 0 <= flag_at <= 1:
        raise InterpError(f"flag_at={flag_at!r} is not valid; valid: finite numbers >= 0 and <= 1 (a control "
                          f"accuracy at or above it is flagged uninformative; default {FLAG_AT})")
    return float(flag_at)


def _causal_settings(r: _Run, causal, pairs, rank):
    """The causal check's settings (for the spec), or None: off, or the target has no answer to follow
    (a warning says so)."""
    if causal in (None, False, "none"):
        return None
    if causal not in CAUSAL_MODES:
        raise InterpError(f"causal '{causal}' is not valid; valid: {', '.join(CAUSAL_MODES)}, none")
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
        raise InterpError(f"causal_pairs={pairs} is not valid; expected a positive integer")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise InterpError(f"causal_rank={rank} is not valid; expected a positive integer or None (the probe's rank)")
    try:
        answer_labels(T.generate(r.task, 2, seed=0, **{**r.knobs, **({r.knob: r.loads[0]} if r.knob else {})}), r.target)
    except InterpError as e:
        warnings.warn(f"no causal check: {e}", stacklevel=3)
        return None
    return {"mode": causal, "pairs": int(pairs), "rank": rank, "random": CA.N_RANDOM}


def _units(r: _Run, models):
    units = [(name, ld, sd) for name in models for ld in r.loads for sd in r.seeds]
    if r.progress:
        from tqdm.auto import tqdm
        return tqdm(units, desc="probes", unit="unit", leave=False)
    return units


def _probe_units(r: _Run, models, units: Units) -> pd.DataFrame:
    """Every (model, load, seed) probe unit, read back from ``units`` or computed and stored."""
    frames = []
    for name, ld, sd in _units(r, models):
        key = unit_key("probe", name, ld, sd)
        f = units.get(key)
        if f is None:
            f = _unit(r, models[name], sd, {**r.knobs, **({r.knob: ld} if r.knob else {})})
            f.insert(0, "model", name)
            f.insert(1, "load", ld)
            f.insert(4, "target", r.target)
            f["seed"] = sd
            f["distance"] = f["distance"].astype("Int64")
            f = units.put(key, f)
        frames.append(f)
    return _concat(frames, r)


def _concat(frames, r: _Run) -> pd.DataFrame:
    """The units' frames as one; without a --sweep knob the ``load`` column is all NA (Int64)."""
    out = pd.concat(frames, ignore_index=True)
    if r.knob is None:
        out["load"] = pd.array([pd.NA] * len(out), dtype="Int64")
    return out


def _unit(r: _Run, model, seed, knobs) -> pd.DataFrame:
    """One unit's rows (one model, knob set and seed): collect the features (and the untrained
    model's), fit the probes and controls."""
    batch = T.generate(r.task, r.n, seed=seed, **knobs)
    kw = dict(batch=batch, batch_size=r.batch_size, skip_missing=r.multi)
    feats, pts = collect(model, r.task, r.target, r.sites, **kw)
    untrained = None
    if "untrained" in r.controls:
        untrained, _ = collect(untrained_copy(model, seed), r.task, r.target, r.sites, **kw)
    return pd.DataFrame(probe(feats, pts, split=r.split, seed=seed, backend=r.backend, C=r.C, controls=r.controls,
                              untrained=untrained, flag_at=r.flag_at))


def _chosen(agg: pd.DataFrame, mode: str) -> dict:
    """{(model, str(load)): [(layer, site)]}: per (model, load, site) the layer with the highest
    mean validation accuracy (mode 'best'), or every layer ('all')."""
    d = agg[agg["distance"].isna() & (agg["answered"] == "all")]
    d = d[d["control_kind"] == d["control_kind"].iloc[0]]
    if mode == "best":
        idx = d.groupby(["model", "load", "site"], sort=False, dropna=False)["val_accuracy"].idxmax().dropna()
        d = d.loc[idx]
    out = {}
    for m, ld, la, s in zip(d["model"], d["load"], d["layer"], d["site"]):
        out.setdefault((m, str(ld)), []).append((int(la), s))
    return out


def _causal_units(r: _Run, models, units: Units, chosen: dict) -> pd.DataFrame:
    """Every (model, load, seed) causal-check unit at the ``chosen`` layers, read back or computed."""
    frames = []
    for name, ld, sd in _units(r, models):
        todo = chosen.get((name, str(pd.NA if ld is None else ld)), [])
        if not todo:
            continue
        key = unit_key("causal", name, ld, sd)
        f = units.get(key)
        if f is None:
            kw = {**r.knobs, **({r.knob: ld} if r.knob else {})}
            rows = CA.check(models[name], r.task, r.target, todo, r.sites, r.n, sd, r.split, r.backend, r.C, kw,
                            rank=r.causal["rank"], max_pairs=r.causal["pairs"], batch_size=r.batch_size)
            f = pd.DataFrame(rows)
            f.insert(0, "model", name)
            f.insert(1, "load", ld)
            f["seed"] = sd
            f = units.put(key, f)
        frames.append(f)
    return _concat(frames, r)


def save_outputs(res: ProbeResult, out) -> list:
    """Write probes.csv / .parquet and the figures (probes.png; distance.png when the target has
    distances; load.png with a sweep) under ``out``, each atomically. Returns the file names."""
    from pathlib import Path
    out = Path(out)
    written = [p.name for p in res.save(out)]
    res.plot(out / "probes.png")
    written.append("probes.png")
    if res["distance"].notna().any():
        d = res[res["distance"].notna()]
        res.plot_distance(out / "distance.png", min_n=min(20, int(d["n"].max())))
        written.append("distance.png")
    if res["load"].notna().any():
        res.plot_load(out / "load.png")
        written.append("load.png")
    return written


def _loads(task, sweep, knobs):
    """(swept knob or None, its values or [None]), every knob set validated before any work."""
    if sweep:
        if len(sweep) != 1:
            raise InterpError(f"sweep takes one knob, got {', '.join(sweep)}")
        (knob, values), = sweep.items()
        if knob in knobs:
            raise InterpError(f"knob '{knob}' is both swept and fixed")
        spec = _task(task)
        if knob not in spec.knobs:
            raise InterpError(f"unknown knob '{knob}' for task '{task}'; valid knobs: {', '.join(spec.knobs)}")
        loads = list(values)
    else:
        knob, loads = None, [None]
    for ld in loads:
        resolve_knobs(_task(task), {**knobs, **({knob: ld} if knob else {})})
    return knob, loads


def _check_sites(wrapped, sites):
    """Every site is known and present in at least one of the (wrapped) models: a site may be
    missing in some models (rec.* in a transformer), not in all."""
    for s in sites:
        if s not in SITES:
            raise InterpError(f"unknown probe site '{s}'; valid sites: {', '.join(SITES)}")
        if not any(_site_names(hm, [s], skip_missing=True) for hm in wrapped.values()):
            raise InterpError(f"site '{s}' is not present in any of the models; their sites: "
                              f"{', '.join(dict.fromkeys(x for hm in wrapped.values() for x in _present(hm)))}")


def _sort(df, models, sites, controls):
    """Rows in the order of ``models``, then load, ``sites`` (per-head sites where the per-head
    site was asked), site, layer, answered (all, correct, wrong), the controls, distance (pooled first)."""
    order = {"model": {m: i for i, m in enumerate(models)}, "site": {s: i for i, s in enumerate(sites)}}
    site_rank = df["site"].map(lambda s: order["site"].get(s, order["site"].get("attn.head_out.per_head", 0)))
    ans = df["answered"].map({"all": 0, "correct": 1, "wrong": 2})
    ctl = df["control_kind"].map({c: i for i, c in enumerate(list(controls) + ["none"])})
    return df.assign(_m=df["model"].map(order["model"]), _s=site_rank, _a=ans, _c=ctl).sort_values(
        ["_m", "load", "_s", "site", "layer", "_a", "distance", "_c"], kind="stable", na_position="first").drop(
        columns=["_m", "_s", "_a", "_c"]).reset_index(drop=True)
