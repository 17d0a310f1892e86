"""`interp probe`, the command line of the probes: parse --sweep / --seeds / --split, check every
setting before a model loads, run (resumable in the --out folder; its warnings one line each), print
the points per split, the per-layer table, the layer chosen on val per site and the controls flagged
uninformative; the files are written by `run`."""
from __future__ import annotations

import json
import re
import os
from pathlib import Path

import pandas as pd

from interp import InterpError
from interp.probes.runs import check_run, run

N_DEFAULT = {"cuda": 2048, "cpu": 256}
PAIRS_DEFAULT = {"cuda": 1024, "cpu": 256}


def _parse_sweep(spec):
    if spec is None:
        return None
    if "=" not in spec or not spec.split("=", 1)[1]:
        raise InterpError(f"--sweep '{spec}' is not valid; expected KNOB=V1,V2,... (e.g. n_pairs=2,4,8)")
    knob, vals = spec.split("=", 1)
    return {knob: [json.loads(v) if re.fullmatch(r"-?\d+(\.\d+)?|true|false|null", v) else v
                   for v in vals.split(",")]}


def _parse_seeds(spec, seed):
    if spec is None:
        return [0 if seed is None else seed]
    if seed is not None:
        raise InterpError(f"--seed {seed} and --seeds {spec}: give one (--seeds runs every seed it names)")
    from interp.cli.options import seed_list
    return seed_list(spec)


def _parse_split(spec):
    try:
        return tuple(float(x) for x in spec.split(","))
    except ValueError:
        raise InterpError(f"--split '{spec}' is not valid; expected three fractions train,val,test, e.g. "
                          "0.6,0.2,0.2") from None


def _settings(a, parse_knobs) -> dict:
    """run()'s keyword arguments from the options, checked (before any model loads)."""
    if a.units is not None:
        raise InterpError("--units is no longer used: a probe run keeps its units in its --out folder "
                          "(spec.json, units/) and resumes from there; drop --units (old runs/probe_units/.units/ "
                          "folders are not read: re-run)")
    dev = "cuda" if str(a.device).startswith("cuda") else "cpu"
    kw = dict(task=a.task, target=a.target, sites=a.site, n=a.n if a.n is not None else N_DEFAULT[dev],
              seeds=_parse_seeds(a.seeds, a.seed), sweep=_parse_sweep(a.sweep), backend=a.backend, C=a.C,
              split=_parse_split(a.split), controls=a.controls, flag_at=a.flag_at, knobs=parse_knobs(a.knob))
    check_run(None, kw["task"], kw["target"], kw["sites"], kw["n"], kw["seeds"], kw["sweep"], kw["backend"], kw["C"],
              kw["split"], kw["controls"], kw["flag_at"], 64, kw["knobs"])
    kw.update(causal=None if a.causal == "none" else a.causal, causal_rank=a.causal_rank,
              causal_pairs=a.causal_pairs if a.causal_pairs is not None else PAIRS_DEFAULT[dev])
    return kw


def _sizes(res, sweep) -> list[str]:
    """Lines with the probe points of the target per split (per seed: the mean over the seeds), per
    load with a sweep (the points depend on the data, not on the model, layer or site)."""
    d = res.pooled()
    d = d[d["control_kind"] == res.controls()[0]].drop_duplicates("load")
    lines = []
    for r in d.itertuples():
        where = f" at {res.attrs.get('load_knob')}={r.load}" if sweep else ""
        lines.append(f"probe points of {r.target}{where}, per seed (mean over {r.seeds}): train {r.n_train:.0f}, "
                     f"val {r.n_val / r.seeds:.0f}, test {r.n / r.seeds:.0f}")
    return lines


def _print(res, sweep, seeds):
    pd.set_option("display.width", 220)
    pd.set_option("display.max_columns", 40)
    print("\n".join(_sizes(res, sweep)))
    kinds = [k for k in res.controls() if k != "none"]
    lead = ["model"] + (["load"] if sweep else [])
    ci = ["acc_lo", "acc_hi"] if len(seeds) > 1 else []
    w = res.wide()
    per = lead + ["layer", "site", "val_accuracy", "accuracy"] + ci + [f"{p}_{k}" for k in kinds
                                                                       for p in ("control", "sel")]
    print(w[per + ["majority", "surface", "n"]].round(3).to_string(index=False))
    best = res.best_layers()
    extra = [c for c in ("acc_correct", "acc_wrong", "iia", "iia_random", "iia_full", "n_iia") if c in best]
    print("\nlayer chosen on val per site (accuracy on test):")
    print(best[lead + ["site", "layer", "val_accuracy", "accuracy"] + ci + [f"sel_{k}" for k in kinds] + extra]
          .round(3).to_string(index=False))
    for k in kinds:
        flagged = int(w[f"flag_{k}"].sum())
        if flagged:
            print(f"note: the {k} control is >= {res.attrs['flag_at']} at {flagged} of {len(w)} (model, layer, site) "
                  f"rows: selectivity against it is uninformative there (column flag_{k})")


def model_labels(paths) -> list:
    """Each --model's label: its folder name, or the path as given where two share a name (the seed<S> folders of
    two stacks); the same path twice is refused."""
    paths = [os.path.normpath(str(p)) for p in paths]
    twice = [p for i, p in enumerate(paths) if p in paths[:i]]
    if twice:
        raise InterpError(f"--model {twice[0]} is given twice; valid: each model once")
    names = [Path(p).name for p in paths]
    return [n if names.count(n) == 1 else p for n, p in zip(names, paths)]


def cli_run(a, load_model, parse_knobs):
    """`interp probe`: check the settings, run into the --out folder (resuming it; probes.csv /
    .parquet, probes.png, distance.png when the target has distances, load.png with --sweep; its
    warnings one line each on stderr, as `interp.cli.main` shows every command's), print."""
    import time
    t0 = time.time()
    kw = _settings(a, parse_knobs)
    models = {label: load_model(m, a.device) for label, m in zip(model_labels(a.model), a.model)}
    knobs = kw.pop("knobs")
    res = run(models, **kw, batch_size=64, out=a.out, overwrite=a.overwrite, save=True, **knobs)
    _print(res, kw["sweep"], kw["seeds"])
    print(f"wrote {', '.join(f'{a.out}/{w}' for w in res.attrs['written'])} ({time.time() - t0:.0f} s)")
