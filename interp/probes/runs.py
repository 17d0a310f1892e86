"""Probe runs: `run` probes models at sites and layers over seeds and the values of a swept knob,
one (model, load, seed) unit at a time (resumable through `interp.probes.units`), and returns the
seed-aggregated `ProbeResult`."""
from __future__ import annotations

import pandas as pd

import hooks
from interp import InterpError
from interp.probes.features import SITES, _present, _site_names, collect
from interp.probes.fit import probe
from interp.probes.result import ProbeResult, aggregate
from interp.probes.units import Units
from interp.tasks.base import get as _task, resolve_knobs


def run(models: dict, task: str, target: str, sites=("resid_post",), n: int = 256, seed: int = 0, seeds=None,
        sweep: dict | None = None, backend: str = "torch", C: float = 1.0, batch_size: int = 64, out=None,
        progress: bool = True, keep_seeds: bool = False, **knobs) -> ProbeResult:
    """Probe each model at each site and layer, for each seed (data, split and control map) and
    each value of the swept knob; returns the seed-aggregated tidy `ProbeResult`.

    sweep: {knob: [values]} (one knob, e.g. {"n_pairs": [2, 4, 8]}): the ``load`` column.
    out: a folder; each (model, load, seed) unit is written to ``out/.units/<digest>/`` as it
    finishes and reused when the same run (same spec and weights) is repeated: an interrupted run
    resumes. keep_seeds: return per-seed rows instead."""
    seeds = list(seeds) if seeds is not None else [seed]
    knob, loads = _loads(task, sweep, knobs)
    _check_sites({name: hooks.wrap(m) for name, m in models.items()}, sites)
    store = Units(out, [task, target, list(sites), n, C, backend, knobs, batch_size], models)
    units = [(name, ld, sd) for name in models for ld in loads for sd in seeds]
    it = units
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(units, desc="probes", unit="unit", leave=False)
    frames = []
    for name, ld, sd in it:
        f = store.get(name, ld, sd)
        if f is None:
            kw = {**knobs, **({knob: ld} if knob else {})}
            f = _unit(models[name], task, target, sites, n, sd, batch_size, len(models) > 1, backend, C, kw)
            f.insert(0, "model", name)
            f.insert(1, "load", ld)
            f.insert(4, "target", target)
            f["seed"] = sd
            f["distance"] = f["distance"].astype("Int64")
            store.put(name, ld, sd, f)
        frames.append(f)
    per_seed = pd.concat(frames, ignore_index=True)
    if knob is None:
        per_seed["load"] = pd.array([pd.NA] * len(per_seed), dtype="Int64")
    res = ProbeResult(_sort(per_seed if keep_seeds else aggregate(per_seed), models, sites))
    res.attrs["load_knob"] = knob
    res.attrs.update(task=task, target=target, knobs=knobs, seeds=seeds, backend=backend, C=C, n=n)
    return res


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


def _unit(model, task, target, sites, n, seed, batch_size, skip_missing, backend, C, knobs) -> pd.DataFrame:
    """One unit's rows (one model, knob set and seed): collect the features, fit the probes."""
    feats, pts = collect(model, task, target, sites, n=n, seed=seed, batch_size=batch_size,
                         skip_missing=skip_missing, **knobs)
    return pd.DataFrame(probe(feats, pts, seed=seed, backend=backend, C=C))


def _sort(df, models, sites):
    """Rows in the order of ``models``, then load, ``sites`` (per-head sites where the per-head
    site was asked), site, layer, distance (pooled first)."""
    order = {"model": {m: i for i, m in enumerate(models)}, "site": {s: i for i, s in enumerate(sites)}}
    site_rank = df["site"].map(lambda s: order["site"].get(s, order["site"].get("attn.head_out.per_head", 0)))
    return df.assign(_m=df["model"].map(order["model"]), _s=site_rank).sort_values(
        ["_m", "load", "_s", "site", "layer", "distance"], kind="stable", na_position="first").drop(
        columns=["_m", "_s"]).reset_index(drop=True)
