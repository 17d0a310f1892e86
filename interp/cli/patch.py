"""`interp patch`: activation patching sweeps, printed ranked and written as CSV / parquet / heatmap
(interp.patching; interp.distributed.sweep with --distributed)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from interp import InterpError
from interp.cli.options import (add_device, add_knob, add_model, add_n, add_seed, kv, load_scaled, positions,
                                scale_args)


def add_parser(sub):
    pa = sub.add_parser("patch", help="activation patching: layer x position (or every site of --layer) heatmaps")
    add_model(pa)
    pa.add_argument("--task", default="mqar")
    add_knob(pa)
    pa.add_argument("--layer", help="patch every site of this layer (or comma list); default: resid_pre of every layer")
    pa.add_argument("--site", action="append", help="hook site without the block prefix, e.g. resid_pre, "
                    "mixer_out, attn.head_out, rec.state (repeatable)")
    pa.add_argument("--positions", default="all", help="all (default), 3,5,9 or 0:30")
    pa.add_argument("--heads", action="store_true", help="one cell per head (head sites)")
    pa.add_argument("--metric", default="logit_diff", help="logit_diff (normalised), prob or kl: ranks and colours")
    pa.add_argument("--direction", default="denoise", choices=["denoise", "noise"])
    pa.add_argument("--attribution", action="store_true", help="also run attribution patching and compare")
    add_n(pa, 64, help="prompt pairs")
    add_seed(pa)
    pa.add_argument("--top", type=int, default=15, help="rows of the ranked table")
    pa.add_argument("--batch-size", type=int, default=256, help="rows per forward pass (pairs x cells)")
    add_device(pa)
    pa.add_argument("--out", default="figures/patch")
    scale_args(pa)
    pa.set_defaults(func=cmd_patch)


def _layers(spec, n_layers: int):
    """--layer '11' or '3,7' or '0:4' -> checked layer indices; None (every layer) without it."""
    if spec is None:
        return None
    layers = [int(x) for x in positions(spec, "--layer")]
    for i in layers:
        if not 0 <= i < n_layers:
            raise InterpError(f"layer {i} out of range 0..{n_layers - 1}")
    return layers


def _sites(sites, layers, hook_names):
    """--site as given; without it resid_pre (every layer), or every site the chosen layer(s) have."""
    from interp import patching
    if sites:
        return sites
    if layers is None:
        return ["resid_pre"]
    have = {n.split(".", 2)[2] for n in hook_names if n.startswith("blocks.") and int(n.split(".")[1]) in layers}
    return [s for s in patching.SITES if s in have and s != "attn.pattern"]


def _run_name(model: str, task: str, layers) -> str:
    """Stem of the output files: '<model dir name>_<task>[_L<layers>]'."""
    return f"{Path(model).name}_{task}" + (f"_L{'-'.join(map(str, layers))}" if layers else "")


def _units_dir(out: Path, name: str, spec: list) -> Path:
    """Where the sweep keeps its finished units: one folder per run name and hash of its settings,
    so a rerun with the same settings resumes and other settings start afresh."""
    return out / ".units" / (name + "-" + hashlib.sha1(json.dumps(spec).encode()).hexdigest()[:10])


def _print_result(a, res):
    b = res.attrs["baselines"]
    print(f"{a.model} on {a.task} ({a.n} pairs, {a.direction}): logit diff clean {b['clean_logit_diff']:.3f}, "
          f"corrupted {b['corrupted_logit_diff']:.3f}; p(clean answer) clean {b['clean_prob']:.3f}, "
          f"corrupted {b['corrupted_prob']:.3f}")
    print(res.ranked(a.metric, k=a.top).round(4).to_string(index=False))


def _compare_attribution(hm, pairs, res, sites, layers, model_name: str, path: Path):
    """Attribution patching over the same sites (not rec.state / attn.pattern): print its Pearson r
    against the exact sweep and write both side by side to ``path``."""
    from interp import patching
    att = patching.attribution(hm, pairs, sites=[s for s in sites if s not in ("rec.state", "attn.pattern")],
                               layers=layers, model_name=model_name)
    m = res.merge(att[["site", "layer", "position", "head", "logit_diff"]],
                  on=["site", "layer", "position", "head"], suffixes=("", "_attribution"))
    print(f"attribution patching vs exact (normalised logit diff): Pearson r = "
          f"{m.logit_diff.corr(m.logit_diff_attribution):.3f} over {len(m)} cells")
    m.to_csv(path, index=False)


def _write(res, out: Path, name: str, metric: str):
    out.mkdir(parents=True, exist_ok=True)
    res.to_csv(out / f"{name}.csv", index=False)
    res.to_parquet(out / f"{name}.parquet", index=False)
    res.plot(out / f"{name}.png", metric=metric)
    print(f"wrote {out}/{name}.csv, .parquet, .png")


def cmd_patch(a):
    import hooks
    from interp import patching, tasks as T
    model, _, ctx = load_scaled(a)
    hm = hooks.wrap(model)
    knobs = kv(a.knob)
    pairs = T.make_pairs(a.task, a.n, seed=a.seed, **knobs)
    layers = _layers(a.layer, hm.n_layers)
    if a.metric not in patching.METRICS:
        raise InterpError(f"metric '{a.metric}' is not valid; valid: {', '.join(patching.METRICS)}")
    sites = _sites(a.site, layers, hm.hook_names)
    pos = positions(a.positions)
    name, out, model_name = _run_name(a.model, a.task, layers), Path(a.out), Path(a.model).name
    units = _units_dir(out, name, [a.model, a.task, knobs, a.n, a.seed, layers, sites, pos, a.heads, a.direction])
    from interp import distributed  # --distributed: each rank runs its share into units/rank<r>/, rank 0 merges
    res = distributed.sweep(hm, pairs, out=units, ctx=ctx or distributed.Context(), sites=sites, layers=layers,
                            positions=pos, heads=a.heads, direction=a.direction, batch_size=a.batch_size,
                            model_name=model_name)
    if ctx is not None and not ctx.is_main:
        return
    _print_result(a, res)
    if a.attribution:
        _compare_attribution(hm, pairs, res, sites, layers, model_name, out / f"{name}_attribution.csv")
    _write(res, out, name, a.metric)
