"""`interp probe`, the command line of the probes: parse --sweep / --seeds, run, print the pooled
table, write the results and figures."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from interp import InterpError
from interp.probes.runs import run


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
        return [seed]
    try:
        return [int(s) for s in spec.split(",")]
    except ValueError:
        raise InterpError(f"--seeds '{spec}' is not valid; expected comma-separated integers, e.g. 0,1,2") from None


def cli_run(a, load_model, parse_knobs):
    """`interp probe`: run, print the pooled table, write probes.csv / .parquet and the figures
    (probes.png; distance.png when the target has distances; load.png with --sweep)."""
    import time
    t0 = time.time()
    sweep, seeds = _parse_sweep(a.sweep), _parse_seeds(a.seeds, a.seed)
    models = {Path(m).name: load_model(m, a.device) for m in a.model}
    res = run(models, a.task, a.target, sites=a.site, n=a.n, seeds=seeds, sweep=sweep, backend=a.backend, C=a.C,
              out=a.units, **parse_knobs(a.knob))
    show = ["model"] + (["load"] if sweep else []) + ["layer", "site", "accuracy"] + \
        (["acc_lo", "acc_hi"] if len(seeds) > 1 else []) + ["control", "selectivity", "majority", "surface", "n"]
    pd.set_option("display.width", 200)
    print(pd.DataFrame(res.pooled())[show].round(3).to_string(index=False))
    out = Path(a.out)
    written = [p.name for p in res.save(out)]
    res.plot(out / "probes.png")
    written.append("probes.png")
    if res["distance"].notna().any():
        d = res[res["distance"].notna()]
        res.plot_distance(out / "distance.png", min_n=min(20, int(d["n"].max())))
        written.append("distance.png")
    if sweep:
        res.plot_load(out / "load.png")
        written.append("load.png")
    print(f"wrote {', '.join(f'{out}/{w}' for w in written)} ({time.time() - t0:.0f} s)")
